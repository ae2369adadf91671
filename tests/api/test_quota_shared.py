"""The stored-bytes reading is shared: one scan per registry, adopted by every process while fresh."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa

from dockyard.tiers import quota as quota_module
from dockyard.tiers.reading import (
    CLOCK_ALLOWANCE,
    COST_FACTOR,
    MAX_TRUST_SECONDS,
)
from dockyard.tiers.room import STORED_BYTES_SCHEDULE
from dockyard.tiers.services import TierService
from tests.support.quota_readings import (
    CACHE,
    Clocks,
    free,
    limited,
    process,
    save_value,
    saved,
    store_blob,
)


@pytest.fixture
def settings(settings):
    return limited(settings)


def test_one_process_scans_and_the_others_adopt_its_reading(dockyard, quota_scans):
    clocks = Clocks()
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    store_blob(dockyard, b"a", 700)
    assert first.used() == 700
    assert len(quota_scans) == 1
    assert saved(dockyard) == {"used": 700, "at": clocks.wall, "took": 0.0}
    store_blob(dockyard, b"b", 300)  # committed by a third process, after the scan
    assert second.used() == 700  # the shared reading, not a scan of its own
    assert len(quota_scans) == 1


def test_a_reading_past_its_trust_and_the_schedules_slack_is_scanned_again(dockyard, quota_scans):
    clocks = Clocks()
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    first.used()
    store_blob(dockyard, b"a", 700)
    clocks.advance(2 * CACHE - 0.1)  # trusted for CACHE, and one schedule period more
    assert second.used() == 0
    clocks.advance(2 * CACHE)  # second re-reads the row: too old now (no job runtime came round)
    assert second.used() == 700
    assert len(quota_scans) == 2
    assert saved(dockyard)["used"] == 700  # type: ignore[index]


def test_a_slow_scan_is_trusted_for_longer(dockyard, quota_scans, slow_quota_scans):
    took = 1.0
    clocks = slow_quota_scans(took)
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    first.used()
    assert saved(dockyard)["took"] == took  # type: ignore[index]
    clocks.advance(took * COST_FACTOR + CACHE - 0.5)
    store_blob(dockyard, b"a", 700)
    assert second.used() == 0  # still the slow scan's reading, for 0.5 s more
    assert len(quota_scans) == 1
    clocks.advance(0.5)
    assert second.used() == 700
    assert len(quota_scans) == 2


def test_no_reading_is_trusted_longer_than_the_maximum(dockyard, quota_scans, slow_quota_scans):
    clocks = slow_quota_scans(3600.0)  # a scan an hour long would be trusted for 50 hours
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    first.used()
    store_blob(dockyard, b"a", 700)
    clocks.advance(MAX_TRUST_SECONDS + CACHE)
    assert second.used() == 700


def test_this_process_keeps_the_commits_a_newer_reading_may_not_hold(dockyard, quota_scans):
    clocks = Clocks()
    mine, other = process(dockyard, clocks), process(dockyard, clocks)
    assert mine.used() == 0
    mine.added(40)  # committed before the other process's scan: in its reading
    store_blob(dockyard, b"a", 40)
    clocks.advance(3 * CACHE)
    assert other.used() == 40  # quota_scans (the reading ran out), at this wall time
    clocks.advance(0.5)
    mine.added(9)  # committed after that scan started: not in it
    assert mine.used() == 40 + 9
    clocks.advance(CACHE)
    assert mine.used() == 49  # the same reading read again keeps what was added since
    assert len(quota_scans) == 2


def test_a_commit_made_when_this_processs_scan_started_is_in_its_reading(dockyard, quota_scans):
    clocks = Clocks()
    mine = process(dockyard, clocks)
    mine.used()
    store_blob(dockyard, b"a", 40)
    mine.added(40)
    mine.forget()
    assert mine.used() == 40  # quota_scans at the same wall time as the commit: not counted twice


def test_a_commit_just_before_another_nodes_scan_counts_twice_never_not_at_all(dockyard, quota_scans):
    clocks = Clocks()
    mine, other = process(dockyard, clocks), process(dockyard, clocks)
    mine.used()
    store_blob(dockyard, b"a", 40)
    mine.added(40)
    clocks.advance(CLOCK_ALLOWANCE - 0.1)  # other's clock might be this much ahead
    other.forget()
    assert other.used() == 40
    clocks.mono += CACHE
    assert mine.used() == 80  # kept: it might be after other's scan started
    clocks.advance(0.2)
    mine.added(1)  # later commits trim nothing older: the reading is the same
    clocks.mono += CACHE
    assert mine.used() == 81


def test_forget_survives_a_failed_scan(dockyard, quota_scans, monkeypatch):
    clocks = Clocks()
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    first.used()
    store_blob(dockyard, b"a", 700)
    second.forget()
    real = quota_module.stored_bytes

    def failing(conn):
        raise sa.exc.OperationalError("SELECT", {}, Exception("database gone"))

    monkeypatch.setattr(quota_module, "stored_bytes", failing)
    with pytest.raises(sa.exc.OperationalError):
        second.used()
    monkeypatch.setattr(quota_module, "stored_bytes", real)
    assert second.used() == 700  # scanned, not the shared reading from before the forget


def test_forget_scans_whatever_the_shared_reading_says_and_shares_the_result(dockyard, quota_scans):
    clocks = Clocks()
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    store_blob(dockyard, b"a", 700)
    first.used()
    free(dockyard, b"a")  # garbage collection deleted it
    second.forget()
    assert second.used() == 0
    assert len(quota_scans) == 2
    clocks.advance(CACHE)
    assert first.used() == 0  # the freed space, from second's reading
    assert len(quota_scans) == 2


@pytest.mark.parametrize(
    "value",
    [
        "junk",
        {"used": "700", "at": 1_000_000.0, "took": 0.0},
        {"used": -1, "at": 1_000_000.0, "took": 0.0},
        {"used": True, "at": 1_000_000.0, "took": 0.0},
        {"used": 700, "at": None, "took": 0.0},
        {"used": 700, "at": 1_000_000.0, "took": -1},
        {"used": 700, "at": 1_000_000.0, "took": True},
        {"used": 700},
    ],
)
def test_a_row_that_does_not_parse_is_scanned_over(dockyard, quota_scans, value):
    clocks = Clocks()
    save_value(dockyard, value)
    store_blob(dockyard, b"a", 5)
    assert process(dockyard, clocks).used() == 5
    assert len(quota_scans) == 1
    assert saved(dockyard) == {"used": 5, "at": clocks.wall, "took": 0.0}


def test_a_reading_from_a_clock_ahead_is_used_within_the_allowance_only(dockyard, quota_scans):
    clocks = Clocks()
    save_value(dockyard, {"used": 123, "at": clocks.wall + CLOCK_ALLOWANCE + 0.1, "took": 0.0})
    assert process(dockyard, clocks).used() == 0
    assert len(quota_scans) == 1
    save_value(dockyard, {"used": 123, "at": clocks.wall + CLOCK_ALLOWANCE - 0.1, "took": 0.0})
    assert process(dockyard, clocks).used() == 123
    assert len(quota_scans) == 1


def test_the_schedule_scans_on_every_run_while_scans_are_cheap(dockyard, quota_scans):
    clocks = Clocks()
    job, serving = process(dockyard, clocks), process(dockyard, clocks)
    job.refresh()
    store_blob(dockyard, b"a", 700)
    clocks.advance(CACHE)
    job.refresh()
    assert len(quota_scans) == 2
    assert serving.used() == 700  # from the schedule's reading
    assert len(quota_scans) == 2


def test_the_schedule_scans_a_period_and_a_scan_before_the_reading_runs_out(
    dockyard, quota_scans, slow_quota_scans
):
    took = 1.0
    clocks = slow_quota_scans(took)  # trusted for 50 s
    job, serving = process(dockyard, clocks), process(dockyard, clocks)
    job.refresh()
    assert len(quota_scans) == 1
    clocks.advance(COST_FACTOR * took - CACHE - took - 0.1)
    job.refresh()
    assert len(quota_scans) == 1
    store_blob(dockyard, b"a", 700)
    clocks.advance(0.2)
    job.refresh()  # 5 s and a scan's time of trust left: the new reading is shared in time
    assert len(quota_scans) == 2
    assert serving.used() == 700


def test_the_schedule_scans_over_a_reading_from_a_clock_ahead_and_replaces_it(dockyard, quota_scans):
    clocks = Clocks()
    save_value(dockyard, {"used": 123, "at": clocks.wall + 10 * CACHE, "took": 0.0})
    process(dockyard, clocks).refresh()
    assert len(quota_scans) == 1
    assert saved(dockyard) == {"used": 0, "at": clocks.wall, "took": 0.0}


def test_the_process_running_the_schedule_uses_its_new_reading_at_once(dockyard, quota_scans):
    clocks = Clocks()
    process(dockyard, clocks).used()  # another process's reading
    clocks.advance(CACHE - 0.1)
    job = process(dockyard, clocks)
    assert job.used() == 0  # adopted, trusted in memory for CACHE more
    store_blob(dockyard, b"a", 700)
    clocks.advance(0.2)  # the reading has run out; job's memory has not
    job.refresh()
    assert job.used() == 700


def test_the_schedule_leaves_a_fresh_reading_another_process_made(dockyard, quota_scans, slow_quota_scans):
    clocks = slow_quota_scans(1.0)
    process(dockyard, clocks).used()
    clocks.advance(COST_FACTOR * 1.0 - CACHE - 1.0 - 0.1)
    job = process(dockyard, clocks)  # a process that never scanned: the row decides
    job.refresh()
    assert len(quota_scans) == 1
    clocks.advance(0.2)
    job.refresh()
    assert len(quota_scans) == 2


def test_a_process_trusts_its_own_scan_without_reading_the_row(
    dockyard, quota_scans, slow_quota_scans, statements
):
    clocks = slow_quota_scans(1.0)
    quota = process(dockyard, clocks)
    quota.used()
    clocks.advance(COST_FACTOR * 1.0 - 0.1)
    statements.clear()
    assert quota.used() == 0
    assert statements == []


def test_a_fresh_row_is_read_again_after_one_interval_not_at_each_push(dockyard, quota_scans, statements):
    clocks = Clocks()
    process(dockyard, clocks).used()
    clocks.advance(CACHE - 1)  # 1 s of trust left, and the schedule's interval after it
    quota = process(dockyard, clocks)
    quota.used()
    clocks.advance(CACHE - 0.1)
    statements.clear()
    quota.used()
    assert statements == []
    save_value(dockyard, {"used": 55, "at": clocks.wall, "took": 0.0})
    clocks.advance(0.2)
    assert quota.used() == 55  # after one interval, whatever trust the reading had left
    assert len(quota_scans) == 1


def test_a_wall_clock_stepped_back_does_not_freeze_the_figure(dockyard, quota_scans):
    clocks = Clocks()
    save_value(dockyard, {"used": 123, "at": clocks.wall, "took": 0.0})
    quota = process(dockyard, clocks)
    assert quota.used() == 123
    store_blob(dockyard, b"a", 700)
    clocks.wall -= 60  # NTP steps the clock back: the row's reading now looks a minute ahead
    clocks.mono += CACHE
    assert quota.used() == 700  # its own scan, though it "started" before the reading in use
    assert len(quota_scans) == 1


def test_the_schedule_reads_nothing_under_an_unlimited_tier(dockyard, quota_scans, statements):
    tiers: TierService = dockyard.service("tiers")
    tiers.table[tiers.current().sku] = dataclasses.replace(tiers.current(), storage_bytes=-1)
    tiers.forget()
    tiers.current()
    statements.clear()
    process(dockyard, Clocks()).refresh()
    assert (quota_scans, statements) == ([], [])


def test_the_room_registers_the_schedule_on_the_registrys_quota(dockyard):
    quota = dockyard.service("tiers").quota
    runtime = dockyard.runtime
    (schedule,) = [s for s in runtime.schedules if s.name == STORED_BYTES_SCHEDULE]
    assert schedule.every_seconds == CACHE
    assert schedule.run == quota.refresh
