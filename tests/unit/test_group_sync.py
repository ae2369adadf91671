"""GroupSync: a durable SQLite write returns only after a WAL flush that began after its commit."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dockyard.db import Database, GroupSync


class RecordingSync(GroupSync):
    """Records, for each flush, how many commits had been counted when it began."""

    def __init__(self, wal_path: str, gate: threading.Event | None = None, fail: int = 0) -> None:
        super().__init__(wal_path)
        self.flushes: list[int] = []
        self.gate = gate
        self.fail = fail

    def _flush(self) -> None:
        self.flushes.append(self._committed)
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            self.fail -= 1
            raise OSError("disk said no")
        super()._flush()


def _wait_until(condition, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_concurrent_commits_share_a_flush_and_none_returns_early(tmp_path: Path) -> None:
    gate = threading.Event()
    sync = RecordingSync(str(tmp_path / "db-wal"), gate)
    returned: dict[int, int] = {}

    def writer(ticket: int) -> None:
        sync.wait_durable(ticket)
        returned[ticket] = len(sync.flushes)

    first = threading.Thread(target=writer, args=(sync.committed(),))
    first.start()
    _wait_until(lambda: len(sync.flushes) == 1)  # the first flush covers commit 1 only
    later = [threading.Thread(target=writer, args=(sync.committed(),)) for _ in range(5)]
    for thread in later:
        thread.start()
    _wait_until(lambda: sync._committed == 6)
    assert returned == {}  # nobody is answered while the flush is still running
    gate.set()
    for thread in [first, *later]:
        thread.join(10)
    assert sync.flushes == [1, 6]  # five commits made during the first flush share the second
    assert returned[1] >= 1
    assert all(returned[t] == 2 for t in range(2, 7))


def test_a_failed_flush_fails_its_waiter_and_the_next_one_retries(tmp_path: Path) -> None:
    sync = RecordingSync(str(tmp_path / "db-wal"), fail=1)
    ticket = sync.committed()
    with pytest.raises(OSError, match="disk said no"):
        sync.wait_durable(ticket)
    sync.wait_durable(ticket)  # not marked durable by the failed flush: flushed again
    assert sync.flushes == [1, 1]


def test_durable_writes_flush_the_wal_and_relaxed_ones_do_not(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}", pool_size=2)
    try:
        assert db._group is not None
        sync = RecordingSync(db._group._wal_path)
        db._group = sync
        with db.write() as conn:
            conn.exec_driver_sql("CREATE TABLE scratch (x INTEGER)")
        assert sync.flushes == [1]
        assert (tmp_path / "registry.db-wal").exists()
        with db.write(durable=False) as conn:
            conn.exec_driver_sql("INSERT INTO scratch VALUES (1)")
        assert sync.flushes == [1]
        with db.read() as conn:
            assert conn.execute(sa.text("PRAGMA synchronous")).scalar_one() == 1  # NORMAL
            assert conn.execute(sa.text("SELECT count(*) FROM scratch")).scalar_one() == 1

        def failing_write() -> None:
            with db.write() as conn:
                conn.exec_driver_sql("INSERT INTO scratch VALUES (2)")
                raise RuntimeError("the transaction fails")

        with pytest.raises(RuntimeError):
            failing_write()
        assert sync.flushes == [1]  # a rolled-back transaction waits for nothing
    finally:
        db.dispose()
