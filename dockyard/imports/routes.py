"""/api/v1/imports: request an import (control-plane write) and follow it (Reader)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import MANAGE_READ, MANAGE_WRITE
from dockyard.access.policy import Policy
from dockyard.access.routes.common import field, invalid, iso, json_body, query_int
from dockyard.access.services.audit import AuditService
from dockyard.asgi import run_sync
from dockyard.imports.services import ImportRecord, ImportService
from dockyard.oci.errors import ErrorCode, RegistryError


def import_json(record: ImportRecord) -> dict[str, Any]:
    """An import as the API answers it (the password is never part of it)."""
    return {
        "id": record.id,
        "status": record.status,
        "source": record.source,
        "targetTags": [t for t in record.targets if ":" in t],
        "repositories": [t for t in record.targets if ":" not in t],
        "force": record.force,
        "includeReferrers": record.include_referrers,
        "username": record.username,
        "requestedBy": record.requested_by,
        "digest": record.digest,
        "progress": {
            "manifestsDone": record.manifests_done,
            "manifestsTotal": record.manifests_total,
            "bytesDone": record.bytes_done,
            "bytesTotal": record.bytes_total,
        },
        "error": record.error,
        "createdTime": iso(record.created_at),
        "startedTime": iso(record.started_at),
        "finishedTime": iso(record.finished_at),
    }


class ImportRoutes:
    """The imports room's routes."""

    def __init__(self, imports: ImportService, policy: Policy, audit: AuditService) -> None:
        self.imports = imports
        self.policy = policy
        self.audit = audit

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        return [
            Route(
                "/api/v1/imports",
                guard(self.collection, {"GET": MANAGE_READ, "POST": MANAGE_WRITE}),
                methods=["GET", "POST"],
            ),
            Route("/api/v1/imports/{import_id}", guard(self.one, {"GET": MANAGE_READ}), methods=["GET"]),
        ]

    async def collection(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.create(request)
        found = await run_sync(self.imports.list, min(max(query_int(request, "limit", 20), 1), 1000))
        return JSONResponse({"value": [import_json(record) for record in found]})

    async def create(self, request: Request) -> Response:
        body = await json_body(request)
        source = field(body, "source", str, required=True)
        target_tags = field(body, "targetTags", list) or []
        if not all(isinstance(t, str) and ":" in t for t in target_tags):
            raise invalid("targetTags must be a list of repository:tag strings")
        repository = field(body, "repository", str)
        targets = [*target_tags, *([repository] if repository else [])]
        manager = self.policy.manager(request)
        record = await run_sync(
            lambda: self.imports.request(
                source=source,
                targets=targets,
                force=bool(field(body, "force", bool)),
                include_referrers=bool(field(body, "includeReferrers", bool)),
                username=field(body, "username", str),
                password=field(body, "password", str),
                requested_by=manager.name,
            )
        )
        await run_sync(
            lambda: self.audit.record(
                "import.request",
                "success",
                principal=manager.name,
                detail={"id": record.id, "source": record.source, "targets": record.targets},
            )
        )
        return JSONResponse(import_json(record), status_code=202)

    async def one(self, request: Request) -> Response:
        raw = request.path_params["import_id"]
        found = await run_sync(self.imports.get, raw) if len(raw) <= 36 else None
        if found is None:
            raise RegistryError(ErrorCode.NOT_FOUND, f"no import {raw[:40]!r}")
        return JSONResponse(import_json(found))
