"""How this process's SQLite writers take turns and share their WAL flushes.

Threads queue on ``WriteLock`` and wait on ``GroupSync`` as before; the event loop, which writes
small transactions itself (``Database.attempt_inline``), never blocks on either: it awaits the
lock's release and a shared flush instead (``WriteLock.released``, ``GroupSync.durable``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The WAL is checkpointed into the database once this many durable commits were flushed since
#: the last checkpoint (a push's transactions write a few pages each: about SQLite's own
#: autocheckpoint of 1,000 pages). The loop's writer never checkpoints by itself.
CHECKPOINT_EVERY = 256


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # a waiter cancelled meanwhile
        future.set_result(None)


class WriteLock:
    """This process's SQLite write lock: threads block on it, the event loop awaits its release.

    SQLite has one writer at a time and its busy handler polls with sleeps of up to 100 ms, so
    this process's writers queue here instead, woken as soon as one ends.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._guard = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def __enter__(self) -> WriteLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self, *, blocking: bool = True) -> bool:
        return self._lock.acquire(blocking)

    def release(self) -> None:
        """Release the lock and wake every event loop awaiting ``released``."""
        self._lock.release()
        with self._guard:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # that loop has closed: nobody is left to wake there
                continue

    async def released(self) -> None:
        """Return once the lock has been free since this call began (at once if it is free now)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = (loop, future)
        with self._guard:
            self._waiters.append(waiter)
        # Registered first, then checked: a release between a failed attempt and the registration
        # is seen here, and one after it wakes the future.
        if self._lock.acquire(blocking=False):
            self._lock.release()
            with self._guard:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            return
        await future


class GroupSync:
    """Makes SQLite commits durable together: one fsync of the WAL covers every commit made before it.

    Commits run with ``synchronous=NORMAL`` (their frames are written to the WAL, not flushed);
    each durable writer then waits (``wait_durable`` in a thread, ``durable`` on the event loop)
    until an fsync that started after its commit has finished. Whoever arrives while no fsync
    runs does it for everyone committed so far, so concurrent writers share one flush instead of
    queueing for one each. A later transaction's frames follow earlier ones in the WAL, and SQLite
    syncs the WAL before any checkpoint, so a flush never makes a transaction durable without the
    ones before it.
    """

    def __init__(self, wal_path: str, checkpoint: Callable[[], None] | None = None) -> None:
        self._wal_path = wal_path
        self._checkpoint = checkpoint
        self._condition = threading.Condition()
        self._committed = 0
        self._synced = 0
        self._syncing = False
        self._flushed_since_checkpoint = 0
        self._checkpointing = False
        #: The event loop's flush in a worker thread, which every waiter on that loop shares.
        self._loop_flush: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._loop_checkpoint: asyncio.Future[None] | None = None

    def committed(self) -> int:
        """Count a commit whose frames are in the WAL now; the ticket to wait for."""
        with self._condition:
            self._committed += 1
            return self._committed

    def is_durable(self, ticket: int) -> bool:
        with self._condition:
            return self._synced >= ticket

    def wait_durable(self, ticket: int) -> None:
        """Return once the commit ``ticket`` was counted for is on disk."""
        with self._condition:
            while self._synced < ticket:
                if self._syncing:
                    self._condition.wait()
                    continue
                self._syncing = True
                target = self._committed
                self._condition.release()
                try:
                    self._flush()
                finally:
                    self._condition.acquire()
                    self._syncing = False
                    self._condition.notify_all()
                if target > self._synced:
                    self._flushed_since_checkpoint += target - self._synced
                    self._synced = target

    async def durable(self, ticket: int) -> None:
        """``wait_durable`` for the event loop: the loop's waiters share one flush in a worker thread.

        A flush that fails fails every waiter sharing it; the next call starts another. A
        checkpoint that falls due runs afterwards in a worker thread, and nobody waits for it.
        """
        loop = asyncio.get_running_loop()
        while not self.is_durable(ticket):
            held = self._loop_flush
            if held is None or held[0] is not loop or held[1].done():
                with self._condition:
                    latest = self._committed
                held = self._loop_flush = (loop, loop.run_in_executor(None, self.wait_durable, latest))
            await asyncio.shield(held[1])
        if self._checkpoint_due() and (self._loop_checkpoint is None or self._loop_checkpoint.done()):
            self._loop_checkpoint = loop.run_in_executor(None, self.checkpoint_if_due)

    def checkpoint_if_due(self) -> None:
        """Checkpoint the WAL (in this thread) once ``CHECKPOINT_EVERY`` commits were flushed since
        the last checkpoint. A failure is logged, not raised: the flushes were durable anyway."""
        with self._condition:
            if self._checkpointing or not self._checkpoint_due():
                return
            self._checkpointing = True
            self._flushed_since_checkpoint = 0
        try:
            assert self._checkpoint is not None
            self._checkpoint()
        except Exception:
            log.warning("WAL checkpoint failed; a later flush tries again", exc_info=True)
        finally:
            with self._condition:
                self._checkpointing = False

    def _checkpoint_due(self) -> bool:
        return self._checkpoint is not None and self._flushed_since_checkpoint >= CHECKPOINT_EVERY

    def _flush(self) -> None:
        try:
            fd = os.open(self._wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return  # no WAL: the last connection checkpointed (and synced) it into the database
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoint_passively(database_path: str) -> Callable[[], None]:
    """A checkpoint that copies what it can of the WAL into the database without waiting for anyone,
    on a connection of its own (never one the pool may be short of)."""

    def checkpoint() -> None:
        conn = sqlite3.connect(database_path, timeout=0, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()

    return checkpoint
