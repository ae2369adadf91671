"""Credentials the API tests use."""

from __future__ import annotations

import base64
from typing import Any

ADMIN_USERNAME = "dockyard"
ADMIN_PASSWORD = "admin-password-for-tests"


def basic(username: str, password: str) -> dict[str, str]:
    """An HTTP Basic Authorization header."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ADMIN = basic(ADMIN_USERNAME, ADMIN_PASSWORD)


def bearer(token: str) -> dict[str, str]:
    """An HTTP Bearer Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def access_token(client: Any, headers: dict[str, str], scope: str | None = None) -> str:
    """An access token from GET /oauth2/token (no scope: an identity token)."""
    params = {"service": "dockyard", **({"scope": scope} if scope else {})}
    response = client.get("/oauth2/token", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def assign_role(client: Any, assignee: str, role: str, scope: str | None = None) -> dict[str, Any]:
    """Assign ``role`` to ``assignee`` (registry-wide, or on ``scope``: ``repository:team/*``);
    the assignment as the API returned it (its ``id`` deletes it)."""
    body = {"assignee": assignee, "role": role} | ({"scope": scope} if scope else {})
    assigned = client.post("/api/v1/role-assignments", json=body)
    assert assigned.status_code == 201, assigned.text
    return assigned.json()


def create_user(client: Any, name: str, role: str | None = None) -> dict[str, str]:
    """Create a user (with a registry-wide role) through the management API; its Basic header."""
    created = client.post("/api/v1/users", json={"name": name})
    assert created.status_code == 201, created.text
    if role:
        assign_role(client, name, role)
    return basic(name, created.json()["credentials"][0]["value"])
