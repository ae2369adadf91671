"""The management API (/api/v1): registry properties, admin credentials, signing keys, audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import MANAGE_READ, MANAGE_WRITE
from dockyard.access.policy import Policy
from dockyard.access.routes.common import credential_json, field, invalid, iso, json_body
from dockyard.access.services import AccessServices
from dockyard.access.services.identities import ADMIN, PASSWORD_NAMES
from dockyard.asgi import run_sync
from dockyard.oci.errors import ErrorCode, RegistryError


class ManagementRoutes:
    """Registry-wide settings and credentials."""

    def __init__(self, access: AccessServices, policy: Policy, registry_name: str) -> None:
        self.access = access
        self.policy = policy
        self.registry_name = registry_name

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        read_write = {"GET": MANAGE_READ, "PATCH": MANAGE_WRITE}
        return [
            Route("/api/v1/registry", guard(self.registry, read_write), methods=["GET", "PATCH"]),
            Route(
                "/api/v1/registry/credentials", guard(self.credentials, {"GET": MANAGE_READ}), methods=["GET"]
            ),
            Route(
                "/api/v1/registry/credentials/renew",
                guard(self.renew_credential, {"POST": MANAGE_WRITE}),
                methods=["POST"],
            ),
            Route(
                "/api/v1/registry/network-rules",
                guard(self.network_rule, {"POST": MANAGE_WRITE, "DELETE": MANAGE_WRITE}),
                methods=["POST", "DELETE"],
            ),
            Route("/api/v1/signing-keys", guard(self.signing_keys, {"GET": MANAGE_READ}), methods=["GET"]),
            Route(
                "/api/v1/signing-keys/rotate",
                guard(self.rotate_key, {"POST": MANAGE_WRITE}),
                methods=["POST"],
            ),
            Route("/api/v1/audit", guard(self.audit, {"GET": MANAGE_READ}), methods=["GET"]),
        ]

    async def _properties(self, request: Request) -> dict[str, Any]:
        settings = await run_sync(self.access.settings.get)
        admin = await run_sync(self.access.identities.admin)
        return {
            "name": self.registry_name,
            "loginServer": request.url.netloc,
            "adminUserEnabled": bool(admin and admin.enabled),
            "anonymousPullEnabled": settings.anonymous_pull_enabled,
            "publicNetworkAccess": "Enabled" if settings.public_network_access else "Disabled",
            "networkRuleSet": {
                "defaultAction": settings.default_action,
                "ipRules": [{"action": "Allow", "value": rule} for rule in settings.ip_rules],
            },
        }

    async def registry(self, request: Request) -> Response:
        if request.method == "PATCH":
            body = await json_body(request)
            changes = self._settings_changes(body)
            admin = field(body, "adminUserEnabled", bool)
            caller = await self.policy.caller(request)
            if changes:
                await run_sync(self.access.settings.update, **changes)
            if admin is not None:
                await run_sync(self.access.identities.set_admin_enabled, admin)
            await run_sync(
                self.access.audit.record,
                "registry.update",
                "success",
                principal=caller.name,
                client_ip=self.policy.client_ip(request.scope),
                detail=body,
            )
        return JSONResponse(await self._properties(request))

    @staticmethod
    def _settings_changes(body: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {"anonymous_pull_enabled": field(body, "anonymousPullEnabled", bool)}
        public = field(body, "publicNetworkAccess", str)
        if public is not None:
            if public not in ("Enabled", "Disabled"):
                raise invalid("publicNetworkAccess must be Enabled or Disabled")
            changes["public_network_access"] = public == "Enabled"
        rules = field(body, "networkRuleSet", dict)
        if rules is not None:
            changes["default_action"] = field(rules, "defaultAction", str)
            ip_rules = field(rules, "ipRules", list)
            if ip_rules is not None:
                values = []
                for rule in ip_rules:
                    value = rule.get("value") if isinstance(rule, dict) else rule
                    if not isinstance(value, str):
                        raise invalid("ipRules entries are {'value': '<ip or CIDR>'}")
                    values.append(value)
                changes["ip_rules"] = values
        return {k: v for k, v in changes.items() if v is not None}

    async def network_rule(self, request: Request) -> Response:
        """Add (POST {"ipAddress"}) or remove (DELETE ?ipAddress=) one IP rule, atomically."""
        if request.method == "POST":
            address = field(await json_body(request), "ipAddress", str, required=True)
        else:
            address = request.query_params.get("ipAddress") or ""
            if not address:
                raise invalid("ipAddress is required")
        await run_sync(lambda: self.access.settings.change_ip_rule(address, add=request.method == "POST"))
        caller = await self.policy.caller(request)
        await run_sync(
            self.access.audit.record,
            "network-rule.add" if request.method == "POST" else "network-rule.remove",
            "success",
            principal=caller.name,
            client_ip=self.policy.client_ip(request.scope),
            detail={"ipAddress": address},
        )
        return JSONResponse(await self._properties(request))

    async def credentials(self, request: Request) -> Response:
        admin = await run_sync(self.access.identities.admin)
        if admin is None:
            raise RegistryError(ErrorCode.NOT_FOUND, "the registry has no admin user")
        return JSONResponse(
            {
                "username": admin.name,
                "enabled": admin.enabled,
                "passwords": [credential_json(c) for c in admin.credentials],
            }
        )

    async def renew_credential(self, request: Request) -> Response:
        body = await json_body(request)
        name = field(body, "name", str, required=True)
        if name not in PASSWORD_NAMES:
            raise invalid("name must be password or password2")
        caller = await self.policy.caller(request)
        renewed = await run_sync(self.access.identities.new_credential, ADMIN, name, kind=ADMIN)
        await run_sync(
            self.access.audit.record,
            "credential.renew",
            "success",
            principal=caller.name,
            client_ip=self.policy.client_ip(request.scope),
            detail={"credential": name},
        )
        admin = await run_sync(self.access.identities.admin)
        assert admin is not None
        passwords = [renewed if c.name == name else c for c in admin.credentials]
        return JSONResponse(
            {
                "username": admin.name,
                "enabled": admin.enabled,
                "passwords": [credential_json(c) for c in passwords],
            }
        )

    async def signing_keys(self, request: Request) -> Response:
        keys = await run_sync(self.access.tokens.key_list)
        return JSONResponse(
            {
                "keys": [
                    {
                        "kid": k["kid"],
                        "createdTime": iso(k["createdTime"]),
                        "retiredTime": iso(k["retiredTime"]),
                    }
                    for k in keys
                ]
            }
        )

    async def rotate_key(self, request: Request) -> Response:
        caller = await self.policy.caller(request)
        kid = await run_sync(self.access.tokens.rotate)
        await run_sync(
            self.access.audit.record,
            "signing-key.rotate",
            "success",
            principal=caller.name,
            client_ip=self.policy.client_ip(request.scope),
            detail={"kid": kid},
        )
        return JSONResponse({"kid": kid}, status_code=201)

    async def audit(self, request: Request) -> Response:
        query = request.query_params
        since = None
        if query.get("since"):
            try:
                since = datetime.fromisoformat(query["since"].replace("Z", "+00:00"))
            except ValueError:
                raise invalid("since must be an ISO 8601 time") from None
        limit_text = query.get("limit", "100")
        if not limit_text.isascii() or not limit_text.isdigit():
            raise invalid("limit must be a positive integer")
        events = await run_sync(
            self.access.audit.list, since=since, action=query.get("action") or None, limit=int(limit_text)
        )
        return JSONResponse(
            {
                "events": [
                    {
                        "id": e.id,
                        "time": iso(e.time),
                        "action": e.action,
                        "outcome": e.outcome,
                        "principal": e.principal,
                        "clientIp": e.client_ip,
                        "detail": e.detail,
                    }
                    for e in events
                ]
            }
        )
