"""The audit log: sign-ins, failures and changes to access.

Changes are recorded one row each. Sign-in failures and token grants, which any client can
cause as fast as it likes, are counted in memory instead and written by ``flush`` as one row
per (action, outcome, client, principal) and window, with the count; at most
``MAX_GROUPS_PER_WINDOW`` groups a window, the rest in one overflow row. A failed audit write
is logged and never fails the request that caused it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dockyard.access.models import audit_events
from dockyard.access.throttle import client_bucket
from dockyard.db import Database, as_utc, utcnow

log = logging.getLogger("dockyard.audit")

MAX_GROUPS_PER_WINDOW = 1000
SAMPLES = 5
OVERFLOW = "(other clients)"


@dataclass(frozen=True)
class AuditEvent:
    id: int
    time: datetime
    action: str
    outcome: str
    principal: str | None
    client_ip: str | None
    detail: dict[str, Any] | None


@dataclass
class _Group:
    first: datetime
    last: datetime
    count: int = 0
    samples: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


class AuditService:
    """Records and lists audit events (also written to the ``dockyard.audit`` log)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, str, str | None, str | None], _Group] = {}

    def record(
        self,
        action: str,
        outcome: str,
        *,
        principal: str | None = None,
        client_ip: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> bool:
        """Write one audit row now; False (and a log line) if the database refused it."""
        log.info("%s %s principal=%s client=%s %s", action, outcome, principal, client_ip, detail or "")
        row = {
            "created_at": utcnow(),
            "action": action,
            "outcome": outcome,
            "principal": principal,
            "client_ip": client_ip,
            "detail": detail,
        }
        return self._insert([row], durable=True)

    def count(
        self,
        action: str,
        outcome: str,
        *,
        client_ip: str | None,
        principal: str | None = None,
        name: str | None = None,
        sample: str | None = None,
    ) -> None:
        """Count one event for the next ``flush`` (no database work now).

        ``principal`` is part of the group (a verified identity), and so is the client: its address,
        or its /64 for IPv6 (as the sign-in throttle counts it; one host holds 2^64 addresses).
        ``name`` (a claimed, unverified user name) and ``sample`` (a reason) are kept as up to five
        examples per group.
        """
        now = utcnow()
        key = (action, outcome, client_bucket(client_ip) if client_ip else None, principal)
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                if len(self._groups) >= MAX_GROUPS_PER_WINDOW:
                    key = (action, outcome, OVERFLOW, None)
                    group = self._groups.get(key)
                if group is None:
                    group = self._groups[key] = _Group(now, now)
            group.count += 1
            group.last = now
            if sample and len(group.samples) < SAMPLES and sample[:200] not in group.samples:
                group.samples.append(sample[:200])
            if name and len(group.names) < SAMPLES and name[:128] not in group.names:
                group.names.append(name[:128])

    def flush(self) -> int:
        """Write what ``count`` gathered, one row per group; the number of rows written."""
        with self._lock:
            groups, self._groups = self._groups, {}
        if not groups:
            return 0
        rows = []
        for (action, outcome, client_ip, principal), group in groups.items():
            detail: dict[str, Any] = {
                "count": group.count,
                "first": group.first.isoformat(),
                "last": group.last.isoformat(),
            }
            if group.names:
                detail["names"] = group.names
            if group.samples:
                detail["reasons"] = group.samples
            rows.append(
                {
                    "created_at": group.last,
                    "action": action,
                    "outcome": outcome,
                    "principal": principal,
                    "client_ip": client_ip,
                    "detail": detail,
                }
            )
            log.info("%s %s x%d principal=%s client=%s", action, outcome, group.count, principal, client_ip)
        return len(rows) if self._insert(rows, durable=False) else 0

    def _insert(self, rows: list[dict[str, Any]], *, durable: bool) -> bool:
        try:
            self._db.run_write(lambda conn: conn.execute(audit_events.insert(), rows), durable=durable)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            log.warning("could not write %d audit record(s): %s", len(rows), str(exc).splitlines()[0])
            return False
        return True

    def prune(self, before: datetime) -> int:
        """Delete audit records older than ``before``; how many were deleted."""
        old = audit_events.delete().where(audit_events.c.created_at < before)
        return self._db.run_write(lambda conn: conn.execute(old).rowcount)

    def list(
        self, *, since: datetime | None = None, action: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """The newest ``limit`` events (oldest first), optionally since a time or of one action."""
        query = sa.select(audit_events).order_by(audit_events.c.id.desc()).limit(min(limit, 10_000))
        if since is not None:
            query = query.where(audit_events.c.created_at >= since)
        if action is not None:
            query = query.where(audit_events.c.action == action)
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [
            AuditEvent(r.id, as_utc(r.created_at), r.action, r.outcome, r.principal, r.client_ip, r.detail)
            for r in reversed(rows)
        ]
