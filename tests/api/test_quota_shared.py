"""The stored-bytes reading is shared: one scan per registry, adopted by every process while fresh."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa

from dockyard.access.models import UPSERT_SETTING, registry_settings
from dockyard.db import utcnow
from dockyard.registry.models import blobs
from dockyard.tiers import quota as quota_module
from dockyard.tiers.quota import COST_FACTOR, READING_KEY, SharedReading, StorageQuota
from dockyard.tiers.room import STORED_BYTES_SCHEDULE
from dockyard.tiers.services import TierService
from tests.support.images import sha256

LIMIT = 10**9
CACHE = 5.0


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"tiers": {"Premium": {"storage_bytes": LIMIT}}})


class Clocks:
    """A monotonic clock and a wall clock, moved together by the test."""

    def __init__(self) -> None:
        self.mono, self.wall = 100.0, 1_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@pytest.fixture
def scans(monkeypatch):
    """Count the scans of the stored bytes (the real one runs)."""
    counted: list[int] = []
    real = quota_module.stored_bytes

    def counting(conn):
        counted.append(1)
        return real(conn)

    monkeypatch.setattr(quota_module, "stored_bytes", counting)
    return counted


def process(dockyard, clocks: Clocks) -> StorageQuota:
    """One process's quota, on the registry's database and shared reading."""
    tiers: TierService = dockyard.service("tiers")
    shared = SharedReading(dockyard.db, wall=lambda: clocks.wall)
    return StorageQuota(dockyard.db, tiers, cache_seconds=CACHE, clock=lambda: clocks.mono, shared=shared)


def store_blob(dockyard, seed: bytes, size: int) -> None:
    with dockyard.db.write() as conn:
        conn.execute(
            blobs.insert().values(
                digest=sha256(seed), size=size, created_at=utcnow(), state="live", generation=0
            )
        )


def saved(dockyard) -> object:
    with dockyard.db.read() as conn:
        return conn.execute(
            sa.select(registry_settings.c.value).where(registry_settings.c.key == READING_KEY)
        ).scalar()


def save_value(dockyard, value: object) -> None:
    with dockyard.db.write() as conn:
        conn.execute(
            UPSERT_SETTING[conn.dialect.name], {"key": READING_KEY, "value": value, "updated_at": utcnow()}
        )


def test_one_process_scans_and_the_others_adopt_its_reading(dockyard, scans):
    clocks = Clocks()
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    store_blob(dockyard, b"a", 700)
    assert first.used() == 700
    assert len(scans) == 1
    assert saved(dockyard) == {"used": 700, "at": clocks.wall, "took": 0.0}
    store_blob(dockyard, b"b", 300)  # committed by a third process, after the scan
    assert second.used() == 700  # the shared reading, not a scan of its own
    assert len(scans) == 1


def test_a_reading_past_its_trust_and_the_schedules_slack_is_scanned_again(dockyard, scans):
    clocks = Clocks()
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    first.used()
    store_blob(dockyard, b"a", 700)
    clocks.advance(2 * CACHE - 0.1)  # trusted for CACHE, and one schedule period more
    assert second.used() == 0
    clocks.advance(2 * CACHE)  # second re-reads the row: too old now (no job runtime came round)
    assert second.used() == 700
    assert len(scans) == 2
    assert saved(dockyard)["used"] == 700  # type: ignore[index]


def test_a_slow_scan_is_trusted_for_longer(dockyard, scans, monkeypatch):
    clocks = Clocks()
    took = 1.0
    real = quota_module.stored_bytes  # the counting scan

    def slow(conn):
        clocks.advance(took)
        return real(conn)

    monkeypatch.setattr(quota_module, "stored_bytes", slow)
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    first.used()
    assert saved(dockyard)["took"] == took  # type: ignore[index]
    clocks.advance(took * COST_FACTOR + CACHE - 0.5)
    store_blob(dockyard, b"a", 700)
    assert second.used() == 0  # still the slow scan's reading
    assert len(scans) == 1
    clocks.advance(CACHE)  # second's memory runs out, and the reading's trust with its slack
    assert second.used() == 700
    assert len(scans) == 2


def test_this_process_keeps_the_commits_a_newer_reading_may_not_hold(dockyard, scans):
    clocks = Clocks()
    mine, other = process(dockyard, clocks), process(dockyard, clocks)
    assert mine.used() == 0
    mine.added(40)  # committed before the other process's scan: in its reading
    store_blob(dockyard, b"a", 40)
    clocks.advance(3 * CACHE)
    assert other.used() == 40  # scans (the reading ran out), at this wall time
    clocks.advance(0.5)
    mine.added(9)  # committed after that scan started: not in it
    assert mine.used() == 40 + 9
    clocks.advance(CACHE)
    assert mine.used() == 49  # the same reading read again keeps what was added since
    assert len(scans) == 2


def test_forget_scans_whatever_the_shared_reading_says_and_shares_the_result(dockyard, scans):
    clocks = Clocks()
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    store_blob(dockyard, b"a", 700)
    first.used()
    with dockyard.db.write() as conn:  # freed: garbage collection deleted it
        conn.execute(blobs.update().where(blobs.c.digest == sha256(b"a")).values(state="gone"))
    second.forget()
    assert second.used() == 0
    assert len(scans) == 2
    clocks.advance(CACHE)
    assert first.used() == 0  # the freed space, from second's reading
    assert len(scans) == 2


@pytest.mark.parametrize(
    "value",
    [
        "junk",
        {"used": "700", "at": 1_000_000.0, "took": 0.0},
        {"used": -1, "at": 1_000_000.0, "took": 0.0},
        {"used": True, "at": 1_000_000.0, "took": 0.0},
        {"used": 700, "at": None, "took": 0.0},
        {"used": 700, "at": 1_000_000.0, "took": -1},
        {"used": 700},
    ],
)
def test_a_row_that_does_not_parse_is_scanned_over(dockyard, scans, value):
    clocks = Clocks()
    save_value(dockyard, value)
    store_blob(dockyard, b"a", 5)
    assert process(dockyard, clocks).used() == 5
    assert len(scans) == 1
    assert saved(dockyard) == {"used": 5, "at": clocks.wall, "took": 0.0}


def test_a_reading_from_a_clock_far_ahead_is_not_trusted(dockyard, scans):
    clocks = Clocks()
    save_value(dockyard, {"used": 123, "at": clocks.wall + 10 * CACHE, "took": 0.0})
    assert process(dockyard, clocks).used() == 0
    assert len(scans) == 1
    save_value(dockyard, {"used": 123, "at": clocks.wall + CACHE / 2, "took": 0.0})  # skew within a period
    assert process(dockyard, clocks).used() == 123
    assert len(scans) == 1


def test_the_schedule_scans_only_when_the_reading_has_run_out(dockyard, scans):
    clocks = Clocks()
    job, serving = process(dockyard, clocks), process(dockyard, clocks)
    job.refresh()
    assert len(scans) == 1
    clocks.advance(CACHE - 0.1)
    job.refresh()
    assert len(scans) == 1
    store_blob(dockyard, b"a", 700)
    clocks.advance(0.2)
    job.refresh()
    assert len(scans) == 2
    assert serving.used() == 700  # from the schedule's reading
    assert len(scans) == 2


def test_the_schedule_reads_nothing_under_an_unlimited_tier(dockyard, scans, statements):
    tiers: TierService = dockyard.service("tiers")
    tiers.table[tiers.current().sku] = dataclasses.replace(tiers.current(), storage_bytes=-1)
    tiers.forget()
    tiers.current()
    statements.clear()
    process(dockyard, Clocks()).refresh()
    assert (scans, statements) == ([], [])


def test_the_room_registers_the_schedule_on_the_registrys_quota(dockyard):
    quota = dockyard.service("tiers").quota
    runtime = dockyard.runtime
    (schedule,) = [s for s in runtime.schedules if s.name == STORED_BYTES_SCHEDULE]
    assert schedule.every_seconds == CACHE
    assert schedule.run == quota.refresh
