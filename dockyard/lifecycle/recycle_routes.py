"""Management routes of soft delete and retention: the policies, the recycle bin, restore.

As ACR's ``registries/deleted/read`` and ``…/restore/action``, reading the bin is a control-plane read
(Reader) and restoring a control-plane write (Contributor, Owner)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import MANAGE_READ, MANAGE_WRITE
from dockyard.access.policy import Policy
from dockyard.access.routes.common import field, invalid, iso, json_body, record_change
from dockyard.access.services.audit import AuditService
from dockyard.asgi import run_sync
from dockyard.lifecycle.services import RecycleServices
from dockyard.lifecycle.services.policies import RETENTION, SOFT_DELETE, UNTAGGED_MANIFESTS, PolicyState
from dockyard.lifecycle.services.recycle import DEFAULT_PAGE, MAX_PAGE, BinCursor, DeletedManifest
from dockyard.oci.digest import parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.routes.headers import next_link, origin, page_size, repository_name

POLICIES = "/api/v1/registry/policies"
MAX_NAME = 255


def soft_delete_json(state: PolicyState) -> dict[str, Any]:
    """ACR's ``policies.softDeletePolicy``."""
    return {"retentionDays": state.days, "status": state.status, "lastUpdatedTime": iso(state.last_updated)}


def retention_json(state: PolicyState) -> dict[str, Any]:
    """ACR's ``policies.retentionPolicy`` (untagged manifests)."""
    return {
        "days": state.days,
        "status": state.status,
        "type": UNTAGGED_MANIFESTS,
        "lastUpdatedTime": iso(state.last_updated),
    }


def bin_page(request: Request) -> int:
    """``?n=``: 1 to MAX_PAGE, DEFAULT_PAGE when absent."""
    n = page_size(request)
    if n is None:
        return DEFAULT_PAGE
    if not 1 <= n <= MAX_PAGE:
        raise bad_query(f"query parameter n must be between 1 and {MAX_PAGE}")
    return n


def name_cursor(request: Request) -> str | None:
    """``?last=`` of the name-ordered listings: a tag or repository name (printable, at most 255)."""
    last = request.query_params.get("last") or None
    if last is not None and (len(last) > MAX_NAME or not last.isprintable()):
        raise bad_query("query parameter last is not a tag or repository name")
    return last


def encode_cursor(deleted_at: datetime, digest: str) -> str:
    """The opaque ``last`` of a page of a repository's bin: its last entry's sort key."""
    moment = deleted_at.astimezone(UTC).isoformat(timespec="microseconds")
    return base64.urlsafe_b64encode(f"{moment} {digest}".encode()).decode().rstrip("=")


def manifest_cursor(request: Request) -> BinCursor | None:
    """``?last=`` of a repository's bin: a cursor from a previous page's Link header."""
    last = request.query_params.get("last") or None
    if last is None:
        return None
    try:
        moment, digest = base64.urlsafe_b64decode(last + "=" * (-len(last) % 4)).decode().split(" ")
        deleted_at = datetime.fromisoformat(moment)
        parse_digest(digest)
    except (ValueError, RegistryError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise bad_query("query parameter last is not a cursor of this listing") from None
    if deleted_at.tzinfo is None:
        raise bad_query("query parameter last is not a cursor of this listing")
    return BinCursor(deleted_at.astimezone(UTC), digest)


def bad_query(message: str) -> RegistryError:
    """A 400 with the OCI error JSON, as the registry's own listings answer a bad ``n``."""
    return RegistryError(ErrorCode.UNSUPPORTED, message, status=400)


def deleted_json(item: DeletedManifest) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "digest": item.digest,
        "mediaType": item.media_type,
        "imageSize": item.total_size,
        "tags": item.tags,
        "deletedTime": iso(item.deleted_at),
        "expiresTime": iso(item.expires_at),
    }
    if item.subject:
        shown["subject"] = item.subject
    return shown


class RecycleRoutes:
    """/api/v1/registry/policies/{soft-delete,retention}, /api/v1/deleted…"""

    def __init__(self, recycle: RecycleServices, policy: Policy, audit: AuditService) -> None:
        self.recycle = recycle
        self.policy = policy
        self.audit = audit

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        read_write = {"GET": MANAGE_READ, "PATCH": MANAGE_WRITE}
        return [
            Route(POLICIES, guard(self.policies, {"GET": MANAGE_READ}), methods=["GET"]),
            Route(f"{POLICIES}/soft-delete", guard(self.soft_delete, read_write), methods=["GET", "PATCH"]),
            Route(f"{POLICIES}/retention", guard(self.retention, read_write), methods=["GET", "PATCH"]),
            Route(
                "/api/v1/deleted-repositories",
                guard(self.deleted_repositories, {"GET": MANAGE_READ}),
                methods=["GET"],
            ),
            Route(
                "/api/v1/deleted/{name:path}/_manifests/{digest}/restore",
                guard(self.restore, {"POST": MANAGE_WRITE}),
                methods=["POST"],
            ),
            Route(
                "/api/v1/deleted/{name:path}/_manifests",
                guard(self.deleted_manifests, {"GET": MANAGE_READ}),
                methods=["GET"],
            ),
            Route(
                "/api/v1/deleted/{name:path}/_tags",
                guard(self.deleted_tags, {"GET": MANAGE_READ}),
                methods=["GET"],
            ),
        ]

    async def policies(self, request: Request) -> Response:
        soft = await run_sync(self.recycle.policies.get, SOFT_DELETE)
        kept = await run_sync(self.recycle.policies.get, RETENTION)
        return JSONResponse(
            {"softDeletePolicy": soft_delete_json(soft), "retentionPolicy": retention_json(kept)}
        )

    async def soft_delete(self, request: Request) -> Response:
        if request.method == "PATCH":
            body = await json_body(request)
            days = field(body, "retentionDays", int)
            days = field(body, "days", int) if days is None else days
            status = field(body, "status", str)
            state = await run_sync(self.recycle.policies.update, SOFT_DELETE, status, days)
            await record_change(
                self.audit, self.policy, request, "policy.soft-delete", soft_delete_json(state)
            )
        else:
            state = await run_sync(self.recycle.policies.get, SOFT_DELETE)
        return JSONResponse(soft_delete_json(state))

    async def retention(self, request: Request) -> Response:
        if request.method == "PATCH":
            body = await json_body(request)
            kind = field(body, "type", str)
            if kind is not None and kind != UNTAGGED_MANIFESTS:
                raise invalid(f"type must be {UNTAGGED_MANIFESTS}")
            state = await run_sync(
                self.recycle.policies.update, RETENTION, field(body, "status", str), field(body, "days", int)
            )
            await record_change(self.audit, self.policy, request, "policy.retention", retention_json(state))
        else:
            state = await run_sync(self.recycle.policies.get, RETENTION)
        return JSONResponse(retention_json(state))

    async def deleted_repositories(self, request: Request) -> Response:
        n, last = bin_page(request), name_cursor(request)
        names, more = await run_sync(self.recycle.bin.deleted_repositories, n, last)
        headers = {"Link": next_link("/api/v1/deleted-repositories", n, names[-1])} if more else {}
        return JSONResponse({"repositories": names}, headers=headers)

    async def deleted_manifests(self, request: Request) -> Response:
        name = repository_name(request)
        n, after = bin_page(request), manifest_cursor(request)
        found, more = await run_sync(self.recycle.bin.deleted_manifests, name, n, after)
        headers: dict[str, str] = {}
        if more:
            path = f"/api/v1/deleted/{name}/_manifests"
            headers["Link"] = next_link(path, n, encode_cursor(found[-1].deleted_at, found[-1].digest))
        return JSONResponse(
            {"imageName": name, "manifests": [deleted_json(item) for item in found]}, headers=headers
        )

    async def deleted_tags(self, request: Request) -> Response:
        name = repository_name(request)
        n, last = bin_page(request), name_cursor(request)
        found, more = await run_sync(self.recycle.bin.deleted_tags, name, n, last)
        shown = [
            {
                "tag": tag,
                "digest": item.digest,
                "deletedTime": iso(item.deleted_at),
                "expiresTime": iso(item.expires_at),
            }
            for tag, item in found
        ]
        headers = {"Link": next_link(f"/api/v1/deleted/{name}/_tags", n, found[-1][0])} if more else {}
        return JSONResponse({"imageName": name, "tags": shown}, headers=headers)

    async def restore(self, request: Request) -> Response:
        name = repository_name(request)
        digest = request.path_params["digest"]
        parse_digest(digest)
        body = await json_body(request)
        tag = field(body, "tag", str)
        force = bool(field(body, "force", bool))
        restored = await run_sync(
            self.recycle.bin.restore, name, digest, tag, force, origin(request, self.policy)
        )
        return JSONResponse(
            {"digest": restored.digest, "restoredTags": restored.tags, "skippedTags": restored.skipped_tags}
        )


def recycle_routes(recycle: RecycleServices | None, policy: Policy, audit: AuditService) -> list[BaseRoute]:
    """The routes, or none in a registry built without the recycle services."""
    return RecycleRoutes(recycle, policy, audit).routes() if recycle is not None else []
