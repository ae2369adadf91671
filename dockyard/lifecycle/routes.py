"""The lifecycle room's management routes (/api/v1/...)."""

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
from dockyard.lifecycle.purge_routes import PurgeRoutes
from dockyard.lifecycle.services import LifecycleServices
from dockyard.lifecycle.services.gc_runs import GcRun, GcService
from dockyard.lifecycle.services.usage import UsageService
from dockyard.oci.errors import ErrorCode, RegistryError

#: The longest grace period a run may ask for (10 years: fits every database and ``timedelta``).
MAX_GRACE_SECONDS = 10 * 365 * 86400


def run_json(run: GcRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "trigger": run.trigger,
        "dryRun": run.dry_run,
        "untagged": run.untagged,
        "gracePeriodSeconds": run.grace_seconds,
        "createdTime": iso(run.created_at),
        "startedTime": iso(run.started_at),
        "finishedTime": iso(run.finished_at),
        "freed": run.freed,
        "error": run.error,
    }


class GcRoutes:
    """/api/v1/gc/runs and the usage views."""

    def __init__(self, gc: GcService, usage: UsageService, policy: Policy) -> None:
        self.gc = gc
        self.usage = usage
        self.policy = policy

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        return [
            Route(
                "/api/v1/gc/runs",
                guard(self.runs, {"GET": MANAGE_READ, "POST": MANAGE_WRITE}),
                methods=["GET", "POST"],
            ),
            Route("/api/v1/gc/runs/{run_id}", guard(self.run, {"GET": MANAGE_READ}), methods=["GET"]),
            Route(
                "/api/v1/registry/usage", guard(self.registry_usage, {"GET": MANAGE_READ}), methods=["GET"]
            ),
        ]

    async def runs(self, request: Request) -> Response:
        if request.method == "POST":
            body = await json_body(request)
            grace = field(body, "gracePeriodSeconds", int)
            if grace is not None and not 0 <= grace <= MAX_GRACE_SECONDS:
                raise invalid(f"gracePeriodSeconds must be between 0 and {MAX_GRACE_SECONDS}")
            run = await run_sync(
                lambda: self.gc.request(
                    grace_seconds=grace,
                    dry_run=bool(field(body, "dryRun", bool)),
                    untagged=bool(field(body, "untagged", bool)),
                )
            )
            return JSONResponse(run_json(run), status_code=202)
        found = await run_sync(self.gc.list, min(query_int(request, "limit", 20), 1000))
        return JSONResponse({"value": [run_json(run) for run in found]})

    async def run(self, request: Request) -> Response:
        raw = request.path_params["run_id"]
        valid = raw.isascii() and raw.isdigit() and len(raw) < 19  # not '²': isdigit() takes it
        found = await run_sync(self.gc.get, int(raw)) if valid else None
        if found is None:
            raise RegistryError(ErrorCode.NOT_FOUND, f"no garbage-collection run {raw[:40]!r}")
        return JSONResponse(run_json(found))

    async def registry_usage(self, request: Request) -> Response:
        repository = request.query_params.get("repository")
        if repository is not None:
            return await self.repository_usage(repository)
        found = await run_sync(self.usage.registry)
        return JSONResponse(
            {
                "value": [
                    {"name": u.name, "limit": u.limit, "currentValue": u.current, "unit": u.unit}
                    for u in found
                ]
            }
        )

    async def repository_usage(self, name: str) -> Response:
        """A repository's size: each blob its manifests reference once, plus its manifests."""
        found = await run_sync(self.usage.repository, name)
        if found is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name!r} not known to registry")
        return JSONResponse({"name": name, **found})


def build_routes(services: LifecycleServices, policy: Policy, audit: AuditService) -> list[BaseRoute]:
    """Every route of the lifecycle room."""
    routes: list[BaseRoute] = [*PurgeRoutes(services.purge, policy, audit).routes()]
    if services.gc is not None and services.usage is not None:
        routes += GcRoutes(services.gc, services.usage, policy).routes()
    return routes
