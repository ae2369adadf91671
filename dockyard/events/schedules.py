"""Periodic schedules that run once per registry, however many processes are up.

Each schedule is a row; a process runs it only after moving ``next_run_at`` forward with a
conditional update (``… WHERE next_run_at <= now``), which exactly one process wins. A run
that fails is recorded (``last_status``/``last_error``) and waits for the next interval; a
process that dies mid-run loses that run, not the schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from dockyard.db import Database
from dockyard.events.models import schedules

MAX_ERROR = 2048


@dataclass(frozen=True)
class Schedule:
    """Run ``run`` every ``every_seconds`` somewhere in the registry."""

    name: str
    every_seconds: float
    run: Callable[[], object]


def ensure(db: Database, wanted: list[Schedule], now: datetime) -> None:
    """Create missing schedule rows (first run due now) and keep intervals as the code says."""
    if not wanted:
        return

    def work(conn: Connection) -> None:
        insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(schedules)
        for schedule in wanted:
            conn.execute(
                insert.values(
                    name=schedule.name, interval_seconds=schedule.every_seconds, next_run_at=now
                ).on_conflict_do_update(
                    index_elements=[schedules.c.name], set_={"interval_seconds": schedule.every_seconds}
                )
            )

    db.run_write(work, durable=False)


def due(db: Database, now: datetime) -> list[str]:
    """Names of the schedules whose next run is due (a cheap read)."""
    query = (
        sa.select(schedules.c.name).where(schedules.c.next_run_at <= now).order_by(schedules.c.next_run_at)
    )
    return db.run_lookup(lambda conn: list(conn.execute(query).scalars()))


def claim(db: Database, schedule: Schedule, now: datetime) -> bool:
    """Take this run of ``schedule`` if it is due and no other process took it first."""
    upcoming = now + timedelta(seconds=schedule.every_seconds)

    def work(conn: Connection) -> bool:
        return bool(
            conn.execute(
                schedules.update()
                .where(schedules.c.name == schedule.name, schedules.c.next_run_at <= now)
                .values(next_run_at=upcoming, last_run_at=now, last_status="running")
            ).rowcount
        )

    return db.run_write(work, durable=False)


def record(db: Database, name: str, error: str | None) -> None:
    """Keep how the last run ended."""
    values = {
        "last_status": "failed" if error else "succeeded",
        "last_error": (error or None) and error[:MAX_ERROR],
    }
    db.run_write(
        lambda conn: conn.execute(schedules.update().where(schedules.c.name == name).values(values)),
        durable=False,
    )
