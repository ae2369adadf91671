"""Garbage-collection runs: queued (API) or scheduled, executed by the job runtime, recorded in gc_runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.db import Database, utcnow
from dockyard.events.queue import Job, enqueue
from dockyard.lifecycle.models import gc_runs
from dockyard.lifecycle.services.gc import GarbageCollector, Options

log = logging.getLogger(__name__)

JOB_KIND = "lifecycle.gc"
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
#: Run records older than this are removed by the scheduled run.
KEEP_RUNS_DAYS = 30


@dataclass(frozen=True)
class GcRun:
    """One run as the API shows it."""

    id: int
    status: str
    trigger: str
    dry_run: bool
    untagged: bool
    grace_seconds: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    freed: dict[str, Any] | None
    error: str | None


class GcService:
    """Queues, runs and lists garbage-collection runs."""

    def __init__(self, db: Database, collector: GarbageCollector, *, grace_seconds: int) -> None:
        self._db = db
        self.collector = collector
        self.grace_seconds = grace_seconds

    def request(
        self,
        *,
        grace_seconds: int | None = None,
        dry_run: bool = False,
        untagged: bool = False,
        trigger: str = "api",
    ) -> GcRun:
        """Record a queued run and its job, in one transaction; a run with the same options still
        queued is returned instead (so a flood of requests queues one run, not thousands)."""
        grace = self.grace_seconds if grace_seconds is None else grace_seconds

        def work(conn: Connection) -> int:
            queued = conn.execute(
                sa.select(gc_runs.c.id)
                .where(
                    gc_runs.c.status == QUEUED,
                    gc_runs.c.dry_run == dry_run,
                    gc_runs.c.untagged == untagged,
                    gc_runs.c.grace_seconds == grace,
                )
                .limit(1)
            ).scalar()
            if queued is not None:
                return int(queued)
            run_id = self._insert(conn, grace, dry_run, untagged, trigger)
            enqueue(conn, JOB_KIND, {"run": run_id})
            return run_id

        run_id = self._db.run_write(work)
        found = self.get(run_id)
        assert found is not None
        return found

    def _insert(
        self, conn: Connection, grace: int | None, dry_run: bool, untagged: bool, trigger: str
    ) -> int:
        return conn.execute(
            gc_runs.insert()
            .values(
                status=QUEUED,
                trigger=trigger,
                dry_run=dry_run,
                untagged=untagged,
                grace_seconds=self.grace_seconds if grace is None else grace,
                created_at=utcnow(),
            )
            .returning(gc_runs.c.id)
        ).scalar_one()

    def handle(self, job: Job) -> None:
        """The ``lifecycle.gc`` job handler."""
        self.execute(int(job.payload["run"]))

    def scheduled(self) -> GcRun | None:
        """The schedule's run (default grace, blobs only), executed at once; old run records pruned."""
        kept_since = utcnow() - timedelta(days=KEEP_RUNS_DAYS)

        def work(conn: Connection) -> int:
            conn.execute(gc_runs.delete().where(gc_runs.c.created_at < kept_since))
            return self._insert(conn, None, False, False, "schedule")

        return self.execute(self._db.run_write(work))

    def execute(self, run_id: int) -> GcRun | None:
        """Run a recorded run (once: a run already finished is left alone); failures are recorded."""

        def start(conn: Connection) -> Any:
            row = conn.execute(sa.select(gc_runs).where(gc_runs.c.id == run_id).with_for_update()).first()
            if row is None or row.status in (SUCCEEDED, FAILED):
                return None
            conn.execute(
                gc_runs.update().where(gc_runs.c.id == run_id).values(status=RUNNING, started_at=utcnow())
            )
            return row

        row = self._db.run_write(start)
        if row is None:
            return self.get(run_id)
        options = Options(grace_seconds=row.grace_seconds, dry_run=row.dry_run, untagged=row.untagged)
        values: dict[str, Any]
        try:
            with self._db.exclusive("lifecycle.gc"):
                report = self.collector.collect(options)
        except Exception as exc:
            log.exception("garbage collection run %s failed", run_id)
            values = {"status": FAILED, "error": f"{type(exc).__name__}: {exc}"[:2048]}
        else:
            values = {"status": SUCCEEDED, "freed": report.as_json()}
            if report.failures:
                values["error"] = f"{report.failures} objects could not be deleted; the next run retries"
            log.info("garbage collection run %s: %s", run_id, values["freed"])
        self._db.run_write(
            lambda conn: conn.execute(
                gc_runs.update().where(gc_runs.c.id == run_id).values(finished_at=utcnow(), **values)
            )
        )
        return self.get(run_id)

    def get(self, run_id: int) -> GcRun | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(gc_runs).where(gc_runs.c.id == run_id)).first()
        return None if row is None else _run(row)

    def list(self, limit: int = 20) -> list[GcRun]:
        """The latest runs, newest first."""
        with self._db.read() as conn:
            rows = conn.execute(sa.select(gc_runs).order_by(gc_runs.c.id.desc()).limit(limit)).all()
        return [_run(row) for row in rows]


def _run(row: Any) -> GcRun:
    return GcRun(
        id=row.id,
        status=row.status,
        trigger=row.trigger,
        dry_run=row.dry_run,
        untagged=row.untagged,
        grace_seconds=row.grace_seconds,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        freed=row.freed,
        error=row.error,
    )
