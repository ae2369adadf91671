"""The management API (/api/v1): registry properties, admin credentials, signing keys, audit log."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import MANAGE_READ, MANAGE_WRITE
from dockyard.access.policy import Policy
from dockyard.access.routes.common import (
    credential_json,
    field,
    invalid,
    iso,
    json_body,
    may_take_over,
    query_int,
    query_time,
    record_change,
)
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
        tier = await run_sync(self.access.tiers.current)
        return {
            "name": self.registry_name,
            "sku": {"name": str(tier.sku), "tier": str(tier.sku)},
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
            if admin is not None:  # the admin user holds every right: turning it on or off is an Owner's call
                user = await run_sync(self.access.identities.admin)
                await may_take_over(self.policy, request, user.name if user else "", "enabling or disabling")
            if changes:
                await run_sync(self.access.settings.update, **changes)
            if admin is not None:
                await run_sync(self.access.identities.set_admin_enabled, admin)
            await record_change(self.access.audit, self.policy, request, "registry.update", body)
        return JSONResponse(await self._properties(request))

    @staticmethod
    def _settings_changes(body: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {"anonymous_pull_enabled": field(body, "anonymousPullEnabled", bool)}
        sku = field(body, "sku", dict)
        if sku is not None:
            changes["sku"] = field(sku, "name", str, required=True)
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
        await record_change(
            self.access.audit,
            self.policy,
            request,
            "network-rule.add" if request.method == "POST" else "network-rule.remove",
            {"ipAddress": address},
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
        admin = await run_sync(self.access.identities.admin)
        if admin is None:
            raise RegistryError(ErrorCode.NOT_FOUND, "the registry has no admin user")
        await may_take_over(self.policy, request, admin.name, "renewing the credentials of")
        renewed = await run_sync(self.access.identities.new_credential, ADMIN, name, kind=ADMIN)
        await record_change(self.access.audit, self.policy, request, "credential.renew", {"credential": name})
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
        kid = await run_sync(self.access.tokens.rotate)
        await record_change(self.access.audit, self.policy, request, "signing-key.rotate", {"kid": kid})
        return JSONResponse({"kid": kid}, status_code=201)

    async def audit(self, request: Request) -> Response:
        await run_sync(self.access.audit.flush)  # what this process counted so far, written first
        events = await run_sync(
            lambda: self.access.audit.list(
                since=query_time(request),
                action=request.query_params.get("action") or None,
                limit=query_int(request, "limit", 100),
            )
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
