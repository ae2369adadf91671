"""How this process's SQLite writers take turns and share their WAL flushes.

Threads queue on ``WriteLock`` and wait on ``GroupSync`` as before; the event loop, which writes
small transactions itself (``Database.attempt_inline``), never blocks on either: it awaits the
lock's release and a shared flush instead (``WriteLock.released``, ``GroupSync.durable``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: A flush checkpoints the WAL into the database once it has grown past this (SQLite's own
#: autocheckpoint threshold: 1,000 pages of 4 KiB). The loop's writer never checkpoints.
CHECKPOINT_WAL_BYTES = 4 * 1024 * 1024


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
            loop.call_soon_threadsafe(_wake, future)

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
        #: The event loop's flush in a worker thread, which every loop waiter shares.
        self._loop_flush: asyncio.Future[None] | None = None

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
                self._synced = max(self._synced, target)

    async def durable(self, ticket: int) -> None:
        """``wait_durable`` for the event loop: the loop's waiters share one flush in a worker thread.

        A flush that fails fails every waiter sharing it; the next call starts another.
        """
        loop = asyncio.get_running_loop()
        while not self.is_durable(ticket):
            flush = self._loop_flush
            if flush is None or flush.done():
                with self._condition:
                    latest = self._committed
                flush = self._loop_flush = loop.run_in_executor(None, self.wait_durable, latest)
            await asyncio.shield(flush)

    def _flush(self) -> None:
        try:
            fd = os.open(self._wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return  # no WAL: the last connection checkpointed (and synced) it into the database
        try:
            os.fsync(fd)
            grown = os.fstat(fd).st_size > CHECKPOINT_WAL_BYTES
        finally:
            os.close(fd)
        if grown and self._checkpoint is not None:
            try:  # the flush itself succeeded: its waiters are durable whatever the checkpoint does
                self._checkpoint()
            except Exception:
                log.warning("WAL checkpoint failed; the next flush tries again", exc_info=True)


def checkpoint_passively(connect: Callable[[], Any]) -> Callable[[], None]:
    """A checkpoint that copies what it can of the WAL into the database without waiting for anyone."""

    def checkpoint() -> None:
        with connect() as conn:
            conn.connection.dbapi_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").close()

    return checkpoint
