"""The soft-delete and retention policies: registry-wide, stored in ``registry_settings``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.access.models import registry_settings
from dockyard.access.services.settings import UPSERT_SETTING
from dockyard.db import Database, utcnow
from dockyard.oci.errors import ErrorCode, RegistryError

ENABLED, DISABLED = "enabled", "disabled"
UNTAGGED_MANIFESTS = "UntaggedManifests"


@dataclass(frozen=True)
class PolicyKind:
    """One policy: its settings key and the range its days may take."""

    key: str
    label: str
    minimum: int
    maximum: int
    default_days: int = 7


SOFT_DELETE = PolicyKind("soft_delete_policy", "soft-delete", 1, 90)
RETENTION = PolicyKind("retention_policy", "retention", 0, 365)


@dataclass(frozen=True)
class PolicyState:
    """A policy's current value."""

    kind: PolicyKind
    status: str
    days: int
    last_updated: datetime | None = None

    @property
    def enabled(self) -> bool:
        return self.status == ENABLED


def read_policy(conn: Connection, kind: PolicyKind) -> PolicyState:
    """The policy as stored (disabled with the default days when never set), read in ``conn``."""
    row = conn.execute(
        sa.select(registry_settings.c.value, registry_settings.c.updated_at).where(
            registry_settings.c.key == kind.key
        )
    ).first()
    if row is None or not isinstance(row.value, dict):
        return PolicyState(kind, DISABLED, kind.default_days)
    return PolicyState(kind, row.value.get("status", DISABLED), int(row.value.get("days", 7)), row.updated_at)


class PolicyService:
    """Reads and changes the lifecycle policies (never cached: each check reads its transaction)."""

    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    def get(self, kind: PolicyKind) -> PolicyState:
        with self._db.read() as conn:
            return read_policy(conn, kind)

    def update(self, kind: PolicyKind, status: str | None = None, days: int | None = None) -> PolicyState:
        """Change status and/or days; out-of-range values are INVALID_REQUEST."""
        if status is not None and status not in (ENABLED, DISABLED):
            raise RegistryError(ErrorCode.INVALID_REQUEST, "status must be enabled or disabled")
        if days is not None and (
            isinstance(days, bool) or not isinstance(days, int) or not kind.minimum <= days <= kind.maximum
        ):
            raise RegistryError(
                ErrorCode.INVALID_REQUEST,
                f"{kind.label} days must be a whole number from {kind.minimum} to {kind.maximum}",
            )

        def work(conn: Connection) -> PolicyState:
            current = read_policy(conn, kind)
            value = {"status": status or current.status, "days": current.days if days is None else days}
            now = self._clock()
            conn.execute(
                UPSERT_SETTING[conn.dialect.name], {"key": kind.key, "value": value, "updated_at": now}
            )
            return PolicyState(kind, value["status"], value["days"], now)

        return self._db.run_write(work)
