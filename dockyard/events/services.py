"""Record repository events inside the transaction that causes them; read them back; batch pulls.

Push, delete, untag and quarantine events are rows written in the very transaction that
changes the registry, so an event exists exactly when its change does (the outbox
pattern): a failed push leaves none, a process killed right after a push loses none.
Pulls change nothing, so they are buffered in memory and written in batches, off the
request path; a crash may lose the last second of pull records, never a push.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard import prepared
from dockyard.access.throttle import client_bucket
from dockyard.db import Database, as_utc, utcnow
from dockyard.events.models import event_cursors, repository_events

PUSH = "push"
DELETE = "delete"
UNTAG = "untag"
PULL = "pull"
CHART_PUSH = "chart_push"
CHART_DELETE = "chart_delete"
QUARANTINE = "quarantine"
#: A build run ended (the builds room); the run's {id, task, status, trigger} is JSON in artifact_type.
BUILD_SUCCEEDED = "build_succeeded"
BUILD_FAILED = "build_failed"
ACTIONS = (PUSH, DELETE, UNTAG, PULL, CHART_PUSH, CHART_DELETE, QUARANTINE, BUILD_SUCCEEDED, BUILD_FAILED)
#: Actions other rooms subscribe to; pulls and untags are only logged, as in ACR.
DISPATCHED_ACTIONS = (PUSH, DELETE, CHART_PUSH, CHART_DELETE, QUARANTINE, BUILD_SUCCEEDED, BUILD_FAILED)
MAX_PULL_BUFFER = 10_000
#: Rows one client (actor and address, IPv6 by /64) adds to a pull batch; more pulls of the same
#: manifest by it are counted on one row whose user agent says MORE_PULLS.
PULL_ROWS_PER_CLIENT = 100
MORE_PULLS = "(more pulls by this client)"
INSERT_EVENT = repository_events.insert()


#: The bits a version 4 (random) UUID fixes: the version nibble and the RFC 4122 variant.
_UUID4_FIXED = (0xF << 76) | (0x3 << 62)
_UUID4_BITS = (0x4 << 76) | (0x2 << 62)


def new_request_id() -> str:
    """A random (version 4) UUID naming a request, as text. It is no secret, so it comes from
    ``random`` and is formatted by hand: ``str(uuid.uuid4())`` makes a system call and two
    objects on every pull."""
    text = f"{random.getrandbits(128) & ~_UUID4_FIXED | _UUID4_BITS:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(frozen=True)
class Origin:
    """Who asked for a change, and how (ACR's webhook `request` object plus the caller)."""

    request_id: str = field(default_factory=new_request_id)
    host: str | None = None
    method: str | None = None
    user_agent: str | None = None
    actor: str | None = None
    client_ip: str | None = None


@dataclass(frozen=True)
class RepositoryEvent:
    id: int
    uid: str
    time: datetime
    action: str
    repository: str
    tag: str | None
    digest: str | None
    media_type: str | None
    artifact_type: str | None
    size: int | None
    origin: Origin
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "time": self.time}


class EventService:
    """The event log: ``record`` inside a transaction, ``note_pull`` anywhere, ``list`` to read."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pulls: dict[tuple[str | None, ...], dict[str, Any]] = {}
        self._rows_by_client: dict[tuple[str | None, str], int] = {}
        self._pulls_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._subscribers: list[Callable[[Connection, str], bool]] = []
        self._wanted = threading.Event()

    def on_recorded(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from any thread) after an event someone wants was committed here."""
        self._listeners.append(listener)

    def committed(self) -> None:
        """Tell listeners new events are waiting (the caller's transaction has committed).

        Only events a subscriber wants wake them: a registry without webhooks pays nothing.
        """
        if not self._wanted.is_set():
            return
        self._wanted.clear()
        for listener in self._listeners:
            listener()

    def subscribe(self, wants: Callable[[Connection, str], bool]) -> None:
        """Let a consumer say, inside the recording transaction, whether an action should wake it.

        Only the in-process wake-up depends on it: consumers read every event from the log
        whatever they said here (other processes' events reach them by polling anyway).
        """
        self._subscribers.append(wants)

    def record(
        self,
        conn: Connection,
        action: str,
        repository: str,
        *,
        tag: str | None = None,
        digest: str | None = None,
        media_type: str | None = None,
        artifact_type: str | None = None,
        size: int | None = None,
        origin: Origin | None = None,
    ) -> None:
        """Add an event to the log in the caller's transaction."""
        row = _row(action, repository, tag, digest, media_type, artifact_type, size, origin)
        if any(wants(conn, action) for wants in self._subscribers):
            self._wanted.set()
        prepared.execute_later(conn, INSERT_EVENT, row)

    def note_pull(
        self, repository: str, tag: str | None, digest: str, media_type: str, size: int, origin: Origin | None
    ) -> None:
        """Remember a manifest pull; ``flush_pulls`` writes the batch, identical pulls as one counted row."""
        origin = origin or Origin()
        key = (repository, tag, digest, origin.actor, origin.client_ip, origin.user_agent)
        client = (origin.actor, client_bucket(origin.client_ip))
        with self._pulls_lock:
            row = self._pulls.get(key)
            if row is None and self._rows_by_client.get(client, 0) >= PULL_ROWS_PER_CLIENT:
                # One client varying its User-Agent (or address in its /64) adds no more rows.
                origin = replace(origin, client_ip=client[1], user_agent=MORE_PULLS)
                key = (repository, None, digest, origin.actor, origin.client_ip, MORE_PULLS)
                tag, row = None, self._pulls.get(key)
            if row is not None:
                row["count"] += 1
            elif len(self._pulls) < MAX_PULL_BUFFER:
                self._pulls[key] = _row(PULL, repository, tag, digest, media_type, None, size, origin)
                self._rows_by_client[client] = self._rows_by_client.get(client, 0) + 1

    def flush_pulls(self) -> int:
        """Write buffered pull events in one transaction; return how many rows."""
        with self._pulls_lock:
            batch, self._pulls = list(self._pulls.values()), {}
            self._rows_by_client = {}
        if batch:
            self._db.run_write(lambda conn: conn.execute(repository_events.insert(), batch), durable=False)
        return len(batch)

    def prune(self, older_than: datetime, consumers: Sequence[str] = ()) -> int:
        """Forget events that happened before ``older_than`` and that every named consumer has read.

        The newest event is always kept: SQLite hands out max(id) + 1, so an emptied table
        would reuse ids that cursors have already passed.
        """

        def work(conn: Connection) -> int:
            events = repository_events.c
            query = repository_events.delete().where(
                events.created_at < older_than,
                events.id < sa.select(sa.func.max(events.id)).scalar_subquery(),
            )
            cursors = conn.execute(sa.select(event_cursors).where(event_cursors.c.consumer.in_(consumers)))
            for cursor in cursors.all():
                query = query.where(read_by(conn, cursor.last_txid, cursor.last_event_id))
            return conn.execute(query).rowcount

        return self._db.run_write(work, durable=False)

    def list(
        self,
        *,
        repository: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[RepositoryEvent]:
        """The newest ``limit`` events (oldest first, by when they happened), optionally filtered."""
        newest_first = (repository_events.c.created_at.desc(), repository_events.c.id.desc())
        query = sa.select(repository_events).order_by(*newest_first).limit(min(limit, 10_000))
        if repository is not None:
            query = query.where(repository_events.c.repository == repository)
        if action is not None:
            query = query.where(repository_events.c.action == action)
        if since is not None:
            query = query.where(repository_events.c.created_at >= since)
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [event_from_row(row) for row in reversed(rows)]


def _clip(value: str | None, column: str) -> str | None:
    """``value`` cut to its column's length: what a client sends (Host, User-Agent…) never fails a
    change (PostgreSQL refuses an overlong value; one such pull would sink a whole pull batch)."""
    return value[: repository_events.c[column].type.length] or None if value else None


def _row(
    action: str,
    repository: str,
    tag: str | None,
    digest: str | None,
    media_type: str | None,
    artifact_type: str | None,
    size: int | None,
    origin: Origin | None,
) -> dict[str, Any]:
    origin = origin or Origin()
    return {
        "uid": str(uuid.uuid4()),
        "created_at": utcnow(),
        "action": action,
        "repository": repository,
        "tag": tag,
        "digest": digest,
        "media_type": media_type,
        "artifact_type": artifact_type,
        "size": size,
        "count": 1,
        "actor": _clip(origin.actor, "actor"),
        "client_ip": _clip(origin.client_ip, "client_ip"),
        "request_id": _clip(origin.request_id, "request_id"),
        "request_host": _clip(origin.host, "request_host"),
        "request_method": _clip(origin.method, "request_method"),
        "user_agent": _clip(origin.user_agent, "user_agent"),
    }


def read_by(conn: Connection, last_txid: int | None, last_event_id: int) -> sa.ColumnElement[bool]:
    """Events at or before a cursor: by (txid, id) on PostgreSQL, by id on SQLite."""
    if conn.dialect.name == "postgresql":
        return sa.tuple_(repository_events.c.txid, repository_events.c.id) <= sa.tuple_(
            sa.literal(last_txid or 0), sa.literal(last_event_id)
        )
    return repository_events.c.id <= last_event_id


def event_from_row(row: sa.Row) -> RepositoryEvent:
    return RepositoryEvent(
        id=row.id,
        uid=row.uid,
        time=as_utc(row.created_at),
        action=row.action,
        repository=row.repository,
        tag=row.tag,
        digest=row.digest,
        media_type=row.media_type,
        artifact_type=row.artifact_type,
        size=row.size,
        count=row.count,
        origin=Origin(
            request_id=row.request_id or "",
            host=row.request_host,
            method=row.request_method,
            user_agent=row.user_agent,
            actor=row.actor,
            client_ip=row.client_ip,
        ),
    )
