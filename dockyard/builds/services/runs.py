"""Runs: queued (a row and a ``builds.run`` job in one transaction), listed, canceled, finished; logs read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard import __version__
from dockyard.builds.models import build_run_logs, build_runs, build_tasks
from dockyard.builds.services.common import (
    JOB_KIND,
    RunRecord,
    conflict,
    invalid,
    not_found,
    run_id_of,
)
from dockyard.builds.spec import CANCELED, FINAL_STATUSES, QUEUED, RUN_STATUSES, SUCCEEDED
from dockyard.db import Database, as_utc, utcnow
from dockyard.events.queue import enqueue
from dockyard.events.services import BUILD_FAILED, BUILD_SUCCEEDED, EventService, Origin

#: A log answer carries at most this many bytes; the client asks again from ``X-Log-Offset``.
MAX_LOG_READ = 4 * 1024 * 1024


@dataclass(frozen=True)
class LogPiece:
    """Bytes of a run's log from an offset, the offset after them, and the run's status then."""

    data: bytes
    offset: int
    status: str

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def queue_run(
    conn: Connection,
    *,
    type: str,
    trigger: str,
    request: Mapping[str, Any],
    platform: str,
    task: Any = None,
    detail: Mapping[str, Any] | None = None,
    secrets: Mapping[str, Any] | None = None,
    requested_by: str | None = None,
    run_at: datetime | None = None,
) -> int:
    """Insert a Queued run and its ``builds.run`` job in the caller's transaction; its seq."""
    now = utcnow()
    seq = conn.execute(
        build_runs.insert()
        .values(
            task_id=task.id if task is not None else None,
            task_name=task.name if task is not None else None,
            type=type,
            status=QUEUED,
            trigger=trigger,
            trigger_detail=dict(detail or {}),
            request=dict(request),
            secrets=json.dumps(dict(secrets)) if secrets else None,
            platform=platform,
            outputs=[],
            base_images=[],
            steps=[],
            requested_by=requested_by,
            created_at=now,
            cancel_requested=False,
            log_size=0,
        )
        .returning(build_runs.c.seq)
    ).scalar_one()
    conn.execute(build_runs.update().where(build_runs.c.seq == seq).values(run_id=run_id_of(seq)))
    enqueue(conn, JOB_KIND, {"run": seq}, max_attempts=1, run_at=run_at, now=now)
    return int(seq)


def run_record(row: Any) -> RunRecord:
    return RunRecord(
        seq=row.seq,
        run_id=row.run_id,
        task=row.task_name,
        type=row.type,
        status=row.status,
        trigger=row.trigger,
        trigger_detail=dict(row.trigger_detail or {}),
        created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at) if row.started_at else None,
        finished_at=as_utc(row.finished_at) if row.finished_at else None,
        platform=row.platform,
        outputs=list(row.outputs or []),
        base_images=list(row.base_images or []),
        steps=list(row.steps or []),
        error=row.error,
        log_size=row.log_size,
    )


def _parse_run_id(run_id: str) -> int | None:
    if not run_id.startswith("dy") or not 2 < len(run_id) <= 15:
        return None
    try:
        return int(run_id[2:], 36)
    except ValueError:
        return None


class RunService:
    """Reads, cancels and finishes runs; ``finish`` records the outcome and the build event together."""

    def __init__(self, db: Database, events: EventService) -> None:
        self._db = db
        self._events = events

    def get(self, run_id: str) -> RunRecord:
        seq = _parse_run_id(run_id)
        with self._db.read() as conn:
            row = (
                None
                if seq is None
                else conn.execute(sa.select(build_runs).where(build_runs.c.seq == seq)).first()
            )
        if row is None:
            raise not_found(f"run {run_id[:40]!r}")
        return run_record(row)

    def get_seq(self, seq: int) -> RunRecord:
        with self._db.read() as conn:
            row = conn.execute(sa.select(build_runs).where(build_runs.c.seq == seq)).first()
        if row is None:
            raise not_found(f"run {seq}")
        return run_record(row)

    def list(
        self, *, task: str | None = None, status: str | None = None, limit: int = 100, last: str | None = None
    ) -> tuple[list[RunRecord], bool]:
        """Runs newest first, at most ``limit`` after the run id ``last``, and whether more follow."""
        if status is not None and status not in RUN_STATUSES:
            raise invalid(f"unknown status {status[:40]!r}; use one of {', '.join(RUN_STATUSES)}")
        query = sa.select(build_runs).order_by(build_runs.c.seq.desc()).limit(limit + 1)
        if task is not None:
            query = query.where(build_runs.c.task_name == task)
        if status is not None:
            query = query.where(build_runs.c.status == status)
        if last:
            after = _parse_run_id(last)
            if after is None:
                raise invalid(f"invalid run id {last[:40]!r} in last")
            query = query.where(build_runs.c.seq < after)
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [run_record(row) for row in rows[:limit]], len(rows) > limit

    def cancel(self, run_id: str) -> RunRecord:
        """A queued run ends Canceled at once; a running one is asked to stop (its worker kills it)."""
        record = self.get(run_id)

        def work(conn: Connection) -> None:
            row = conn.execute(
                sa.select(build_runs).where(build_runs.c.seq == record.seq).with_for_update()
            ).first()
            if row.status in FINAL_STATUSES:
                raise conflict(f"run {run_id} already ended ({row.status})")
            if row.status == QUEUED:
                self.finish(conn, row, CANCELED, "canceled before it started")
            else:
                conn.execute(
                    build_runs.update().where(build_runs.c.seq == row.seq).values(cancel_requested=True)
                )

        self._db.run_write(work)
        self._events.committed()
        return self.get_seq(record.seq)

    def finish(
        self,
        conn: Connection,
        row: Any,
        status: str,
        error: str | None,
        *,
        outputs: list[dict[str, Any]] | None = None,
        base_images: list[dict[str, Any]] | None = None,
        steps: list[dict[str, Any]] | None = None,
    ) -> None:
        """End a run (in the caller's transaction): its status, what it made, secrets forgotten, the event."""
        values: dict[str, Any] = {
            "status": status,
            "error": error[:2048] if error else None,
            "finished_at": utcnow(),
            "secrets": None,
            "cancel_requested": False,
        }
        if outputs is not None:
            values["outputs"] = outputs
        if base_images is not None:
            values["base_images"] = base_images
        if steps is not None:
            values["steps"] = steps
        conn.execute(build_runs.update().where(build_runs.c.seq == row.seq).values(**values))
        first = (outputs or [None])[0]
        run = {"id": row.run_id, "task": row.task_name, "status": status, "trigger": row.trigger}
        self._events.record(
            conn,
            BUILD_SUCCEEDED if status == SUCCEEDED else BUILD_FAILED,
            first["repository"] if first else f"_tasks/{row.task_name or row.run_id}",
            tag=first.get("tag") if first else None,
            digest=first.get("digest") if first else None,
            # the webhook payload's `run` object travels in this column (see webhooks/payloads.py)
            artifact_type=json.dumps(run, separators=(",", ":")),
            origin=Origin(
                request_id=row.run_id,
                method="RUN",
                user_agent=f"dockyard-builds/{__version__}",
                actor=row.requested_by,
            ),
        )

    def read_log(self, run_id: str, offset: int = 0, limit: int = MAX_LOG_READ) -> LogPiece:
        """The log from byte ``offset`` (at most ``limit`` bytes), as stored so far."""
        if offset < 0:
            raise invalid("offset must be 0 or more")
        record = self.get(run_id)
        with self._db.read() as conn:
            status, size = conn.execute(
                sa.select(build_runs.c.status, build_runs.c.log_size).where(build_runs.c.seq == record.seq)
            ).one()
            if offset >= size:
                return LogPiece(b"", offset, status)
            first = conn.execute(
                sa.select(sa.func.max(build_run_logs.c.chunk)).where(
                    build_run_logs.c.run_seq == record.seq, build_run_logs.c.offset <= offset
                )
            ).scalar()
            rows = conn.execute(
                sa.select(build_run_logs.c.offset, build_run_logs.c.text)
                .where(build_run_logs.c.run_seq == record.seq, build_run_logs.c.chunk >= (first or 0))
                .order_by(build_run_logs.c.chunk)
            ).all()
        pieces: list[bytes] = []
        taken = 0
        for row in rows:
            data = row.text.encode()
            start = max(0, offset - row.offset)
            if start >= len(data):
                continue
            piece = data[start : start + limit - taken]
            pieces.append(piece)
            taken += len(piece)
            if taken >= limit:
                break
        return LogPiece(b"".join(pieces), offset + taken, status)

    def cancel_queued_of_task(self, conn: Connection, task_id: int) -> None:
        """Cancel a task's queued runs (the task is being deleted)."""
        rows = conn.execute(
            sa.select(build_runs).where(build_runs.c.task_id == task_id, build_runs.c.status == QUEUED)
        ).all()
        for row in rows:
            self.finish(conn, row, CANCELED, "the task was deleted")
        conn.execute(
            build_runs.update()
            .where(build_runs.c.task_id == task_id, build_runs.c.status.not_in(FINAL_STATUSES))
            .values(cancel_requested=True)
        )

    def task_row(self, conn: Connection, name: str) -> Any:
        return conn.execute(sa.select(build_tasks).where(build_tasks.c.name == name)).first()
