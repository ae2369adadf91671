"""Database engine, the shared MetaData, and transaction helpers for SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import select
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from dockyard import prepared
from dockyard.sqlite_sync import GroupSync, WriteLock, checkpoint_passively

__all__ = ["Database", "GroupSync", "InlineAttempt", "WouldBlock", "WriterBusy", "metadata"]

log = logging.getLogger(__name__)

T = TypeVar("T")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: The schema every room's models.py adds its tables to; Alembic migrates it.
metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

#: Column types every room uses: 64-bit ids (SQLite's rowid alias must be INTEGER) and UTC times.
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)

#: PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock.
RETRYABLE_SQLSTATES = {"40001", "40P01"}
WRITE_RETRIES = 8

#: What a pipelined write transaction sends first and, when it is not durable, second.
_BEGIN = b"BEGIN ISOLATION LEVEL READ COMMITTED"
_NOT_DURABLE = b"SET LOCAL synchronous_commit TO OFF"


def per_dialect(build: Callable[[Callable[[sa.Table], Any]], T]) -> dict[str, T]:
    """Build a statement that needs a dialect's insert (``on_conflict_*``) once for each engine."""
    return {"sqlite": build(sqlite.insert), "postgresql": build(postgresql.insert)}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were stored as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _is_retryable(exc: sa.exc.DBAPIError) -> bool:
    if getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    return "database is locked" in str(exc.orig)


#: A pooled PostgreSQL connection idle this long is pinged before it is used again, even if its
#: socket looks quiet (a peer gone without a word).
PING_AFTER_IDLE_SECONDS = 5.0


def _has_news(dbapi_connection: Any) -> bool:
    """Whether an idle connection's socket is readable: the server said something (its goodbye
    on a shutdown, restart or terminated backend) or closed it. One poll, no round trip."""
    try:
        poller = select.poll()  # not select(): no limit on the descriptor's number
        poller.register(dbapi_connection.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, dbapi_connection.Error):
        return True


def _wait_if_pipelined(conn: Connection, *_: Any) -> None:
    """After a statement SQLAlchemy ran in pipeline mode, wait for its answer: SQLAlchemy reads
    the result (and its row count) at once, which pipeline mode leaves empty until then."""
    if prepared.pipelined(conn):
        prepared.wait_for_answers(conn.connection.dbapi_connection)


def _ping_idle_connections(engine: Engine, idle_seconds: float = PING_AFTER_IDLE_SECONDS) -> None:
    """Ping a connection on checkout only if the server has spoken on it since it went idle, or it
    sat idle ``idle_seconds`` or more: a busy pool saves the round trip a ping on every checkout
    (``pool_pre_ping``) costs. One that fails the ping is replaced, and a connection that dies
    while in use fails its statement: ``run_write`` and ``run_lookup`` then run again."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None:  # just connected
            return
        if time.monotonic() - since < idle_seconds and not _has_news(dbapi_connection):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DisconnectionError(f"dropped while idle: {exc}") from exc  # the pool reconnects


def keep_private(path: str) -> None:
    """Make the SQLite file at ``path`` readable by its owner only (creating it so, if its folder
    exists): it holds the token signing keys. SQLite gives its -wal and -shm files the same mode."""
    if not os.path.isdir(os.path.dirname(path)):
        return  # opening it fails as before, with the message callers already give
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        for name in (path, path + "-wal", path + "-shm"):
            if os.path.exists(name) and os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)
    except OSError as exc:  # another user's file, a read-only mount: the database still opens or says why
        log.warning("could not make %s private: %s", path, exc)


def _again_if_dropped(read: Callable[[], T]) -> T:
    """Run ``read``, and once more if the database dropped its connection (a restart, a failover)."""
    try:
        return read()
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return read()


def _configure_sqlite(engine: Engine, *, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        # On the driver's cursor: the statement SQLAlchemy would send, without its per-call machinery
        # (a failure is raised as SQLAlchemy raises it: "database is locked" is retried).
        statement = "BEGIN IMMEDIATE" if options.get("dockyard_write") else "BEGIN"
        try:
            connection.connection.dbapi_connection.execute(statement)  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            connection._handle_dbapi_exception(exc, statement, (), None, None)


#: Inline writes hold two pooled connections for the loop (lookups, writes): smaller pools go without.
INLINE_WRITES_MIN_POOL = 4


class WouldBlock(BaseException):
    """An attempt on the event loop (``Database.attempt_inline``) needs something that may wait:
    a read transaction, a write lock another process holds, a store read over the network.
    A BaseException, so no ``except Exception`` on the way swallows it."""


class WriterBusy(WouldBlock):
    """Another thread of this process is writing: the loop may await ``Database.writer_released``
    and attempt again."""


@dataclass
class InlineAttempt:
    """What an attempt on the event loop did: the durable commit it must wait for (0: none)."""

    ticket: int = 0
    #: Called once the ticket is durable (``Database.when_durable``).
    after: list[Callable[[], None]] = field(default_factory=list)


def _driver_row(conn: Connection, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The first row of ``sql`` run on the driver's own cursor, past SQLAlchemy's machinery."""
    cursor = conn.connection.dbapi_connection.execute(sql, params)  # type: ignore[union-attr]
    try:
        return cursor.fetchone()
    finally:
        cursor.close()


class Database:
    """One engine plus read/write transaction helpers that hide dialect differences."""

    def __init__(self, url: str, *, pool_size: int = 16) -> None:
        self.url = normalize_url(url)
        options: dict[str, Any] = {"future": True}
        if self.url.startswith("sqlite"):
            options["connect_args"] = {"check_same_thread": False, "timeout": 30}
            options["pool_size"] = pool_size
            options["max_overflow"] = 0
            options["pool_timeout"] = 60
        else:
            options["pool_size"] = pool_size
            options["max_overflow"] = pool_size
            options["pool_recycle"] = 1800
        self.engine = sa.create_engine(self.url, **options)
        self.dialect = self.engine.dialect.name
        if not self.is_sqlite:
            _ping_idle_connections(self.engine)  # survive a database restart or failover
            sa.event.listen(self.engine, "after_cursor_execute", _wait_if_pipelined)
        self._inline_thread: int | None = None
        self._inline_connection: Connection | None = None
        #: How many inline connections there have been: ``data_version`` is per connection.
        self._inline_epoch = 0
        #: Set while the event loop's thread attempts a call inline (``attempt_inline``).
        self._attempting = False
        self._attempt_wrote = False
        self._attempt = InlineAttempt()
        self._inline_writer: Connection | None = None
        self._pool_size = pool_size
        self._group: GroupSync | None = None
        #: SQLite only: this process's writers queue on it rather than in SQLite's busy handler.
        self._sqlite_writers: WriteLock | None = None
        self._write_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.dialect == "sqlite":
            self._write_lock = self._sqlite_writers = WriteLock()
            path = self.engine.url.database
            if path and path != ":memory:" and not path.startswith("file:"):
                path = os.path.abspath(path)
                keep_private(path)
                self._group = GroupSync(path + "-wal", checkpoint_passively(path))
            _configure_sqlite(self.engine, synchronous="NORMAL" if self._group else "FULL")

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def insert(self, table: sa.Table) -> Any:
        """A dialect insert construct, so callers can use ``on_conflict_do_*``."""
        return (sqlite.insert if self.is_sqlite else postgresql.insert)(table)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (a consistent snapshot on both engines)."""
        if self._attempting_here():
            self._refuse("a read transaction")
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def serve_lookups_inline(self) -> None:
        """Give the calling thread (the event loop's) a dedicated connection for ``lookup``
        (and, on file-backed SQLite, one for inline writes, taken now, while the pool is free)."""
        self._inline_thread = threading.get_ident()
        if self.writes_inline:
            self._writer_connection(initial=True)

    def _inline(self) -> Connection:
        """The event loop's connection, replaced if it was closed or invalidated."""
        conn = self._inline_connection
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._inline_connection = conn
            self._inline_epoch += 1
        return conn

    def run_lookup(self, work: Callable[[Connection], T]) -> T:
        """Run a one-statement read outside any transaction (autocommit).

        On the event-loop thread it uses a connection held for the loop's lifetime, so the
        hot read paths (manifest and blob lookups) cost one statement and no thread hop.
        A connection the database dropped (restart, failover) is replaced and the read
        retried once.
        """
        if threading.get_ident() != self._inline_thread:
            if self.is_sqlite:  # WAL reads never wait; a prepared statement autocommits
                with self.engine.connect() as conn:
                    return work(conn)
            return _again_if_dropped(lambda: self._pooled_lookup(work))
        return _again_if_dropped(lambda: self._loop_lookup(work))

    def _pooled_lookup(self, work: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return work(conn.execution_options(isolation_level="AUTOCOMMIT"))

    def _loop_lookup(self, work: Callable[[Connection], T]) -> T:
        conn = self._inline()
        try:
            return work(conn)
        except sa.exc.DBAPIError:
            self._inline_connection = None
            conn.close()
            raise

    def lookup_row(self, statement: sa.Executable, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a one-statement read (``run_lookup``), or None.

        The statement, compiled once, runs on the driver's cursor (``dockyard.prepared``):
        SQLAlchemy's per-execution machinery costs several times the indexed lookup itself.
        """
        return self.run_lookup(lambda conn: prepared.first(conn, statement, params))

    def data_version(self) -> tuple[int, int] | None:
        """SQLite's ``PRAGMA data_version`` on the event loop's connection, with that connection's
        number: the pair changes whenever another connection (of any process) has committed (the
        pragma's value means something only on one connection, so a new one changes the pair too).
        None off SQLite, off the loop's thread, or if the pragma fails (ask the database)."""
        if not self.is_sqlite or threading.get_ident() != self._inline_thread:
            return None
        try:
            row = _driver_row(self._inline(), "PRAGMA data_version", ())
        except (sa.exc.SQLAlchemyError, sqlite3.Error):
            dropped, self._inline_connection = self._inline_connection, None
            if dropped is not None:
                dropped.close()
            return None
        assert row is not None
        return self._inline_epoch, int(row[0])

    @contextmanager
    def write(self, *, durable: bool = True, pipelined: bool = False) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE).

        ``durable=False`` is for bookkeeping a power cut may lose without harm (upload
        session progress): its commit skips the log flush (SQLite ``synchronous=NORMAL``,
        PostgreSQL ``synchronous_commit=off``), and the next durable commit flushes it too.
        A process crash loses nothing either way.

        ``pipelined`` (PostgreSQL; nothing on SQLite): the transaction runs in the driver's
        pipeline mode and sends its own BEGIN and COMMIT (``_pipelined``). Statements ``prepared``
        runs wait in the driver's buffer until one needs an answer (or the COMMIT goes): one round
        trip each saved. A statement SQLAlchemy runs itself waits for its answer as usual.
        """
        if pipelined and not self.is_sqlite:
            with self.engine.connect() as plain:
                yield from self._pipelined(plain, durable=durable)
            return
        toggle = self.is_sqlite and self._group is None and not durable
        ticket = 0
        with self._write_lock, self.engine.connect() as plain:
            conn = plain.execution_options(dockyard_write=True)
            if toggle:
                plain.connection.dbapi_connection.execute("PRAGMA synchronous=NORMAL")
            try:
                with conn.begin():
                    if not self.is_sqlite and not durable:
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    yield conn
                if self._group is not None and durable:
                    ticket = self._group.committed()
            finally:
                if toggle and not plain.invalidated:
                    plain.connection.dbapi_connection.execute("PRAGMA synchronous=FULL")
        if ticket:  # outside the write lock: the next writer commits while this one flushes
            assert self._group is not None
            self._group.wait_durable(ticket)
            self._group.checkpoint_if_due()

    def _pipelined(self, plain: Connection, *, durable: bool) -> Iterator[Connection]:
        """A PostgreSQL write transaction in the driver's pipeline mode whose BEGIN and COMMIT this
        code sends (the driver in autocommit mode): BEGIN leaves with the first statement that waits,
        and COMMIT with the pipeline's closing sync, so neither costs a round trip of its own."""
        conn = plain.execution_options(dockyard_write=True, isolation_level="AUTOCOMMIT")
        driver: Any = plain.connection.dbapi_connection
        with conn.begin():  # SQLAlchemy's bookkeeping: the driver, in autocommit, commits nothing
            try:
                with driver.pipeline():
                    prepared.queue_command(driver, _BEGIN)
                    if not durable:
                        prepared.queue_command(driver, _NOT_DURABLE)
                    try:
                        yield conn
                    except BaseException:  # before the rollback: it would raise a leftover in its place
                        self._drain_pipeline(driver)
                        raise
                    prepared.queue_command(driver, b"COMMIT")
            except self.engine.dialect.loaded_dbapi.Error as exc:  # the COMMIT's, raised as SQLAlchemy's
                conn._handle_dbapi_exception(exc, "COMMIT", {}, None, None)  # type: ignore[arg-type]

    def _drain_pipeline(self, driver: Any) -> None:
        """Read every answer still due in a failed pipelined transaction, dropping their errors.

        A statement sent after the one that failed is answered "pipeline aborted"; left unread,
        the rollback would raise that in place of the real error (a deadlock would then not be
        retried, a unique violation would not be an IntegrityError)."""
        with contextlib.suppress(self.engine.dialect.loaded_dbapi.Error):
            prepared.wait_for_answers(driver)

    @property
    def writes_inline(self) -> bool:
        """Whether small writes may run on the event loop (file-backed SQLite, a pool of at least
        ``INLINE_WRITES_MIN_POOL``: the loop keeps two of its connections)."""
        return (
            self._group is not None
            and self._inline_thread is not None
            and self._pool_size >= INLINE_WRITES_MIN_POOL
        )

    def _writer_connection(self, *, initial: bool = False) -> Connection:
        """The loop's write connection: it never waits for SQLite's lock and never checkpoints
        (a checkpoint's copying and fsync would stall the loop; other writers' commits and the
        group flush, in worker threads, do it)."""
        conn = self._inline_writer
        if conn is not None and not conn.closed and not conn.invalidated:
            return conn
        pool: Any = self.engine.pool
        if not initial and pool.checkedout() >= pool.size():  # never wait for the pool on the loop
            raise WouldBlock("no free connection for the loop's writer")
        conn = self.engine.connect().execution_options(dockyard_write=True)
        driver: Any = conn.connection.dbapi_connection
        driver.execute("PRAGMA busy_timeout=0")
        driver.execute("PRAGMA wal_autocheckpoint=0")
        self._inline_writer = conn
        return conn

    @contextmanager
    def attempt_inline(self) -> Iterator[InlineAttempt]:
        """Let the calling code (on the event loop's thread) write at once if nothing would wait.

        Inside, a ``run_write`` runs on this thread when this process's write lock is free and
        SQLite's is too (a busy timeout of 0). A durable one commits without waiting for its flush:
        the attempt's ``ticket`` says which commit the caller must await (``durable``) before it
        answers. Anything that would wait raises ``WouldBlock`` (``WriterBusy`` when another thread
        of this process writes) and the caller runs the whole call again, later or in a worker
        thread. A SQLite write of a few rows costs less than the thread hop it saves.
        """
        if not self.writes_inline or threading.get_ident() != self._inline_thread or self._attempting:
            raise WouldBlock("not on the event loop of a file-backed SQLite database")
        self._attempting = True
        self._attempt_wrote = False
        self._attempt = InlineAttempt()
        try:
            yield self._attempt
        finally:
            self._attempting = False

    def refuse_inline(self, what: str) -> None:
        """Raise ``WouldBlock`` if the caller runs inside an attempt on the event loop: ``what``
        (a read from a remote store, say) may wait."""
        if self._attempting_here():
            self._refuse(what)

    def _refuse(self, what: str) -> None:
        if self._attempt_wrote:  # running the call again would write twice
            raise RuntimeError(f"an inline attempt cannot wait for {what} after its write")
        raise WouldBlock(what)

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the caller's writes are durable: now, or (inside an inline
        attempt) after ``run_soon`` has awaited the flush."""
        if self._attempting_here():
            self._attempt.after.append(callback)
        else:
            callback()

    async def writer_released(self) -> None:
        """(On the event loop) return once no thread of this process holds the write lock."""
        if self._sqlite_writers is not None:
            await self._sqlite_writers.released()

    async def durable(self, ticket: int) -> None:
        """(On the event loop) return once the inline commit ``ticket`` is on disk."""
        if ticket:
            assert self._group is not None
            await self._group.durable(ticket)

    def _attempting_here(self) -> bool:
        """Whether the calling thread is the event loop's, inside ``attempt_inline``."""
        return self._attempting and threading.get_ident() == self._inline_thread

    def _write_now(self, work: Callable[[Connection], T]) -> T:
        if self._attempt_wrote:  # a second write could not fall back without doing the first again
            raise RuntimeError("an inline attempt writes at most once (asgi.run_soon's contract)")
        conn = self._writer_connection()
        writers = self._sqlite_writers
        assert writers is not None
        if not writers.acquire(blocking=False):
            raise WriterBusy("another thread is writing")
        try:
            try:
                with conn.begin():
                    result = work(conn)
            except sa.exc.OperationalError as exc:
                if "database is locked" in str(exc.orig) and not self._in_transaction(conn):
                    raise WouldBlock("another process is writing") from None  # nothing was done
                self._drop_writer()
                raise
            except BaseException:  # a WouldBlock from inside work was rolled back: the writer is fine
                if self._in_transaction(conn):  # a failed COMMIT may leave SQLite's transaction open
                    self._drop_writer()
                raise
            self._attempt_wrote = True
            return result
        finally:
            writers.release()

    @staticmethod
    def _in_transaction(conn: Connection) -> bool:
        driver: Any = conn.connection.dbapi_connection
        return bool(driver is None or driver.in_transaction)

    def _drop_writer(self) -> None:
        """Throw the loop's writer away (closing it rolls back whatever it still holds)."""
        conn, self._inline_writer = self._inline_writer, None
        if conn is not None:
            conn.invalidate()
            conn.close()

    def run_write(
        self, work: Callable[[Connection], T], *, durable: bool = True, pipelined: bool = False
    ) -> T:
        """Run ``work`` in a write transaction, retrying on deadlocks and lock timeouts
        (``pipelined``: see ``write``)."""
        if self._attempting_here():
            result = self._write_now(work)
            if durable:
                assert self._group is not None  # writes_inline: a file-backed database
                self._attempt.ticket = self._group.committed()
            return result
        for attempt in range(WRITE_RETRIES):
            committing = False
            try:
                with self.write(durable=durable, pipelined=pipelined) as conn:
                    result = work(conn)
                    committing = True
                return result
            except sa.exc.DBAPIError as exc:
                # A connection dropped before the COMMIT was sent committed nothing; after, who knows.
                dropped = exc.connection_invalidated and not committing and attempt == 0
                if not (dropped or _is_retryable(exc)) or attempt == WRITE_RETRIES - 1:
                    raise
                log.info("retrying transaction after %s", type(exc.orig).__name__)
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))  # noqa: S311 - jitter, not crypto
        raise AssertionError("unreachable")

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold a registry-wide lock called ``name`` (one holder across all processes and nodes).

        On PostgreSQL a session advisory lock on a connection of its own, so work that must not
        run twice at once (migrations, first-start bootstrap) waits for another node doing it. On
        SQLite nothing: one process owns a database file.
        """
        if self.is_sqlite:
            yield
            return
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})

    def dispose(self) -> None:
        if self._inline_writer is not None:
            self._inline_writer.close()
            self._inline_writer = None
        if self._inline_connection is not None:
            self._inline_connection.close()
            self._inline_connection = None
        self.engine.dispose()
