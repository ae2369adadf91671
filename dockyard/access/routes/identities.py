"""The management API for who may do what: users, service principals, roles, tokens, scope maps."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import MANAGE_READ, MANAGE_ROLES, MANAGE_WRITE
from dockyard.access.policy import Policy
from dockyard.access.routes.common import (
    credential_json,
    field,
    identity_json,
    invalid,
    iso,
    json_body,
    may_take_over,
    record_change,
    role_json,
    status_flag,
)
from dockyard.access.services import AccessServices
from dockyard.access.services.identities import PASSWORD_NAMES, SECRET, SERVICE_PRINCIPAL, TOKEN, USER
from dockyard.access.services.scope_maps import ScopeMapInfo, parse_rules
from dockyard.asgi import run_sync

READ_WRITE = {"GET": MANAGE_READ, "POST": MANAGE_WRITE, "PATCH": MANAGE_WRITE, "DELETE": MANAGE_WRITE}
KIND_PATHS = {"users": USER, "service-principals": SERVICE_PRINCIPAL}


def scope_map_json(scope_map: ScopeMapInfo) -> dict[str, Any]:
    return {
        "name": scope_map.name,
        "description": scope_map.description,
        "type": "SystemDefined" if scope_map.system else "UserDefined",
        "actions": scope_map.actions,
        "creationTime": iso(scope_map.created_at),
    }


def _rules(body: dict[str, Any], name: str) -> set[tuple[str, str]]:
    """``{"repo": ["content/read", …], …}`` as (pattern, action) rules."""
    value = field(body, name, dict) or {}
    if not all(isinstance(a, list) and all(isinstance(x, str) for x in a) for a in value.values()):
        raise invalid(f"{name} maps repositories to lists of actions")
    return parse_rules(value.items())


#: The longest credential expiry accepted (ACR's tokens: any date; ten years is plenty).
MAX_EXPIRY_DAYS = 3650


def _expiry(body: dict[str, Any]) -> int | None:
    days = field(body, "expiresInDays", int)
    if days is not None and not 1 <= days <= MAX_EXPIRY_DAYS:
        raise invalid(f"expiresInDays must be between 1 and {MAX_EXPIRY_DAYS}")
    return days


class IdentityRoutes:
    """Handlers for /api/v1/users, /service-principals, /role-assignments, /tokens, /scope-maps."""

    def __init__(self, access: AccessServices, policy: Policy) -> None:
        self.access = access
        self.identities = access.identities
        self.scope_maps = access.scope_maps
        self.policy = policy

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        routes: list[BaseRoute] = []
        for path in KIND_PATHS:
            routes += [
                Route(f"/api/v1/{path}", guard(self.people, READ_WRITE), methods=["GET", "POST"]),
                Route(
                    f"/api/v1/{path}/{{id}}",
                    guard(self.person, READ_WRITE),
                    methods=["GET", "PATCH", "DELETE"],
                ),
                Route(
                    f"/api/v1/{path}/{{id}}/credentials",
                    guard(self.person_secret, READ_WRITE),
                    methods=["POST"],
                ),
            ]
        roles = {"GET": MANAGE_READ, "POST": MANAGE_ROLES, "DELETE": MANAGE_ROLES}
        return [
            *routes,
            Route("/api/v1/role-assignments", guard(self.role_assignments, roles), methods=["GET", "POST"]),
            Route("/api/v1/role-assignments/{id}", guard(self.role_assignment, roles), methods=["DELETE"]),
            Route("/api/v1/scope-maps", guard(self.scope_map_list, READ_WRITE), methods=["GET", "POST"]),
            Route(
                "/api/v1/scope-maps/{id}",
                guard(self.scope_map, READ_WRITE),
                methods=["GET", "PATCH", "DELETE"],
            ),
            Route("/api/v1/tokens", guard(self.tokens, READ_WRITE), methods=["GET", "POST"]),
            Route("/api/v1/tokens/{id}", guard(self.token, READ_WRITE), methods=["GET", "PATCH", "DELETE"]),
            Route(
                "/api/v1/tokens/{id}/credentials", guard(self.token_password, READ_WRITE), methods=["POST"]
            ),
        ]

    async def _audit(self, request: Request, action: str, detail: dict[str, Any]) -> None:
        await record_change(self.access.audit, self.policy, request, action, detail)

    @staticmethod
    def _kind(request: Request) -> str:
        return KIND_PATHS[request.url.path.split("/")[3]]

    # -- users and service principals --------------------------------------------------------

    async def people(self, request: Request) -> Response:
        kind = self._kind(request)
        if request.method == "GET":
            found = await run_sync(self.identities.list, kind)
            return JSONResponse({"value": [identity_json(i) for i in found]})
        body = await json_body(request)
        name = field(body, "name", str, required=kind == USER)
        created, secret = await run_sync(self.identities.create, kind, name, field(body, "description", str))
        await self._audit(request, f"{kind}.create", {"name": created.name})
        shown = identity_json(created)
        shown["credentials"] = [
            {**c, "value": secret} if c["name"] == SECRET else c for c in shown["credentials"]
        ]
        return JSONResponse(shown, status_code=201)

    async def person(self, request: Request) -> Response:
        kind = self._kind(request)
        name = request.path_params["id"]
        if request.method in ("DELETE", "PATCH"):
            target = await run_sync(self.identities.get, name, kind)
            if target.roles:  # deleting or disabling it changes who holds those roles
                await may_take_over(self.policy, request, target.name, "deleting or disabling")
        if request.method == "DELETE":
            await run_sync(self.identities.delete, name, kind)
            await self._audit(request, f"{kind}.delete", {"name": name})
            return Response(status_code=204)
        if request.method == "PATCH":
            enabled = status_flag(await json_body(request))
            if enabled is not None:
                await run_sync(self.identities.set_enabled, name, enabled, kind)
                await self._audit(request, f"{kind}.update", {"name": name, "enabled": enabled})
        return JSONResponse(identity_json(await run_sync(self.identities.get, name, kind)))

    async def person_secret(self, request: Request) -> Response:
        kind = self._kind(request)
        name = request.path_params["id"]
        body = await json_body(request)
        target = await run_sync(self.identities.get, name, kind)
        if target.roles:
            await may_take_over(self.policy, request, target.name, "renewing the credentials of")
        credential = field(body, "name", str) or SECRET
        renewed = await run_sync(
            self.identities.new_credential, name, credential, expires_in_days=_expiry(body), kind=kind
        )
        await self._audit(request, f"{kind}.credential", {"name": name, "credential": credential})
        return JSONResponse(credential_json(renewed), status_code=201)

    # -- role assignments --------------------------------------------------------------------

    async def role_assignments(self, request: Request) -> Response:
        if request.method == "GET":
            found = await run_sync(
                self.identities.role_assignments, request.query_params.get("assignee") or None
            )
            return JSONResponse({"value": [role_json(a) for a in found]})
        body = await json_body(request)
        assigned = await run_sync(
            self.identities.assign_role,
            field(body, "assignee", str, required=True),
            field(body, "role", str, required=True),
            field(body, "scope", str) or "registry",
        )
        await self._audit(request, "role.assign", role_json(assigned))
        return JSONResponse(role_json(assigned), status_code=201)

    async def role_assignment(self, request: Request) -> Response:
        await run_sync(self.identities.delete_role_assignment, request.path_params["id"])
        await self._audit(request, "role.delete", {"id": request.path_params["id"]})
        return Response(status_code=204)

    # -- scope maps --------------------------------------------------------------------------

    async def scope_map_list(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"value": [scope_map_json(m) for m in await run_sync(self.scope_maps.list)]})
        body = await json_body(request)
        created = await run_sync(
            self.scope_maps.create,
            field(body, "name", str, required=True),
            _rules(body, "actions"),
            field(body, "description", str),
        )
        await self._audit(request, "scope-map.create", {"name": created.name, "actions": created.actions})
        return JSONResponse(scope_map_json(created), status_code=201)

    async def scope_map(self, request: Request) -> Response:
        name = request.path_params["id"]
        if request.method == "DELETE":
            await run_sync(self.scope_maps.delete, name)
            await self._audit(request, "scope-map.delete", {"name": name})
            return Response(status_code=204)
        if request.method == "PATCH":
            body = await json_body(request)
            updated = await run_sync(
                self.scope_maps.update,
                name,
                add=_rules(body, "add"),
                remove=_rules(body, "remove"),
                description=field(body, "description", str),
            )
            await self._audit(request, "scope-map.update", {"name": name, "actions": updated.actions})
            return JSONResponse(scope_map_json(updated))
        return JSONResponse(scope_map_json(await run_sync(self.scope_maps.show, name)))

    # -- tokens ------------------------------------------------------------------------------

    async def tokens(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(
                {"value": [identity_json(t) for t in await run_sync(self.identities.list, TOKEN)]}
            )
        body = await json_body(request)
        enabled = status_flag(body)
        created = await run_sync(
            lambda: self.identities.create_token(
                field(body, "name", str, required=True),
                field(body, "scopeMap", str, required=True),
                enabled=True if enabled is None else enabled,
                expires_in_days=_expiry(body),
            )
        )
        await self._audit(request, "token.create", {"name": created.name, "scopeMap": created.scope_map})
        return JSONResponse(identity_json(created), status_code=201)

    async def token(self, request: Request) -> Response:
        name = request.path_params["id"]
        if request.method == "DELETE":
            await run_sync(self.identities.delete, name, TOKEN)
            await self._audit(request, "token.delete", {"name": name})
            return Response(status_code=204)
        if request.method == "PATCH":
            body = await json_body(request)
            updated = await run_sync(
                lambda: self.identities.update_token(
                    name, scope_map=field(body, "scopeMap", str), enabled=status_flag(body)
                )
            )
            changed = {key: body[key] for key in ("scopeMap", "status") if key in body}  # what was applied
            await self._audit(request, "token.update", {"name": name, **changed})
            return JSONResponse(identity_json(updated))
        return JSONResponse(identity_json(await run_sync(self.identities.get, name, TOKEN)))

    async def token_password(self, request: Request) -> Response:
        name = request.path_params["id"]
        body = await json_body(request)
        credential = field(body, "name", str, required=True)
        if credential not in PASSWORD_NAMES:
            raise invalid("name must be password or password2")
        renewed = await run_sync(
            self.identities.new_credential, name, credential, expires_in_days=_expiry(body), kind=TOKEN
        )
        await self._audit(request, "token.credential", {"name": name, "credential": credential})
        return JSONResponse(credential_json(renewed), status_code=201)
