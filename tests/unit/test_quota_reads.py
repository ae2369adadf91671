"""StorageQuota reads the stored-bytes figure once per interval, one thread at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest

from dockyard.tiers import quota as quota_module
from dockyard.tiers.quota import StorageQuota
from dockyard.tiers.reading import COST_FACTOR


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingDatabase:
    """A database that counts its read transactions (the test gives ``stored_bytes`` its answer)."""

    def __init__(self) -> None:
        self.reads = 0

    @contextmanager
    def read(self) -> Iterator[object]:
        self.reads += 1
        yield object()


def _quota(db: CountingDatabase, clock: Clock, monkeypatch: pytest.MonkeyPatch, answer: Any) -> StorageQuota:
    monkeypatch.setattr(quota_module, "stored_bytes", answer)
    tiers = SimpleNamespace(known=lambda: None)  # the tier is not known: commits are kept
    return StorageQuota(cast(Any, db), cast(Any, tiers), cache_seconds=5.0, clock=clock)


def test_the_figure_is_read_again_after_the_interval_and_adds_what_this_process_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db, clock, figure = CountingDatabase(), Clock(), [100]
    quota = _quota(db, clock, monkeypatch, lambda conn: figure[0])
    assert quota.used() == 100
    quota.added(7)
    figure[0] = 500
    clock.now += 4.9
    assert (quota.used(), db.reads) == (107, 1)
    clock.now += 0.2
    assert (quota.used(), db.reads) == (500, 2)  # what was added is in the new figure


def test_a_slow_read_spaces_out_the_next_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    db, clock = CountingDatabase(), Clock()

    def slow(conn: object) -> int:
        clock.now += 0.4  # a scan of a large registry
        return 1

    quota = _quota(db, clock, monkeypatch, slow)
    quota.used()
    clock.now += 0.4 * COST_FACTOR - 0.1  # far past cache_seconds, not past 50 reads' time
    quota.used()
    assert db.reads == 1
    clock.now += 0.2
    quota.used()
    assert db.reads == 2


def test_while_one_thread_reads_the_others_answer_from_the_figure_they_have(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db, clock = CountingDatabase(), Clock()
    reading, release = threading.Event(), threading.Event()
    figures = iter([100, 200])

    def answer(conn: object) -> int:
        figure = next(figures)
        if figure == 200:  # the second read: hold it open
            reading.set()
            assert release.wait(10)
        return figure

    quota = _quota(db, clock, monkeypatch, answer)
    assert quota.used() == 100
    clock.now += 10
    results: list[int] = []
    reader = threading.Thread(target=lambda: results.append(quota.used()))
    reader.start()
    assert reading.wait(10)
    assert [quota.used() for _ in range(5)] == [100] * 5  # no second read while one runs
    release.set()
    reader.join(10)
    assert results == [200]
    assert (quota.used(), db.reads) == (200, 2)


def test_a_failed_read_lets_the_next_caller_read(monkeypatch: pytest.MonkeyPatch) -> None:
    db, clock, fail = CountingDatabase(), Clock(), [True]

    def answer(conn: object) -> int:
        if fail[0]:
            raise OSError("database gone")
        return 42

    quota = _quota(db, clock, monkeypatch, answer)
    with pytest.raises(OSError, match="database gone"):
        quota.used()
    fail[0] = False
    assert (quota.used(), db.reads) == (42, 2)
