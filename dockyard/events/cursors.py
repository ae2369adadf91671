"""Event consumers: each reads every event after its own cursor, exactly once per effect.

The handler gets a batch of events and the connection of the transaction that moves the
cursor past them, so its writes and the cursor commit together (or not at all). The cursor
row is locked for the batch (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one writer),
so two processes never consume the same batch.

Out-of-order commits: a PostgreSQL sequence hands out ids when rows are inserted, not when
they commit, so an event with a smaller id can become visible after a larger one. Each event
row carries the id of the transaction that wrote it (``txid``, a server default). A consumer
reads only events whose transaction is older than the oldest transaction still running
(``pg_snapshot_xmin``), in (txid, id) order: every transaction below that horizon has ended,
so nothing can appear behind the cursor later. The price: a long-running writing transaction
anywhere on the server delays consumers (never loses events). On SQLite ids are handed out
under the single write lock, so commit order is id order and the cursor is the id alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard import prepared
from dockyard.db import Database, per_dialect, utcnow
from dockyard.events.models import event_cursors, jobs, repository_events
from dockyard.events.services import RepositoryEvent, event_from_row

#: The job kind an event is kept under when a consumer keeps failing on it.
SET_ASIDE = "events.set-aside"

#: handler(conn, events) → how many things it did (deliveries queued, jobs enqueued…).
ConsumerHandler = Callable[[Connection, list[RepositoryEvent]], int]


@dataclass(frozen=True)
class Consumer:
    """A named reader of the event log (its cursor row is keyed by ``name``)."""

    name: str
    handler: ConsumerHandler
    batch: int = 500
    #: Asked inside each recording transaction whether the action should wake this process's runtime.
    wants: Callable[[Connection, str], bool] | None = None
    #: Called (in the runtime's thread) after a batch whose handler did something committed.
    after_commit: Callable[[], None] | None = None
    #: Asked in the consuming transaction, after the batch is fixed: True when the handler would do
    #: nothing with any event (no webhook, no build task to trigger). The cursor then moves past
    #: the batch without its rows being read.
    idle: Callable[[Connection], bool] | None = None


def _horizon() -> sa.ColumnElement[int]:
    """The oldest transaction id still running on the PostgreSQL server (as a bigint)."""
    xmin = sa.func.pg_snapshot_xmin(sa.func.pg_current_snapshot())
    return sa.cast(sa.cast(xmin, sa.Text), sa.BigInteger)


def _after(dialect: str) -> sa.Select:
    """Events after a cursor (``last_txid``, ``last_event_id``), oldest first, at most ``limit``."""
    events = repository_events.c
    if dialect == "postgresql":
        query = (
            sa.select(repository_events)
            .where(
                sa.tuple_(events.txid, events.id)
                > sa.tuple_(
                    sa.bindparam("last_txid", type_=sa.BigInteger),
                    sa.bindparam("last_event_id", type_=sa.BigInteger),
                ),
                events.txid < _horizon(),
            )
            .order_by(events.txid, events.id)
        )
    else:
        after = events.id > sa.bindparam("last_event_id")
        query = sa.select(repository_events).where(after).order_by(events.id)
    return query.limit(sa.bindparam("limit", type_=sa.Integer))


def _batch_end(dialect: str) -> sa.Select:
    """The last event of the batch ``_after`` would read, and how many events the batch holds."""
    events = repository_events.c
    batch = _after(dialect).with_only_columns(events.txid, events.id).subquery()
    return (
        sa.select(batch.c.txid, batch.c.id, sa.func.count().over().label("events"))
        .order_by(batch.c.txid.desc(), batch.c.id.desc())
        .limit(1)
    )


#: The consumer paths' statements, built once (``dockyard.prepared`` runs them).
_AFTER = {name: _after(name) for name in ("sqlite", "postgresql")}
_BATCH_END = {name: _batch_end(name) for name in ("sqlite", "postgresql")}
_NEXT_ID = {name: _after(name).with_only_columns(repository_events.c.id) for name in ("sqlite", "postgresql")}
_CURSOR = sa.select(event_cursors).where(event_cursors.c.consumer == sa.bindparam("name"))
_LOCK_CURSOR = {
    "sqlite": _CURSOR,
    "postgresql": _CURSOR.with_for_update(skip_locked=True),
}
_NEW_CURSOR = per_dialect(lambda insert: insert(event_cursors).on_conflict_do_nothing())
_ADVANCE = (
    event_cursors.update()
    .where(event_cursors.c.consumer == sa.bindparam("name"))
    .values(
        last_event_id=sa.bindparam("last_event_id"),
        last_txid=sa.bindparam("last_txid"),
        updated_at=sa.bindparam("now"),
    )
)


def _position(cursor: Any, limit: int) -> dict[str, Any]:
    return {"last_txid": cursor.last_txid or 0, "last_event_id": cursor.last_event_id, "limit": limit}


def _events_after(conn: Connection, cursor: Any, limit: int) -> list[Any]:
    return prepared.rows(conn, _AFTER[conn.dialect.name], _position(cursor, limit))


def ensure_cursor(conn: Connection, name: str) -> None:
    """Create ``name``'s cursor at the start of the log unless it exists."""
    if prepared.first(conn, _CURSOR, {"name": name}) is not None:
        return
    prepared.execute(
        conn,
        _NEW_CURSOR[conn.dialect.name],
        {"consumer": name, "last_event_id": 0, "last_txid": None, "updated_at": utcnow()},
    )


def pending(db: Database, name: str) -> bool:
    """Whether ``name`` has events to read (a cheap read, so an idle poll takes no write lock)."""

    def look(conn: Connection) -> bool:
        cursor = prepared.first(conn, _CURSOR, {"name": name})
        if cursor is None:
            return True  # the first consume creates it
        return prepared.first(conn, _NEXT_ID[conn.dialect.name], _position(cursor, 1)) is not None

    return db.run_lookup(look)


def _locked_cursor(conn: Connection, name: str) -> Any:
    """``name``'s cursor, its row locked; None if another process has it."""
    ensure_cursor(conn, name)
    return prepared.first(conn, _LOCK_CURSOR[conn.dialect.name], {"name": name})


def _locked_batch(conn: Connection, name: str, limit: int) -> list[Any] | None:
    """The next ``limit`` events after ``name``'s cursor, its row locked; None if another process has it."""
    cursor = _locked_cursor(conn, name)
    if cursor is None:
        return None
    return _events_after(conn, cursor, limit)


def _advance(conn: Connection, name: str, last: Any) -> None:
    prepared.execute(
        conn, _ADVANCE, {"name": name, "last_event_id": last.id, "last_txid": last.txid, "now": utcnow()}
    )


def consume(db: Database, consumer: Consumer, limit: int | None = None) -> tuple[int, int]:
    """Hand the next batch (at most ``limit`` events) to ``consumer`` and move its cursor;
    return (events read, handler's count)."""
    if not pending(db, consumer.name):
        return 0, 0

    size = limit or consumer.batch

    def work(conn: Connection) -> tuple[int, int]:
        cursor = _locked_cursor(conn, consumer.name)
        if cursor is None:
            return 0, 0  # another process is consuming this batch
        if consumer.idle is not None:
            end = prepared.first(conn, _BATCH_END[conn.dialect.name], _position(cursor, size))
            if end is None:
                return 0, 0
            # Asked after the batch was fixed: a webhook or task made before any of its events is seen.
            if consumer.idle(conn):
                _advance(conn, consumer.name, end)
                return end.events, 0
        rows = _events_after(conn, cursor, size)
        if not rows:
            return 0, 0
        done = consumer.handler(conn, [event_from_row(row) for row in rows])
        _advance(conn, consumer.name, rows[-1])
        return len(rows), done

    # Not durable: lost to a power cut, the batch is read again (its effects were lost with it).
    read, done = db.run_write(work, durable=False)
    if done and consumer.after_commit is not None:
        consumer.after_commit()
    return read, done


def set_aside(db: Database, consumer: Consumer, error: str) -> int | None:
    """Move ``consumer``'s cursor past its next event, which its handler keeps failing on, and
    keep that event as a dead ``SET_ASIDE`` job (``dockyard job retry`` hands it over again).

    Returns the event's id, or None if there was none to set aside (another process has it).
    """

    def work(conn: Connection) -> int | None:
        rows = _locked_batch(conn, consumer.name, 1)
        if not rows:
            return None
        event = rows[0]
        now = utcnow()
        conn.execute(
            jobs.insert().values(
                kind=SET_ASIDE,
                payload=json.dumps({"consumer": consumer.name, "event": event.id}),
                status="dead",
                attempts=1,
                max_attempts=1,
                run_at=now,
                last_error=error[:2000],
                created_at=now,
                updated_at=now,
            )
        )
        _advance(conn, consumer.name, event)
        return int(event.id)

    return db.run_write(work)


def replay(db: Database, consumer: Consumer, event_id: int) -> int:
    """Hand one set-aside event to ``consumer`` again (its handler's writes commit with nothing else)."""

    def work(conn: Connection) -> int:
        row = conn.execute(sa.select(repository_events).where(repository_events.c.id == event_id)).first()
        if row is None:
            raise LookupError(f"event {event_id} is no longer in the event log")
        return consumer.handler(conn, [event_from_row(row)])

    return db.run_write(work)
