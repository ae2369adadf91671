"""The audit log: sign-ins, failures and changes to access."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dockyard.access.models import audit_events
from dockyard.db import Database, as_utc, utcnow

log = logging.getLogger("dockyard.audit")


@dataclass(frozen=True)
class AuditEvent:
    id: int
    time: datetime
    action: str
    outcome: str
    principal: str | None
    client_ip: str | None
    detail: dict[str, Any] | None


class AuditService:
    """Records and lists audit events (also written to the ``dockyard.audit`` log)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self,
        action: str,
        outcome: str,
        *,
        principal: str | None = None,
        client_ip: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        log.info("%s %s principal=%s client=%s %s", action, outcome, principal, client_ip, detail or "")

        def work(conn: sa.Connection) -> None:
            conn.execute(
                audit_events.insert().values(
                    created_at=utcnow(),
                    action=action,
                    outcome=outcome,
                    principal=principal,
                    client_ip=client_ip,
                    detail=detail,
                )
            )

        self._db.run_write(work)

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
