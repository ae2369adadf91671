"""GroupSync: a durable SQLite write returns only after a WAL flush that began after its commit."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dockyard import sqlite_sync
from dockyard.db import Database, GroupSync
from dockyard.sqlite_sync import WriteLock


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


# -- the event loop's side: GroupSync.durable, WriteLock.released, the checkpoint ---------------


def test_loop_waiters_share_one_flush_and_wait_for_it(tmp_path: Path) -> None:
    gate = threading.Event()
    sync = RecordingSync(str(tmp_path / "db-wal"), gate)
    tickets = [sync.committed() for _ in range(5)]
    answered: list[int] = []

    async def waiter(ticket: int) -> None:
        await sync.durable(ticket)
        answered.append(ticket)

    async def main() -> None:
        tasks = [asyncio.ensure_future(waiter(t)) for t in tickets]
        while not sync.flushes:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        assert answered == []  # nobody is answered before the flush ends
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert sorted(answered) == tickets
    assert sync.flushes == [5]  # one flush for all five, started after the fifth commit


def test_a_loop_waiter_committed_during_a_flush_waits_for_the_next(tmp_path: Path) -> None:
    gate = threading.Event()
    sync = RecordingSync(str(tmp_path / "db-wal"), gate)

    async def main() -> None:
        first = asyncio.ensure_future(sync.durable(sync.committed()))
        while not sync.flushes:
            await asyncio.sleep(0.001)
        second = asyncio.ensure_future(sync.durable(sync.committed()))  # after the flush began
        gate.set()
        await asyncio.gather(first, second)

    asyncio.run(main())
    assert sync.flushes == [1, 2]


def test_a_failed_loop_flush_fails_its_waiters_and_the_next_call_retries(tmp_path: Path) -> None:
    sync = RecordingSync(str(tmp_path / "db-wal"), fail=1)
    ticket = sync.committed()

    async def main() -> None:
        with pytest.raises(OSError, match="disk said no"):
            await sync.durable(ticket)
        await sync.durable(ticket)

    asyncio.run(main())
    assert sync.flushes == [1, 1]
    assert sync.is_durable(ticket)


def test_the_loop_awaits_a_write_lock_release_without_blocking(tmp_path: Path) -> None:
    lock = WriteLock()
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            assert release.wait(10)

    async def main() -> None:
        await lock.released()  # free: at once
        thread = threading.Thread(target=holder)
        thread.start()
        assert held.wait(10)
        waiting = asyncio.ensure_future(lock.released())
        await asyncio.sleep(0.05)  # the loop runs on meanwhile
        assert not waiting.done()  # held: the waiter is not answered
        release.set()
        await waiting
        assert lock.acquire(blocking=False)
        lock.release()
        thread.join(10)

    asyncio.run(main())


def test_a_checkpoint_falls_due_after_enough_flushed_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_sync, "CHECKPOINT_EVERY", 3)
    checkpoints: list[int] = []
    sync = GroupSync(str(tmp_path / "db-wal"), lambda: checkpoints.append(sync._synced))
    for _ in range(2):
        sync.wait_durable(sync.committed())
        sync.checkpoint_if_due()
    assert checkpoints == []
    sync.committed()
    sync.wait_durable(sync.committed())  # one flush for two commits: four in all
    sync.checkpoint_if_due()
    sync.checkpoint_if_due()  # counted afresh after a checkpoint
    assert checkpoints == [4]

    def broken() -> None:
        raise RuntimeError("database is locked")

    failing = GroupSync(str(tmp_path / "db-wal"), broken)
    tickets = [failing.committed() for _ in range(3)]
    failing.wait_durable(tickets[-1])
    failing.checkpoint_if_due()  # logged, not raised: the flush was durable anyway
    assert failing.is_durable(tickets[-1])


def test_a_flush_fsyncs_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = tmp_path / "db-wal"
    wal.write_bytes(b"frames")
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        sqlite_sync.os,
        "fsync",
        lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)),
    )
    sync = GroupSync(str(wal))
    sync.wait_durable(sync.committed())
    assert synced == [str(wal)]


def test_loop_waiters_never_wait_for_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_sync, "CHECKPOINT_EVERY", 1)
    gate = threading.Event()
    started = threading.Event()

    def slow_checkpoint() -> None:
        started.set()
        assert gate.wait(10)

    sync = GroupSync(str(tmp_path / "db-wal"), slow_checkpoint)

    async def main() -> None:
        await sync.durable(sync.committed())  # its checkpoint falls due and starts in a thread
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        await asyncio.wait_for(sync.durable(sync.committed()), 5)  # answered while it still runs
        gate.set()
        assert sync._loop_checkpoint is not None
        await sync._loop_checkpoint

    asyncio.run(main())


def test_cancelling_one_loop_waiter_leaves_the_shared_flush_to_the_others(tmp_path: Path) -> None:
    gate = threading.Event()
    sync = RecordingSync(str(tmp_path / "db-wal"), gate)

    async def main() -> None:
        ticket = sync.committed()
        first = asyncio.ensure_future(sync.durable(ticket))
        second = asyncio.ensure_future(sync.durable(ticket))
        while not sync.flushes:
            await asyncio.sleep(0.001)
        first.cancel()
        gate.set()
        await second
        assert first.cancelled()

    asyncio.run(main())
    assert sync.flushes == [1]


def test_the_checkpoint_moves_the_wal_into_the_database(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}", pool_size=4)
    try:
        db.serve_lookups_inline()  # this thread plays the loop: its writer never checkpoints
        with db.write() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x BLOB)")
        wal = tmp_path / "registry.db-wal"
        for _ in range(3):
            with db.attempt_inline():
                db.run_write(lambda conn: conn.exec_driver_sql("INSERT INTO t VALUES (randomblob(600000))"))
        assert wal.stat().st_size > 1_500_000
        before = (tmp_path / "registry.db").stat().st_size
        sqlite_sync.checkpoint_passively(str(tmp_path / "registry.db"))()
        assert (tmp_path / "registry.db").stat().st_size > before + 1_500_000
    finally:
        db.dispose()
