"""Helpers the management API handlers share: JSON bodies, field checks, ACR-style JSON shapes."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from starlette.requests import Request

from dockyard.access.permissions import ROLES_WRITE
from dockyard.access.policy import Policy
from dockyard.access.services.audit import AuditService
from dockyard.access.services.identities import CredentialInfo, IdentityInfo, RoleAssignmentInfo
from dockyard.asgi import read_body, run_sync
from dockyard.db import as_utc
from dockyard.oci.errors import ErrorCode, RegistryError

MAX_JSON = 1024 * 1024


async def record_change(
    audit: AuditService, policy: Policy, request: Request, action: str, detail: dict[str, Any]
) -> None:
    """Audit a successful change made through the management API, with who made it and from where."""
    caller = await policy.caller(request)
    await run_sync(
        audit.record,
        action,
        "success",
        principal=caller.name,
        client_ip=policy.client_ip(request.scope),
        detail=detail,
    )


async def may_take_over(policy: Policy, request: Request, target: str, change: str) -> None:
    """403 unless the caller may change who holds ``target``'s roles: renewing its credentials (which
    lets the caller sign in as it), deleting or disabling it needs what assigning roles needs
    (Owner), unless the caller is ``target``."""
    manager = policy.manager(request)
    if manager.name != target and ROLES_WRITE not in manager.permissions.control:
        raise RegistryError(
            ErrorCode.DENIED,
            f"{change} {target} needs the right to assign roles (Owner): {target} holds roles",
        )


def invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID_REQUEST, message)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (at most 1 MiB)."""
    raw = await read_body(request, MAX_JSON)
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise invalid("the body is not valid JSON") from None
    except RecursionError:
        raise invalid("the body's JSON is nested too deeply") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False) -> Any:
    """``body[name]`` if it has the right type (None when absent and optional)."""
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(f"{name} is required")
        return None
    if isinstance(value, bool) and kind is int:
        raise invalid(f"{name} must be an integer")
    if not isinstance(value, kind):
        raise invalid(f"{name} has the wrong type")
    return value


def query_time(request: Request, name: str = "since") -> datetime | None:
    """An ISO 8601 time from the query string (``Z`` allowed), or None."""
    value = request.query_params.get(name)
    if not value:
        return None
    try:
        # stored times are UTC; a time without an offset is taken as UTC too
        return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except (ValueError, OverflowError):
        raise invalid(f"{name} must be an ISO 8601 time between the years 1 and 9999") from None


def query_int(request: Request, name: str, default: int) -> int:
    """A non-negative integer from the query string."""
    value = request.query_params.get(name)
    if value is None:
        return default
    return whole_number(value, name)


def whole_number(value: str, name: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise invalid(f"{name} must be a non-negative integer below 10^18")
    return int(value)


def iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def credential_json(credential: CredentialInfo) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "name": credential.name,
        "creationTime": iso(credential.created_at),
        "expiry": iso(credential.expires_at),
    }
    if credential.value is not None:
        shown["value"] = credential.value
    return shown


def role_json(assignment: RoleAssignmentInfo) -> dict[str, Any]:
    return {
        "id": assignment.id,
        "assignee": assignment.assignee,
        "role": assignment.role,
        "scope": assignment.scope,
        "createdTime": iso(assignment.created_at),
    }


def identity_json(identity: IdentityInfo) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "name": identity.name,
        "kind": identity.kind,
        "status": "enabled" if identity.enabled else "disabled",
        "description": identity.description,
        "creationTime": iso(identity.created_at),
        "credentials": [credential_json(c) for c in identity.credentials],
    }
    if identity.scope_map is not None:
        shown["scopeMap"] = identity.scope_map
    if identity.kind in ("user", "service_principal"):
        shown["roles"] = [role_json(r) for r in identity.roles]
    return shown


def status_flag(body: dict[str, Any]) -> bool | None:
    """``status``: enabled|disabled → True|False (None if absent)."""
    status = field(body, "status", str)
    if status is None:
        return None
    if status not in ("enabled", "disabled"):
        raise invalid("status must be enabled or disabled")
    return status == "enabled"
