"""Credentials the API tests use."""

from __future__ import annotations

import base64

ADMIN_USERNAME = "dockyard"
ADMIN_PASSWORD = "admin-password-for-tests"


def basic(username: str, password: str) -> dict[str, str]:
    """An HTTP Basic Authorization header."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ADMIN = basic(ADMIN_USERNAME, ADMIN_PASSWORD)
