"""The stored-bytes reading is shared: one scan per registry, adopted by every process while fresh;
and what an attacker tried against it: junk rows, failing saves, races, skewed clocks."""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import pytest
import sqlalchemy as sa

from dockyard.access.models import UPSERT_SETTING, registry_settings
from dockyard.db import utcnow
from dockyard.oci.errors import RegistryError
from dockyard.registry.models import blobs
from dockyard.tiers import quota as quota_module
from dockyard.tiers.quota import StorageQuota
from dockyard.tiers.reading import (
    CLOCK_ALLOWANCE,
    COST_FACTOR,
    MAX_TRUST_SECONDS,
    READING_KEY,
    Reading,
    SharedReading,
)
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


@pytest.fixture
def slow_scans(scans, monkeypatch):
    """``slow_scans(took)``: clocks whose every scan (still counted) takes ``took`` seconds."""

    def slow(took: float) -> Clocks:
        clocks = Clocks()
        counting = quota_module.stored_bytes

        def scan(conn):
            clocks.advance(took)
            return counting(conn)

        monkeypatch.setattr(quota_module, "stored_bytes", scan)
        return clocks

    return slow


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


def test_a_slow_scan_is_trusted_for_longer(dockyard, scans, slow_scans):
    took = 1.0
    clocks = slow_scans(took)
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    first.used()
    assert saved(dockyard)["took"] == took  # type: ignore[index]
    clocks.advance(took * COST_FACTOR + CACHE - 0.5)
    store_blob(dockyard, b"a", 700)
    assert second.used() == 0  # still the slow scan's reading, for 0.5 s more
    assert len(scans) == 1
    clocks.advance(0.5)
    assert second.used() == 700
    assert len(scans) == 2


def test_no_reading_is_trusted_longer_than_the_maximum(dockyard, scans, slow_scans):
    clocks = slow_scans(3600.0)  # a scan an hour long would be trusted for 50 hours
    first, second = process(dockyard, clocks), process(dockyard, clocks)
    first.used()
    store_blob(dockyard, b"a", 700)
    clocks.advance(MAX_TRUST_SECONDS + CACHE)
    assert second.used() == 700


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


def test_a_commit_made_when_this_processs_scan_started_is_in_its_reading(dockyard, scans):
    clocks = Clocks()
    mine = process(dockyard, clocks)
    mine.used()
    store_blob(dockyard, b"a", 40)
    mine.added(40)
    mine.forget()
    assert mine.used() == 40  # scans at the same wall time as the commit: not counted twice


def test_a_commit_just_before_another_nodes_scan_counts_twice_never_not_at_all(dockyard, scans):
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


def test_forget_survives_a_failed_scan(dockyard, scans, monkeypatch):
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
        {"used": 700, "at": 1_000_000.0, "took": True},
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


def test_a_reading_from_a_clock_ahead_is_used_within_the_allowance_only(dockyard, scans):
    clocks = Clocks()
    save_value(dockyard, {"used": 123, "at": clocks.wall + CLOCK_ALLOWANCE + 0.1, "took": 0.0})
    assert process(dockyard, clocks).used() == 0
    assert len(scans) == 1
    save_value(dockyard, {"used": 123, "at": clocks.wall + CLOCK_ALLOWANCE - 0.1, "took": 0.0})
    assert process(dockyard, clocks).used() == 123
    assert len(scans) == 1


def test_the_schedule_scans_on_every_run_while_scans_are_cheap(dockyard, scans):
    clocks = Clocks()
    job, serving = process(dockyard, clocks), process(dockyard, clocks)
    job.refresh()
    store_blob(dockyard, b"a", 700)
    clocks.advance(CACHE)
    job.refresh()
    assert len(scans) == 2
    assert serving.used() == 700  # from the schedule's reading
    assert len(scans) == 2


def test_the_schedule_scans_a_period_and_a_scan_before_the_reading_runs_out(dockyard, scans, slow_scans):
    took = 1.0
    clocks = slow_scans(took)  # trusted for 50 s
    job, serving = process(dockyard, clocks), process(dockyard, clocks)
    job.refresh()
    assert len(scans) == 1
    clocks.advance(COST_FACTOR * took - CACHE - took - 0.1)
    job.refresh()
    assert len(scans) == 1
    store_blob(dockyard, b"a", 700)
    clocks.advance(0.2)
    job.refresh()  # 5 s and a scan's time of trust left: the new reading is shared in time
    assert len(scans) == 2
    assert serving.used() == 700


def test_the_schedule_scans_over_a_reading_from_a_clock_ahead_and_replaces_it(dockyard, scans):
    clocks = Clocks()
    save_value(dockyard, {"used": 123, "at": clocks.wall + 10 * CACHE, "took": 0.0})
    process(dockyard, clocks).refresh()
    assert len(scans) == 1
    assert saved(dockyard) == {"used": 0, "at": clocks.wall, "took": 0.0}


def test_the_process_running_the_schedule_uses_its_new_reading_at_once(dockyard, scans):
    clocks = Clocks()
    process(dockyard, clocks).used()  # another process's reading
    clocks.advance(CACHE - 0.1)
    job = process(dockyard, clocks)
    assert job.used() == 0  # adopted, trusted in memory for CACHE more
    store_blob(dockyard, b"a", 700)
    clocks.advance(0.2)  # the reading has run out; job's memory has not
    job.refresh()
    assert job.used() == 700


def test_the_schedule_leaves_a_fresh_reading_another_process_made(dockyard, scans, slow_scans):
    clocks = slow_scans(1.0)
    process(dockyard, clocks).used()
    clocks.advance(COST_FACTOR * 1.0 - CACHE - 1.0 - 0.1)
    job = process(dockyard, clocks)  # a process that never scanned: the row decides
    job.refresh()
    assert len(scans) == 1
    clocks.advance(0.2)
    job.refresh()
    assert len(scans) == 2


def test_a_process_trusts_its_own_scan_without_reading_the_row(dockyard, scans, slow_scans, statements):
    clocks = slow_scans(1.0)
    quota = process(dockyard, clocks)
    quota.used()
    clocks.advance(COST_FACTOR * 1.0 - 0.1)
    statements.clear()
    assert quota.used() == 0
    assert statements == []


def test_a_fresh_row_is_read_again_after_one_interval_not_at_each_push(dockyard, scans, statements):
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
    assert len(scans) == 1


def test_a_wall_clock_stepped_back_does_not_freeze_the_figure(dockyard, scans):
    clocks = Clocks()
    save_value(dockyard, {"used": 123, "at": clocks.wall, "took": 0.0})
    quota = process(dockyard, clocks)
    assert quota.used() == 123
    store_blob(dockyard, b"a", 700)
    clocks.wall -= 60  # NTP steps the clock back: the row's reading now looks a minute ahead
    clocks.mono += CACHE
    assert quota.used() == 700  # its own scan, though it "started" before the reading in use
    assert len(scans) == 1


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


# -- attacks (red team, session 30) -----------------------------------------------------------


def skewed(dockyard, clocks: Clocks, ahead: float) -> StorageQuota:
    """A process on another node whose wall clock runs ``ahead`` seconds ahead of ``clocks``."""
    tiers: TierService = dockyard.service("tiers")
    shared = SharedReading(dockyard.db, wall=lambda: clocks.wall + ahead)
    return StorageQuota(dockyard.db, tiers, cache_seconds=CACHE, clock=lambda: clocks.mono, shared=shared)


@pytest.mark.parametrize("field", ["at", "took"])
def test_a_number_too_large_for_a_float_is_scanned_over(dockyard, scans, field):
    clocks = Clocks()
    value = {"used": 0, "at": clocks.wall, "took": 0.0}
    value[field] = 10**400
    save_value(dockyard, value)
    store_blob(dockyard, b"a", 5)
    quota = process(dockyard, clocks)
    quota.refresh()
    assert quota.used() == 5
    assert saved(dockyard) == {"used": 5, "at": clocks.wall, "took": 0.0}


def test_a_row_that_is_not_json_is_scanned_over(dockyard, scans):
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


def test_a_huge_took_is_not_trusted_forever(dockyard, scans):
    clocks = Clocks()
    save_value(dockyard, {"used": 0, "at": clocks.wall, "took": 1e300})
    store_blob(dockyard, b"a", 700)
    clocks.advance(86_400)
    quota = process(dockyard, clocks)
    quota.refresh()
    assert quota.used() == 700
    assert len(scans) == 1


def test_a_used_figure_past_any_size_is_scanned_over_not_a_500(dockyard, scans):
    clocks = Clocks()
    save_value(dockyard, {"used": 10**400, "at": clocks.wall, "took": 0.0})
    quota = process(dockyard, clocks)
    quota.check_start()  # the scan's figure, far under the quota
    assert quota.used() == 0


def test_a_failed_save_does_not_fail_the_push(dockyard, scans, monkeypatch, caplog):
    clocks = Clocks()
    quota = process(dockyard, clocks)

    def failing(self, reading):
        raise sa.exc.OperationalError("UPDATE registry_settings", {}, Exception("database is locked"))

    monkeypatch.setattr(SharedReading, "save", failing)
    quota.check_new_blob(10)
    quota.check_new_blob(10)
    assert len(scans) == 1  # the reading is used though it was not shared
    assert "cannot share the stored-bytes reading" in caplog.text


def test_another_processs_commit_is_seen_within_a_trust_and_one_interval(dockyard, scans):
    clocks = Clocks()
    first, late = process(dockyard, clocks), process(dockyard, clocks)
    first.used()  # a reading at 0 (no job runtime anywhere)
    clocks.advance(0.1)
    store_blob(dockyard, b"a", 700)  # another process's commit
    clocks.advance(2 * CACHE - 0.2)
    assert late.used() == 0  # the reading, at the end of its trust and one interval
    clocks.advance(0.1)
    assert late.used() == 700  # 2 x CACHE after the reading: not used any more


def test_an_older_reading_is_not_adopted_after_a_newer_one(dockyard, scans, slow_scans, monkeypatch):
    clocks = slow_scans(1.0)  # trusted for 50 s
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
            mine.refresh()  # the schedule in the same process scans R2 (100) and adopts it
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


def test_a_reading_from_a_clock_a_few_seconds_ahead_keeps_this_processs_later_commits(dockyard, scans):
    clocks = Clocks()
    mine, ahead = process(dockyard, clocks), skewed(dockyard, clocks, ahead=4.0)
    assert mine.used() == 0
    clocks.advance(CACHE + 1)
    ahead.forget()
    assert ahead.used() == 0
    clocks.advance(0.1)
    store_blob(dockyard, b"a", 100)
    mine.added(100)  # after that scan, by every clock's account
    assert mine.used() == 100


def test_a_skewed_job_node_does_not_make_every_process_scan_every_interval(dockyard, scans, slow_scans):
    clocks = slow_scans(1.0)  # trusted for 50 s
    job, serving = skewed(dockyard, clocks, ahead=60.0), process(dockyard, clocks)
    for _ in range(24):  # 120 s, and the scans' own time
        job.refresh()
        serving.used()
        clocks.advance(CACHE)
    # Each rejects the other's readings (one from the future, one expired by its clock) and scans
    # once per its own scan's trust: 3 times each, not once per 5 s (48) nor at every overwrite.
    assert len(scans) <= 6


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
def test_more_junk_is_scanned_over(dockyard, scans, value):
    not_finite = isinstance(value, dict) and not all(math.isfinite(v) for v in value.values())
    if not_finite and not dockyard.db.is_sqlite:
        with pytest.raises(sa.exc.DBAPIError, match="json"):  # PostgreSQL's json refuses NaN itself
            save_value(dockyard, value)
        return
    if value is not None:
        save_value(dockyard, value)
    assert process(dockyard, Clocks()).used() == 0
    assert len(scans) == 1


# -- attacks, second pass -------------------------------------------------------------------------


@pytest.fixture
def timed(scans):
    """(clocks, plan): each outer scan reads its figure at its start, takes ``plan["took"]``
    seconds, and runs ``plan["during"]`` [(offset, action)] at those offsets into it (another
    thread, or another process, at that moment). Scans nested in an action take no time."""
    clocks = Clocks()
    plan: dict = {"took": 0.0, "during": [], "depth": 0}
    counting = quota_module.stored_bytes

    def scan(conn):
        used = counting(conn)
        if plan["depth"]:
            return used
        plan["depth"] += 1
        try:
            elapsed, during, plan["during"] = 0.0, plan["during"], []
            for offset, action in sorted(during, key=lambda d: d[0]):
                clocks.advance(offset - elapsed)
                elapsed = offset
                action()
            clocks.advance(plan["took"] - elapsed)
        finally:
            plan["depth"] -= 1
        return used

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quota_module, "stored_bytes", scan)
        yield clocks, plan


def free(dockyard, seed: bytes) -> None:
    with dockyard.db.write() as conn:
        conn.execute(blobs.update().where(blobs.c.digest == sha256(seed)).values(state="gone"))


def test_a_slow_scan_is_shared_before_the_reading_runs_out(dockyard, scans, timed):
    clocks, plan = timed
    took = plan["took"] = 12.0  # trusted for 600 s (the cap): a large registry under load
    job, serving = process(dockyard, clocks), process(dockyard, clocks)
    job.refresh()
    assert serving.used() == 0
    clocks.advance(MAX_TRUST_SECONDS - CACHE - took - 0.1)  # the schedule's worst phase: just early
    job.refresh()
    assert len(scans) == 1
    clocks.advance(CACHE)
    plan["during"] = [(took - 0.1, serving.used)]  # a push just before the new reading is shared
    job.refresh()
    assert len(scans) == 2  # the push used the old reading, still usable: no scan of its own


def test_the_schedules_own_older_scan_does_not_replace_a_newer_reading(dockyard, scans, timed):
    clocks, plan = timed
    plan["took"] = 1.0  # trusted for 50 s
    job, other = process(dockyard, clocks), process(dockyard, clocks)

    def meanwhile():  # 0.5 s into the schedule's scan
        store_blob(dockyard, b"a", 100)  # another process commits,
        other.forget()
        assert other.used() == 100  # scans and shares a newer reading,
        assert job.used() == 100  # and a push thread of the schedule's process adopts it

    plan["during"] = [(0.5, meanwhile)]
    job.refresh()
    assert saved(dockyard)["used"] == 100  # type: ignore[index]
    clocks.advance(40.0)
    assert job.used() == 100


def test_a_forget_during_a_read_voids_that_reads_figure(dockyard, scans, timed):
    clocks, plan = timed
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
    assert len(scans) == 2


def test_blobs_pushed_under_an_unlimited_tier_count_once_it_is_limited_again(dockyard, scans, timed):
    clocks, plan = timed
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


def test_a_wall_clock_step_during_a_scan_keeps_this_processs_commit(dockyard, scans, timed):
    clocks, plan = timed
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


def test_threads_with_no_figure_wait_for_the_one_reading(dockyard, scans, timed, monkeypatch):
    clocks, plan = timed
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
    assert (len(scans), len(loads)) == (1, 1)  # the waiting thread took the figure, read nothing
