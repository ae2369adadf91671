"""The job queue: enqueue inside the caller's transaction; claim with leases; retry, dead-letter, inspect.

A job is queued → running (leased to one process until ``lease_until``) → succeeded, or back to
queued after a failure (exponential backoff with jitter), or dead once it has failed
``max_attempts`` times (its last error kept; ``retry`` queues it again). A lease that expires
(the process died) makes the job claimable again, and counts as an attempt.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from dockyard.db import Database, as_utc, utcnow
from dockyard.events.models import jobs

QUEUED, RUNNING, SUCCEEDED, DEAD = "queued", "running", "succeeded", "dead"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, DEAD)
MAX_ATTEMPTS = 5
MAX_ERROR = 2048

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Job:
    """One job as a handler and an operator see it."""

    id: int
    kind: str
    payload: dict[str, Any]
    status: str
    attempts: int
    max_attempts: int
    run_at: datetime
    last_error: str | None
    created_at: datetime


@dataclass(frozen=True)
class JobStats:
    """Queue depth by status, and how long the oldest due queued job has waited (None: none waits)."""

    depth: dict[str, int]
    oldest_due_age_seconds: float | None

    @property
    def queue_depth(self) -> int:
        """Jobs queued (due or not)."""
        return self.depth.get("queued", 0)


def enqueue(
    conn: Connection,
    kind: str,
    payload: dict[str, Any],
    *,
    run_at: datetime | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    now: datetime | None = None,
) -> int:
    """Add a job in the caller's transaction, so it exists exactly when the caller's change commits.

    With ``dedupe_key``, a job already queued under that key is kept and its id returned.
    """
    now = now or utcnow()
    values = {
        "kind": kind,
        "payload": json.dumps(payload, separators=(",", ":")),
        "status": QUEUED,
        "attempts": 0,
        "max_attempts": max_attempts,
        "run_at": run_at or now,
        "dedupe_key": dedupe_key,
        "created_at": now,
        "updated_at": now,
    }
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(jobs).values(values)
    if dedupe_key is not None:
        insert = insert.on_conflict_do_nothing(index_elements=[jobs.c.dedupe_key])
    job_id = conn.execute(insert.returning(jobs.c.id)).scalar()
    if job_id is None:
        job_id = conn.execute(sa.select(jobs.c.id).where(jobs.c.dedupe_key == dedupe_key)).scalar_one()
    return int(job_id)


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        sa.and_(jobs.c.status == QUEUED, jobs.c.run_at <= now),
        sa.and_(jobs.c.status == RUNNING, jobs.c.lease_until < now),
    )


class JobService:
    """Claims and settles jobs for the runtime; lists, retries and counts them for operators."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock = utcnow,
        backoff_base_seconds: float = 5.0,
        backoff_max_seconds: float = 3600.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._db = db
        self._clock = clock
        self._base = backoff_base_seconds
        self._max = backoff_max_seconds
        self._jitter = jitter

    def enqueue(self, kind: str, payload: dict[str, Any], **options: Any) -> int:
        """``enqueue`` in a transaction of its own (for callers with no change to commit with it)."""
        return self._db.run_write(lambda conn: enqueue(conn, kind, payload, now=self._clock(), **options))

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number ``attempts``: base · 2^(attempts-1), capped, times 0.5 to 1.5."""
        return min(self._base * 2 ** (attempts - 1), self._max) * (0.5 + self._jitter())

    def claim(self, kinds: list[str], owner: str, slots: int, lease_seconds: dict[str, float]) -> list[Job]:
        """Lease up to ``slots`` due jobs of these kinds to ``owner``; expired leases are taken over.

        A job whose lease expired after its last allowed attempt is dead-lettered instead.
        """
        if slots <= 0 or not kinds:
            return []
        now = self._clock()
        due = sa.select(jobs.c.id).where(jobs.c.kind.in_(kinds), _claimable(now)).limit(1)
        if not self._db.run_lookup(lambda conn: conn.execute(due).first()):
            return []  # nothing due: no write transaction

        def work(conn: Connection) -> list[Job]:
            query = (
                sa.select(jobs)
                .where(jobs.c.kind.in_(kinds), _claimable(now))
                .order_by(jobs.c.run_at, jobs.c.id)
                .limit(slots)
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            claimed = []
            for row in conn.execute(query).all():
                if row.status == RUNNING and row.attempts >= row.max_attempts:
                    conn.execute(
                        jobs.update()
                        .where(jobs.c.id == row.id)
                        .values(
                            status=DEAD,
                            lease_owner=None,
                            lease_until=None,
                            last_error="its worker stopped before finishing (lease expired)",
                            updated_at=now,
                        )
                    )
                    continue
                lease = timedelta(seconds=lease_seconds[row.kind])
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == row.id)
                    .values(
                        status=RUNNING,
                        attempts=row.attempts + 1,
                        lease_owner=owner,
                        lease_until=now + lease,
                        dedupe_key=None,  # a new job with the same key may queue while this one runs
                        updated_at=now,
                    )
                )
                claimed.append(_job(row, status=RUNNING, attempts=row.attempts + 1))
            return claimed

        return self._db.run_write(work, durable=False)

    def succeed(self, job: Job, owner: str) -> bool:
        """Mark a job done; False if its lease had passed to another owner meanwhile."""
        now = self._clock()
        return self._settle(job, owner, status=SUCCEEDED, last_error=None, run_at=now, now=now)

    def fail(self, job: Job, owner: str, error: str) -> str:
        """Record a failed attempt: queued again after a backoff, or dead after the last attempt."""
        now = self._clock()
        if job.attempts >= job.max_attempts:
            status, run_at = DEAD, now
        else:
            status, run_at = QUEUED, now + timedelta(seconds=self.backoff(job.attempts))
        self._settle(job, owner, status=status, last_error=error[:MAX_ERROR], run_at=run_at, now=now)
        return status

    def _settle(
        self, job: Job, owner: str, *, status: str, last_error: str | None, run_at: datetime, now: datetime
    ) -> bool:
        def work(conn: Connection) -> bool:
            return bool(
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job.id, jobs.c.status == RUNNING, jobs.c.lease_owner == owner)
                    .values(
                        status=status,
                        run_at=run_at,
                        lease_owner=None,
                        lease_until=None,
                        last_error=last_error,
                        updated_at=now,
                    )
                ).rowcount
            )

        return self._db.run_write(work, durable=False)

    # -- for operators and metrics ---------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return _job(row) if row is not None else None

    def list(self, *, status: str | None = None, kind: str | None = None, limit: int = 100) -> list[Job]:
        """The newest ``limit`` jobs, newest first, optionally of one status or kind."""
        query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(min(limit, 10_000))
        if status is not None:
            query = query.where(jobs.c.status == status)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        with self._db.read() as conn:
            return [_job(row) for row in conn.execute(query).all()]

    def retry(self, job_id: int) -> bool:
        """Queue a dead (or succeeded) job again now, with a fresh set of attempts."""
        now = self._clock()

        def work(conn: Connection) -> bool:
            return bool(
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.status.in_([DEAD, SUCCEEDED]))
                    .values(status=QUEUED, attempts=0, run_at=now, updated_at=now)
                ).rowcount
            )

        return self._db.run_write(work)

    def stats(self) -> JobStats:
        """Depth by status and the age of the oldest queued job that is due (for metrics)."""
        now = self._clock()
        with self._db.read() as conn:
            counts = dict(
                conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all()
            )
            oldest = conn.execute(
                sa.select(sa.func.min(jobs.c.run_at)).where(jobs.c.status == QUEUED, jobs.c.run_at <= now)
            ).scalar()
        age = (now - as_utc(oldest)).total_seconds() if oldest is not None else None
        return JobStats({status: int(counts.get(status, 0)) for status in STATUSES}, age)

    def prune(self, older_than: datetime) -> int:
        """Forget succeeded jobs last touched before ``older_than`` (dead ones stay until retried)."""

        def work(conn: Connection) -> int:
            return conn.execute(
                jobs.delete().where(jobs.c.status == SUCCEEDED, jobs.c.updated_at < older_than)
            ).rowcount

        return self._db.run_write(work, durable=False)


def _job(row: sa.Row, **changes: Any) -> Job:
    values = {
        "id": row.id,
        "kind": row.kind,
        "payload": json.loads(row.payload),
        "status": row.status,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "run_at": as_utc(row.run_at),
        "last_error": row.last_error,
        "created_at": as_utc(row.created_at),
    }
    values.update(changes)
    return Job(**values)
