"""The access generation: one value that every change to identities, credentials, roles or scope
maps replaces in the change's own transaction, so every process notices the change at its next
sign-in check and drops what it cached (instead of trusting a cache for a fixed time)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from dockyard.access.models import registry_settings
from dockyard.access.services.settings import UPSERT_SETTING
from dockyard.db import Database, utcnow

T = TypeVar("T")
KEY = "access_generation"


def bump(conn: sa.Connection) -> None:
    """Mark a change to access (inside the change's transaction)."""
    conn.execute(
        UPSERT_SETTING[conn.dialect.name], {"key": KEY, "value": uuid.uuid4().hex, "updated_at": utcnow()}
    )


def current(conn: sa.Connection) -> str | None:
    """The generation now in force (None before the first change)."""
    return conn.execute(sa.select(registry_settings.c.value).where(registry_settings.c.key == KEY)).scalar()


def write_and_bump(db: Database, work: Callable[[sa.Connection], T], on_change: Callable[[], None]) -> T:
    """Run ``work`` in a write transaction that also bumps the generation, then call ``on_change``."""

    def both(conn: sa.Connection) -> T:
        result = work(conn)
        bump(conn)
        return result

    result = db.run_write(both)
    on_change()
    return result
