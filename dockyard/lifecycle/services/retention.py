"""Retention of untagged manifests: deleted N days after they lost their last tag."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.db import Database, per_dialect, utcnow
from dockyard.events.services import Origin
from dockyard.lifecycle.models import retention_due
from dockyard.lifecycle.services.policies import RETENTION, read_policy
from dockyard.oci.errors import RegistryError
from dockyard.registry.models import manifest_children, manifests, repositories, tags
from dockyard.registry.services.manifests import ManifestService

#: How many due manifests one run looks at.
BATCH = 500
#: A due manifest kept for now (in an index, a referrer, locked) is looked at again after this.
RECHECK = timedelta(days=1)
RETENTION_ACTOR = "retention-policy"


def _schedule(insert: Callable[[sa.Table], Any]) -> Any:
    statement = insert(retention_due)
    return statement.on_conflict_do_update(
        index_elements=["manifest_id"],
        set_={"untagged_at": statement.excluded.untagged_at, "due_at": statement.excluded.due_at},
    )


SCHEDULE = per_dialect(_schedule)


class Kept(Exception):
    """Why a due manifest is not deleted (raised inside the delete's transaction to refuse it)."""


def why_kept(conn: Connection, manifest_id: int) -> str | None:
    """Why the manifest must stay (tagged again, in an index, a referrer of a kept manifest).

    Locks need no check here: ``ManifestService.delete`` refuses a locked manifest (DENIED) in the
    same transaction before it calls this precondition.
    """
    row = conn.execute(
        sa.select(manifests.c.repository_id, manifests.c.digest, manifests.c.subject_digest).where(
            manifests.c.id == manifest_id
        )
    ).first()
    if row is None:
        return "gone"
    if conn.execute(sa.select(tags.c.name).where(tags.c.manifest_id == manifest_id).limit(1)).first():
        return "tagged"
    in_index = (
        sa.select(manifest_children.c.manifest_id)
        .select_from(manifest_children.join(manifests, manifests.c.id == manifest_children.c.manifest_id))
        .where(manifests.c.repository_id == row.repository_id, manifest_children.c.child_digest == row.digest)
        .limit(1)
    )
    if conn.execute(in_index).first():
        return "referenced by an index"
    if row.subject_digest is not None:
        subject = conn.execute(
            sa.select(manifests.c.id).where(
                manifests.c.repository_id == row.repository_id, manifests.c.digest == row.subject_digest
            )
        ).first()
        if subject is not None:
            return "a referrer of a kept manifest"
    return None


@dataclass
class RetentionRun:
    """What one run deleted, and what it kept and why."""

    deleted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


class RetentionService:
    """Schedules untagged manifests for deletion and deletes the due ones."""

    def __init__(
        self, db: Database, manifests: ManifestService, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._db = db
        self._manifests = manifests
        self._clock = clock

    def on_tags_dropped(self, conn: Connection, repo_id: int, manifest_ids: Sequence[int]) -> None:
        """A ContentHooks.tags_dropped hook: schedule those left without a tag (now + N days)."""
        policy = read_policy(conn, RETENTION)
        if not policy.enabled:
            return
        tagged = sa.select(tags.c.manifest_id).where(tags.c.manifest_id == manifests.c.id)
        untagged = conn.execute(
            sa.select(manifests.c.id).where(manifests.c.id.in_(list(manifest_ids)), ~tagged.exists())
        ).scalars()
        now = self._clock()
        due = now + timedelta(days=policy.days)
        for manifest_id in untagged:
            conn.execute(
                SCHEDULE[conn.dialect.name], {"manifest_id": manifest_id, "untagged_at": now, "due_at": due}
            )

    def run(self, now: datetime | None = None) -> RetentionRun:
        """Delete due untagged manifests through the normal delete path (the recycle bin catches them)."""
        moment = now or self._clock()
        result = RetentionRun()
        with self._db.read() as conn:
            if not read_policy(conn, RETENTION).enabled:
                return result
            due = conn.execute(
                sa.select(retention_due.c.manifest_id, repositories.c.name, manifests.c.digest)
                .select_from(
                    retention_due.join(manifests, manifests.c.id == retention_due.c.manifest_id).join(
                        repositories, repositories.c.id == manifests.c.repository_id
                    )
                )
                .where(retention_due.c.due_at <= moment)
                .order_by(retention_due.c.due_at)
                .limit(BATCH)
            ).all()
        origin = Origin(actor=RETENTION_ACTOR)
        for row in due:
            try:
                self._manifests.delete(row.name, row.digest, origin, check=_refuse_kept)
                result.deleted.append(f"{row.name}@{row.digest}")
            except (Kept, RegistryError) as exc:
                reason = str(exc)
                result.kept[f"{row.name}@{row.digest}"] = reason
                self._db.run_write(lambda conn, i=row.manifest_id, r=reason: self._keep(conn, i, r, moment))
        return result

    @staticmethod
    def _keep(conn: Connection, manifest_id: int, reason: str, now: datetime) -> None:
        """A re-tag cancels the schedule (ACR's bug #520 did not); other reasons are re-checked later,
        so kept manifests never crowd due ones out of a run's batch."""
        mine = retention_due.c.manifest_id == manifest_id
        if reason == "tagged":
            conn.execute(retention_due.delete().where(mine))
        else:
            conn.execute(retention_due.update().where(mine).values(due_at=now + RECHECK))


def _refuse_kept(conn: Connection, manifest_id: int) -> None:
    reason = why_kept(conn, manifest_id)
    if reason is not None:
        raise Kept(reason)
