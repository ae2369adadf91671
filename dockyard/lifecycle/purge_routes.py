"""/api/v1/purge: start a purge (dry run or not), read runs, keep purge schedules.

A purge deletes content, so starting one needs the delete action on every repository its filters
match (AcrDelete, Contributor or Owner); the run is then narrowed to exactly those repositories.
Schedules run as the registry, so creating or deleting one needs control-plane write (Owner or
Contributor); reading runs and schedules needs Reader (a run's requester may also read it).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import CONTENT_DELETE, MANAGE_READ, MANAGE_WRITE, REGISTRY_READ, Principal
from dockyard.access.policy import Policy
from dockyard.access.routes.common import field, invalid, json_body, query_int, record_change
from dockyard.access.services.audit import AuditService
from dockyard.asgi import run_sync
from dockyard.lifecycle.services.purge import MAX_CONCURRENCY, PurgeParameters, PurgeService
from dockyard.oci.errors import ErrorCode, RegistryError

SCHEDULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_FILTERS = 100
MAX_RUNS_LISTED = 1000
#: Purge starts whose filters are matched at once per process (``PurgeRoutes._matching``).
MATCHING_AT_ONCE = 2
SCOPED_REFUSAL = (
    "a repository-scoped token cannot use the management API; "
    "purge as a user or service principal with AcrDelete, Contributor or Owner"
)


def _no_schedule(name: str) -> RegistryError:
    return RegistryError(ErrorCode.NAME_UNKNOWN, f"purge schedule {name[:64]!r} not found", status=404)


def parameters_of(body: dict[str, Any]) -> PurgeParameters:
    """The purge parameters of a request body (acr purge's flags in camelCase)."""
    filters = field(body, "filters", list) or []
    if len(filters) > MAX_FILTERS or not all(isinstance(f, str) and 0 < len(f) <= 1024 for f in filters):
        raise invalid(f"filters must be at most {MAX_FILTERS} 'repoRegex:tagRegex' strings")
    keep = field(body, "keep", int) or 0
    concurrency = field(body, "concurrency", int)
    concurrency = 1 if concurrency is None else concurrency
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise invalid(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
    parameters = PurgeParameters(
        filters=tuple(filters),
        ago=field(body, "ago", str),
        keep=keep,
        untagged=bool(field(body, "untagged", bool)),
        untagged_only=bool(field(body, "untaggedOnly", bool)),
        concurrency=concurrency,
    )
    parameters.parsed()
    return parameters


class PurgeRoutes:
    """The purge endpoints of the management API."""

    def __init__(self, purge: PurgeService, policy: Policy, audit: AuditService) -> None:
        self.purge = purge
        self.policy = policy
        self.audit = audit
        #: Filters are matched against repository names (each regex up to 5 s a name) by this many
        #: threads at once: a flood of slow regexes queues, the other requests keep their threads.
        self._matching = anyio.CapacityLimiter(MATCHING_AT_ONCE)

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        return [
            Route("/api/v1/purge", guard(self.start, {"POST": None}), methods=["POST"]),
            Route("/api/v1/purge/runs", guard(self.runs, {"GET": MANAGE_READ}), methods=["GET"]),
            Route("/api/v1/purge/runs/{id}", guard(self.run, {"GET": None}), methods=["GET"]),
            Route(
                "/api/v1/purge/schedules",
                guard(self.schedules, {"GET": MANAGE_READ, "POST": MANAGE_WRITE}),
                methods=["GET", "POST"],
            ),
            Route(
                "/api/v1/purge/schedules/{schedule}",
                guard(self.schedule, {"GET": MANAGE_READ, "DELETE": MANAGE_WRITE}),
                methods=["GET", "DELETE"],
            ),
        ]

    async def _identified(self, request: Request) -> Principal:
        """The verified identity behind the call (as the rest of /api/v1 judges callers): 401 for
        anonymous callers, 403 for repository-scoped access tokens and tokens' own credentials."""
        caller = await self.policy.caller(request)
        if caller.anonymous:
            raise self.policy.challenge(request, None)
        principal = caller.principal
        if caller.token is not None:
            if not caller.token.is_identity_token:
                raise RegistryError(ErrorCode.DENIED, SCOPED_REFUSAL)
            principal = await run_sync(self.policy.authenticator.identity_principal, caller.token)
            if principal is None:
                raise self.policy.challenge(request, None, error="invalid_token")
        if principal is None or principal.kind == "token":
            raise RegistryError(ErrorCode.DENIED, SCOPED_REFUSAL)
        return principal

    async def start(self, request: Request) -> Response:
        caller = await self._identified(request)
        if not any(CONTENT_DELETE in g.actions for g in caller.permissions.grants):
            raise RegistryError(
                ErrorCode.DENIED, "purge needs the delete action (AcrDelete, Contributor or Owner)"
            )
        body = await json_body(request)
        parameters = parameters_of(body)
        dry_run = bool(field(body, "dryRun", bool))

        # A caller that may not list the catalog: the repositories it may not delete from stay
        # unseen, its regexes never even run on their names (a 403 naming them, an error or the
        # time a regex took would answer "does a name like this exist?").
        def may_delete(name: str) -> bool:
            return caller.permissions.allows(name, CONTENT_DELETE)

        visible = None if caller.permissions.catalog else may_delete
        targets = await anyio.to_thread.run_sync(
            functools.partial(self.purge.targets, parameters, visible), limiter=self._matching
        )
        refused = [name for name in sorted(targets) if not may_delete(name)]
        if refused:
            raise RegistryError(
                ErrorCode.DENIED,
                f"purge needs the delete action on every repository it matches, not given on {refused[0]!r}",
                detail={"repositories": refused[:20]},
            )
        narrowed = dataclasses.replace(parameters, repositories=tuple(sorted(targets)))
        run_id = await run_sync(lambda: self.purge.start(narrowed, dry_run=dry_run, requested_by=caller.name))
        return JSONResponse(
            {"id": run_id, "status": "queued", "dryRun": dry_run, "repositories": sorted(targets)},
            status_code=202,
            headers={"Location": f"/api/v1/purge/runs/{run_id}"},
        )

    async def runs(self, request: Request) -> Response:
        limit = min(query_int(request, "limit", 20), MAX_RUNS_LISTED)
        schedule = request.query_params.get("schedule")
        return JSONResponse({"runs": await run_sync(self.purge.list_runs, limit, schedule)})

    async def run(self, request: Request) -> Response:
        caller = await self._identified(request)
        raw = request.path_params["id"]
        valid = raw.isascii() and raw.isdigit() and len(raw) <= 18
        found = await run_sync(lambda: self.purge.get_run(int(raw), items=True)) if valid else None
        reader = REGISTRY_READ in caller.permissions.control
        if not reader and (found is None or found["requestedBy"] != caller.name):
            raise RegistryError(
                ErrorCode.DENIED, "reading purge runs needs Reader, or to have started the run"
            )
        if found is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"purge run {raw[:40]!r} not found", status=404)
        return JSONResponse(found)

    async def schedules(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"schedules": await run_sync(self.purge.list_schedules)})
        body = await json_body(request)
        name = field(body, "name", str, required=True)
        if not SCHEDULE_NAME.fullmatch(name):
            raise invalid(
                "name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        cron = field(body, "schedule", str, required=True)
        parameters = parameters_of(body)
        manager = self.policy.manager(request)
        created = await run_sync(lambda: self.purge.create_schedule(name, cron, parameters, manager.name))
        await record_change(self.audit, self.policy, request, "purge.schedule.create", {"name": name})
        return JSONResponse(created, status_code=201)

    async def schedule(self, request: Request) -> Response:
        name = request.path_params["schedule"]
        if request.method == "DELETE":
            if not await run_sync(self.purge.delete_schedule, name):
                raise RegistryError(
                    ErrorCode.NAME_UNKNOWN, f"purge schedule {name[:64]!r} not found", status=404
                )
            await record_change(self.audit, self.policy, request, "purge.schedule.delete", {"name": name})
            return Response(status_code=204)
        found = await run_sync(self.purge.get_schedule, name)
        if found is None:
            raise _no_schedule(name)
        return JSONResponse(found)
