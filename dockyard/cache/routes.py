"""The management API of the cache: /api/v1/cache-rules and /api/v1/credential-sets (as `az acr cache`).

Changing either needs control-plane write (Owner, Contributor); reading them, Reader. A credential
set's password is write-only: no answer and no audit record carries it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import MANAGE_READ, MANAGE_WRITE
from dockyard.access.policy import Policy
from dockyard.access.routes.common import field, iso, json_body, record_change
from dockyard.access.services.audit import AuditService
from dockyard.asgi import run_sync
from dockyard.cache.services import CacheConfigService, CacheRuleInfo, CredentialSetInfo

READ_WRITE = {"GET": MANAGE_READ, "POST": MANAGE_WRITE, "PATCH": MANAGE_WRITE, "DELETE": MANAGE_WRITE}


def rule_json(rule: CacheRuleInfo) -> dict[str, Any]:
    return {
        "name": rule.name,
        "sourceRepository": rule.source_repo,
        "targetRepository": rule.target_repo,
        "credentialSetName": rule.credential_set,
        "creationDate": iso(rule.created_at),
        "lastUpdatedDate": iso(rule.updated_at),
    }


def credential_set_json(found: CredentialSetInfo) -> dict[str, Any]:
    return {
        "name": found.name,
        "loginServer": found.login_server,
        "username": found.username,
        "creationDate": iso(found.created_at),
        "lastUpdatedDate": iso(found.updated_at),
    }


class CacheRoutes:
    """Handlers for /api/v1/cache-rules/… and /api/v1/credential-sets/…"""

    def __init__(self, service: CacheConfigService, policy: Policy, audit: AuditService) -> None:
        self.service = service
        self.policy = policy
        self.audit = audit

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        return [
            Route("/api/v1/cache-rules", guard(self.rules, READ_WRITE), methods=["GET", "POST"]),
            Route(
                "/api/v1/cache-rules/{name}", guard(self.rule, READ_WRITE), methods=["GET", "PATCH", "DELETE"]
            ),
            Route(
                "/api/v1/credential-sets", guard(self.credential_sets, READ_WRITE), methods=["GET", "POST"]
            ),
            Route(
                "/api/v1/credential-sets/{name}",
                guard(self.credential_set, READ_WRITE),
                methods=["GET", "PATCH", "DELETE"],
            ),
        ]

    async def _audit(self, request: Request, action: str, detail: dict[str, Any]) -> None:
        await record_change(self.audit, self.policy, request, action, detail)

    async def rules(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"value": [rule_json(r) for r in await run_sync(self.service.list_rules)]})
        body = await json_body(request)
        created = await run_sync(
            lambda: self.service.create_rule(
                field(body, "name", str, required=True),
                field(body, "sourceRepository", str, required=True),
                field(body, "targetRepository", str, required=True),
                field(body, "credentialSetName", str),
            )
        )
        detail = {"rule": created.name, "source": created.source_repo, "target": created.target_repo}
        await self._audit(request, "cache-rule.create", {**detail, "credentialSet": created.credential_set})
        return JSONResponse(rule_json(created), status_code=201)

    async def rule(self, request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "DELETE":
            await run_sync(self.service.delete_rule, name)
            await self._audit(request, "cache-rule.delete", {"rule": name})
            return Response(status_code=204)
        if request.method == "PATCH":
            body = await json_body(request)
            remove = "credentialSetName" in body and body["credentialSetName"] is None
            updated = await run_sync(
                lambda: self.service.update_rule(
                    name,
                    credential_set=field(body, "credentialSetName", str),
                    remove_credential_set=remove,
                )
            )
            await self._audit(
                request, "cache-rule.update", {"rule": name, "credentialSet": updated.credential_set}
            )
            return JSONResponse(rule_json(updated))
        return JSONResponse(rule_json(await run_sync(self.service.show_rule, name)))

    async def credential_sets(self, request: Request) -> Response:
        if request.method == "GET":
            found = await run_sync(self.service.list_credential_sets)
            return JSONResponse({"value": [credential_set_json(c) for c in found]})
        body = await json_body(request)
        created = await run_sync(
            lambda: self.service.create_credential_set(
                field(body, "name", str, required=True),
                field(body, "loginServer", str, required=True),
                field(body, "username", str, required=True),
                field(body, "password", str, required=True),
            )
        )
        detail = {"credentialSet": created.name, "loginServer": created.login_server}
        await self._audit(request, "credential-set.create", detail)
        return JSONResponse(credential_set_json(created), status_code=201)

    async def credential_set(self, request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "DELETE":
            await run_sync(self.service.delete_credential_set, name)
            await self._audit(request, "credential-set.delete", {"credentialSet": name})
            return Response(status_code=204)
        if request.method == "PATCH":
            body = await json_body(request)
            updated = await run_sync(
                lambda: self.service.update_credential_set(
                    name,
                    login_server=field(body, "loginServer", str),
                    username=field(body, "username", str),
                    password=field(body, "password", str),
                )
            )
            changed = [key for key in ("loginServer", "username", "password") if key in body]
            await self._audit(request, "credential-set.update", {"credentialSet": name, "changed": changed})
            return JSONResponse(credential_set_json(updated))
        return JSONResponse(credential_set_json(await run_sync(self.service.show_credential_set, name)))
