"""A run's log sink (buffered chunks in ``build_run_logs``) and the monitor thread that keeps a run alive.

The sink masks secret values as text arrives and writes chunks in short transactions of their own,
never inside another: when 32 KiB are buffered, or from the monitor at least every half second.
The monitor also reads ``cancel_requested`` (so a cancel reaches the run within a second) and
writes the run's heartbeat every ``builds_heartbeat_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.builds.models import build_run_logs, build_runs
from dockyard.db import Database, utcnow

log = logging.getLogger(__name__)

FLUSH_BYTES = 32 * 1024
FLUSH_SECONDS = 0.5


class DbLogSink:
    """The LogSink of one run: thread-safe, masking, buffered."""

    def __init__(self, db: Database, seq: int, secrets: Iterable[str] = (), *, start: int = 0) -> None:
        self._db = db
        self._seq = seq
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._buffer: list[str] = []
        self._buffered = 0
        self._size = start
        self._chunk = 0
        self._flushed_at = time.monotonic()

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def write(self, text: str) -> None:
        if not text:
            return
        text = self.mask(text)
        with self._lock:
            self._buffer.append(text)
            self._buffered += len(text)
            due = self._buffered >= FLUSH_BYTES
        if due:
            self.flush()

    def flush_if_due(self) -> None:
        if time.monotonic() - self._flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered as one chunk (in a transaction of its own)."""
        with self._write_lock:
            with self._lock:
                text, self._buffer, self._buffered = "".join(self._buffer), [], 0
            self._flushed_at = time.monotonic()
            if not text:
                return
            data_size = len(text.encode())
            chunk, offset = self._chunk, self._size

            def work(conn: Connection) -> None:
                conn.execute(
                    build_run_logs.insert().values(run_seq=self._seq, chunk=chunk, offset=offset, text=text)
                )
                conn.execute(
                    build_runs.update()
                    .where(build_runs.c.seq == self._seq)
                    .values(log_size=offset + data_size)
                )

            self._db.run_write(work, durable=False)
            self._chunk += 1
            self._size += data_size


class RunMonitor:
    """A thread per run: log flushes, cancel polling, heartbeats (the worker's proof of life)."""

    def __init__(
        self, db: Database, seq: int, worker: str, sink: DbLogSink, heartbeat_seconds: float
    ) -> None:
        self._db = db
        self._seq = seq
        self._worker = worker
        self._sink = sink
        self._heartbeat = heartbeat_seconds
        self._canceled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"build-run-{seq}", daemon=True)

    def canceled(self) -> bool:
        return self._canceled.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        last_beat = time.monotonic()
        tick = min(FLUSH_SECONDS, self._heartbeat)
        while not self._stop.wait(tick):
            try:
                self._sink.flush_if_due()
                if not self._canceled.is_set() and self._cancel_requested():
                    self._canceled.set()
                if time.monotonic() - last_beat >= self._heartbeat:
                    self.beat()
                    last_beat = time.monotonic()
            except sa.exc.DBAPIError:
                log.exception("build run %d: database error in its monitor; trying again", self._seq)

    def _cancel_requested(self) -> bool:
        query = sa.select(build_runs.c.cancel_requested).where(build_runs.c.seq == self._seq)
        return bool(self._db.run_lookup(lambda conn: conn.execute(query).scalar()))

    def beat(self) -> None:
        self._db.run_write(
            lambda conn: conn.execute(
                build_runs.update()
                .where(build_runs.c.seq == self._seq, build_runs.c.worker == self._worker)
                .values(heartbeat_at=utcnow())
            ),
            durable=False,
        )
