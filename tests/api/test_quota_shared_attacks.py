"""The shared stored-bytes reading under attack (two red-team passes): junk rows, failing saves,
races between threads and processes, slow scans, skewed and stepped clocks."""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import pytest
import sqlalchemy as sa

from dockyard.oci.errors import RegistryError
from dockyard.tiers import quota as quota_module
from dockyard.tiers.reading import (
    COST_FACTOR,
    MAX_TRUST_SECONDS,
    READING_KEY,
    Reading,
    SharedReading,
)
from dockyard.tiers.services import TierService
from tests.support.quota_readings import (
    CACHE,
    LIMIT,
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


@pytest.mark.parametrize("field", ["at", "took"])
def test_a_number_too_large_for_a_float_is_scanned_over(dockyard, quota_scans, field):
    clocks = Clocks()
    value = {"used": 0, "at": clocks.wall, "took": 0.0}
    value[field] = 10**400
    save_value(dockyard, value)
    store_blob(dockyard, b"a", 5)
    quota = process(dockyard, clocks)
    quota.refresh()
    assert quota.used() == 5
    assert saved(dockyard) == {"used": 5, "at": clocks.wall, "took": 0.0}


def test_a_row_that_is_not_json_is_scanned_over(dockyard, quota_scans):
    not_json = sa.text(
        "INSERT INTO registry_settings (key, value, updated_at) VALUES (:k, '{', '2026-01-01')"
    )
    if not dockyard.db.is_sqlite:  # PostgreSQL's json column refuses the text itself
        with pytest.raises(sa.exc.DBAPIError, match="json"), dockyard.db.write() as conn:
            conn.execute(not_json, {"k": READING_KEY})
        return
    with dockyard.db.write() as conn:
        conn.execute(not_json, {"k": READING_KEY})
    assert process(dockyard, Clocks()).used() == 0
    assert saved(dockyard)["used"] == 0  # type: ignore[index]


def test_a_huge_took_is_not_trusted_forever(dockyard, quota_scans):
    clocks = Clocks()
    save_value(dockyard, {"used": 0, "at": clocks.wall, "took": 1e300})
    store_blob(dockyard, b"a", 700)
    clocks.advance(86_400)
    quota = process(dockyard, clocks)
    quota.refresh()
    assert quota.used() == 700
    assert len(quota_scans) == 1


def test_a_used_figure_past_any_size_is_scanned_over_not_a_500(dockyard, quota_scans):
    clocks = Clocks()
    save_value(dockyard, {"used": 10**400, "at": clocks.wall, "took": 0.0})
    quota = process(dockyard, clocks)
    quota.check_start()  # the scan's figure, far under the quota
    assert quota.used() == 0


def test_a_failed_save_does_not_fail_the_push(dockyard, quota_scans, monkeypatch, caplog):
    clocks = Clocks()
    quota = process(dockyard, clocks)

    def failing(self, reading):
        raise sa.exc.OperationalError("UPDATE registry_settings", {}, Exception("database is locked"))

    monkeypatch.setattr(SharedReading, "save", failing)
    quota.check_new_blob(10)
    quota.check_new_blob(10)
    assert len(quota_scans) == 1  # the reading is used though it was not shared
    assert "cannot share the stored-bytes reading" in caplog.text


def test_another_processs_commit_is_seen_within_a_trust_and_one_interval(dockyard, quota_scans):
    clocks = Clocks()
    first, late = process(dockyard, clocks), process(dockyard, clocks)
    first.used()  # a reading at 0 (no job runtime anywhere)
    clocks.advance(0.1)
    store_blob(dockyard, b"a", 700)  # another process's commit
    clocks.advance(2 * CACHE - 0.2)
    assert late.used() == 0  # the reading, at the end of its trust and one interval
    clocks.advance(0.1)
    assert late.used() == 700  # 2 x CACHE after the reading: not used any more


def test_an_older_reading_is_not_adopted_after_a_newer_one(
    dockyard, quota_scans, slow_quota_scans, monkeypatch
):
    clocks = slow_quota_scans(1.0)  # trusted for 50 s
    other, mine = process(dockyard, clocks), process(dockyard, clocks)
    other.used()  # reading R1: 0 bytes
    assert mine.used() == 0
    clocks.advance(1)
    store_blob(dockyard, b"a", 100)
    mine.added(100)
    clocks.advance(COST_FACTOR - 2)  # R1 is still usable for a push, and due for the schedule
    load, raced = SharedReading.load, []

    def racing(self):
        older = load(self)
        if not raced:
            raced.append(True)
            mine.refresh()  # the schedule in the same process quota_scans R2 (100) and adopts it
        return older

    monkeypatch.setattr(SharedReading, "load", racing)
    assert mine.used() == 100  # R2 kept: R1 plus the commits since R2's scan would be 0
    monkeypatch.undo()
    save_value(dockyard, {"used": 66, "at": clocks.wall, "took": 0.0})
    clocks.advance(CACHE)
    assert mine.used() == 66  # R2 kept for one interval, not for its own 50 s of trust


def test_a_slow_scan_that_started_first_does_not_take_the_row_back(dockyard):
    shared = SharedReading(dockyard.db)
    shared.save(Reading(200, 1_000_010.0, 1.0))  # started at 1,000,009
    shared.save(Reading(100, 1_000_011.0, 5.0))  # a slower scan that started at 1,000,006
    assert shared.load() == Reading(200, 1_000_010.0, 1.0)


def test_commits_are_not_kept_under_an_unlimited_tier(dockyard):
    tiers: TierService = dockyard.service("tiers")
    tiers.table[tiers.current().sku] = dataclasses.replace(tiers.current(), storage_bytes=-1)
    tiers.forget()
    clocks = Clocks()
    quota = process(dockyard, clocks)
    quota.check_new_blob(1)  # the tier is known from here on
    for _ in range(1_000):
        quota.added(1)
        quota.refresh()
    assert len(quota._commits) == 0


def test_commits_are_kept_no_longer_than_any_reading_could_need_them(dockyard):
    clocks = Clocks()
    quota = process(dockyard, clocks)
    quota.added(1)
    clocks.advance(quota_module.COMMITS_KEPT_SECONDS + 1)
    quota.added(2)
    assert [size for _, size in quota._commits] == [2]
    save_value(dockyard, {"used": 10, "at": clocks.wall - 0.5, "took": 0.0})  # before the 2 only
    assert quota.used() == 12


def test_a_reading_from_a_clock_a_few_seconds_ahead_keeps_this_processs_later_commits(dockyard, quota_scans):
    clocks = Clocks()
    mine, ahead = process(dockyard, clocks), process(dockyard, clocks, ahead=4.0)
    assert mine.used() == 0
    clocks.advance(CACHE + 1)
    ahead.forget()
    assert ahead.used() == 0
    clocks.advance(0.1)
    store_blob(dockyard, b"a", 100)
    mine.added(100)  # after that scan, by every clock's account
    assert mine.used() == 100


def test_a_skewed_job_node_does_not_make_every_process_scan_every_interval(
    dockyard, quota_scans, slow_quota_scans
):
    clocks = slow_quota_scans(1.0)  # trusted for 50 s
    job, serving = process(dockyard, clocks, ahead=60.0), process(dockyard, clocks)
    for _ in range(24):  # 120 s, and the quota_scans' own time
        job.refresh()
        serving.used()
        clocks.advance(CACHE)
    # Each rejects the other's readings (one from the future, one expired by its clock) and quota_scans
    # once per its own scan's trust: 3 times each, not once per 5 s (48) nor at every overwrite.
    assert len(quota_scans) <= 6


# -- held: what the red team tried that already worked ---------------------------------------------


def test_wall_clock_floats_and_large_figures_round_trip_exactly(dockyard):
    shared = SharedReading(dockyard.db)
    reading = Reading(2**62, time.time(), 0.012345678901234567)
    shared.save(reading)
    assert shared.load() == reading


def test_the_settings_api_refuses_the_readings_key(dockyard):
    with pytest.raises(RegistryError):
        dockyard.service("access").settings.update(stored_bytes={"used": 0, "at": 0, "took": 1e300})


@pytest.mark.parametrize(
    "value",
    [
        [1, 2],
        {"used": 1, "at": float("nan"), "took": 0},
        {"used": 1, "at": 1_000_000.0, "took": float("inf")},
        {"used": 1.5, "at": 1.0, "took": 0.0},
        None,
        7,
    ],
)
def test_more_junk_is_scanned_over(dockyard, quota_scans, value):
    not_finite = isinstance(value, dict) and not all(math.isfinite(v) for v in value.values())
    if not_finite and not dockyard.db.is_sqlite:
        with pytest.raises(sa.exc.DBAPIError, match="json"):  # PostgreSQL's json refuses NaN itself
            save_value(dockyard, value)
        return
    if value is not None:
        save_value(dockyard, value)
    assert process(dockyard, Clocks()).used() == 0
    assert len(quota_scans) == 1


# -- attacks, second pass -------------------------------------------------------------------------


def test_a_slow_scan_is_shared_before_the_reading_runs_out(dockyard, quota_scans, timed_quota_scans):
    clocks, plan = timed_quota_scans
    took = plan["took"] = 12.0  # trusted for 600 s (the cap): a large registry under load
    job, serving = process(dockyard, clocks), process(dockyard, clocks)
    job.refresh()
    assert serving.used() == 0
    clocks.advance(MAX_TRUST_SECONDS - CACHE - took - 0.1)  # the schedule's worst phase: just early
    job.refresh()
    assert len(quota_scans) == 1
    clocks.advance(CACHE)
    plan["during"] = [(took - 0.1, serving.used)]  # a push just before the new reading is shared
    job.refresh()
    assert len(quota_scans) == 2  # the push used the old reading, still usable: no scan of its own


def test_the_schedules_own_older_scan_does_not_replace_a_newer_reading(
    dockyard, quota_scans, timed_quota_scans
):
    clocks, plan = timed_quota_scans
    plan["took"] = 1.0  # trusted for 50 s
    job, other = process(dockyard, clocks), process(dockyard, clocks)

    def meanwhile():  # 0.5 s into the schedule's scan
        store_blob(dockyard, b"a", 100)  # another process commits,
        other.forget()
        assert other.used() == 100  # quota_scans and shares a newer reading,
        assert job.used() == 100  # and a push thread of the schedule's process adopts it

    plan["during"] = [(0.5, meanwhile)]
    job.refresh()
    assert saved(dockyard)["used"] == 100  # type: ignore[index]
    clocks.advance(40.0)
    assert job.used() == 100


def test_a_forget_during_a_read_voids_that_reads_figure(dockyard, quota_scans, timed_quota_scans):
    clocks, plan = timed_quota_scans
    plan["took"] = 1.0  # trusted for 50 s
    quota = process(dockyard, clocks)
    store_blob(dockyard, b"a", LIMIT)

    def collected():  # garbage collection frees it, and this process forgets, mid-read
        free(dockyard, b"a")
        quota.forget()

    plan["during"] = [(0.5, collected)]
    assert quota.used() == LIMIT  # the read that was in flight
    clocks.advance(1.0)
    quota.check_new_blob(1)  # scanned again: the space is free
    assert len(quota_scans) == 2


def test_blobs_pushed_under_an_unlimited_tier_count_once_it_is_limited_again(
    dockyard, quota_scans, timed_quota_scans
):
    clocks, plan = timed_quota_scans
    plan["took"] = 1.0
    tiers: TierService = dockyard.service("tiers")
    limited = tiers.current()
    quota = process(dockyard, clocks)
    assert quota.used() == 0

    def set_tier(tier):
        tiers.table[tier.sku] = tier
        tiers.forget()
        tiers.current()

    set_tier(dataclasses.replace(limited, storage_bytes=-1))
    store_blob(dockyard, b"a", LIMIT)
    quota.added(LIMIT)  # this process's own push under the unlimited tier
    set_tier(limited)
    clocks.advance(1.0)
    with pytest.raises(RegistryError, match="storage quota exceeded"):
        quota.check_new_blob(1)


def test_a_wall_clock_step_during_a_scan_keeps_this_processs_commit(dockyard, quota_scans, timed_quota_scans):
    clocks, plan = timed_quota_scans
    plan["took"] = 1.0
    quota = process(dockyard, clocks)
    quota.used()

    def step():
        store_blob(dockyard, b"a", 100)  # committed after the scan's snapshot
        quota.added(100)
        clocks.wall += 3.0  # NTP steps the wall clock forward; the monotonic one is unaffected

    plan["during"] = [(0.1, step)]
    quota.forget()
    assert quota.used() == 100


def test_threads_with_no_figure_wait_for_the_one_reading(
    dockyard, quota_scans, timed_quota_scans, monkeypatch
):
    clocks, plan = timed_quota_scans
    quota = process(dockyard, clocks)
    load, loads = SharedReading.load, []
    monkeypatch.setattr(SharedReading, "load", lambda self: loads.append(1) or load(self))
    waiting: list[threading.Thread] = []
    answers: list[int] = []

    def second_push():
        thread = threading.Thread(target=lambda: answers.append(quota.used()))
        thread.start()
        waiting.append(thread)

    plan["during"] = [(0.0, second_push)]
    store_blob(dockyard, b"a", 9)
    assert quota.used() == 9
    waiting[0].join(10)
    assert answers == [9]
    assert (len(quota_scans), len(loads)) == (1, 1)  # the waiting thread took the figure, read nothing
