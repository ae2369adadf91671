"""The job runtime on both engines: jobs (leases, retries, dead letters), event consumers, schedules."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import anyio
import pytest
import sqlalchemy as sa

from dockyard.db import Database
from dockyard.events import cursors
from dockyard.events.cursors import SET_ASIDE
from dockyard.events.models import event_cursors
from dockyard.events.queue import DEAD, QUEUED, RUNNING, SUCCEEDED, JobService, enqueue
from dockyard.events.runtime import Runtime
from dockyard.events.services import PUSH, EventService


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_runtime(db: Database, clock: Clock, **options) -> Runtime:
    service = JobService(db, clock=clock, backoff_base_seconds=10, backoff_max_seconds=25, jitter=lambda: 0.5)
    return Runtime(db, service, EventService(db), clock=clock, **options)


@pytest.fixture
def runtime(dockyard, clock) -> Runtime:
    return make_runtime(dockyard.db, clock)


def record(db: Database, events: EventService, repository: str, tag: str) -> None:
    db.run_write(lambda conn: events.record(conn, PUSH, repository, tag=tag, digest="sha256:" + "a" * 64))


# -- jobs ------------------------------------------------------------------------------------------


def test_a_job_exists_only_if_its_transaction_commits_and_runs_once(dockyard, runtime, clock):
    seen = []
    runtime.job("demo", lambda job: seen.append(job.payload))
    job_id = dockyard.db.run_write(lambda conn: enqueue(conn, "demo", {"n": 1}, now=clock()))

    def rolled_back(conn) -> None:
        enqueue(conn, "demo", {"n": 2}, now=clock())
        raise RuntimeError("the caller's change failed")

    with pytest.raises(RuntimeError):
        dockyard.db.run_write(rolled_back)
    assert runtime.step() == 1
    assert runtime.step() == 0
    assert seen == [{"n": 1}]
    job = runtime.jobs.get(job_id)
    assert (job.status, job.attempts) == (SUCCEEDED, 1)


def test_a_dedupe_key_makes_one_job_while_queued_not_while_running(runtime, clock):
    runtime.job("scan", lambda job: None)
    first = runtime.jobs.enqueue("scan", {"repo": "a"}, dedupe_key="scan:a")
    assert runtime.jobs.enqueue("scan", {"repo": "a"}, dedupe_key="scan:a") == first
    (claimed,) = runtime.claim_jobs(5)
    assert claimed.id == first
    second = runtime.jobs.enqueue("scan", {"repo": "a"}, dedupe_key="scan:a")
    assert second != first  # the running one may have read old state: a new one queues
    assert [j.status for j in runtime.jobs.list()] == [QUEUED, RUNNING]


def test_failures_back_off_exponentially_then_dead_letter_with_the_error(runtime, clock):
    calls = []

    def flaky(job) -> None:
        calls.append(clock())
        raise ValueError(f"receiver down ({len(calls)})")

    runtime.job("flaky", flaky)
    job_id = runtime.jobs.enqueue("flaky", {}, max_attempts=3)
    assert runtime.run_jobs() == 1
    job = runtime.jobs.get(job_id)
    assert (job.status, job.attempts) == (QUEUED, 1)
    assert job.run_at == clock() + timedelta(seconds=10)  # base 10 s, jitter factor 1.0
    clock.advance(9)
    assert runtime.run_jobs() == 0  # not due yet
    clock.advance(1)
    assert runtime.run_jobs() == 1
    assert runtime.jobs.get(job_id).run_at == clock() + timedelta(seconds=20)  # doubled
    clock.advance(20)
    assert runtime.run_jobs() == 1
    job = runtime.jobs.get(job_id)
    assert (job.status, job.attempts, job.last_error) == (DEAD, 3, "ValueError: receiver down (3)")
    clock.advance(3600)
    assert runtime.run_jobs() == 0
    assert [j.id for j in runtime.jobs.list(status=DEAD)] == [job_id]
    assert runtime.jobs.retry(job_id)
    assert runtime.jobs.get(job_id).status == QUEUED
    assert runtime.run_jobs() == 1
    assert runtime.jobs.get(job_id).attempts == 1


def test_backoff_is_capped_and_jittered(dockyard, clock):
    low = JobService(
        dockyard.db, clock=clock, backoff_base_seconds=10, backoff_max_seconds=25, jitter=lambda: 0.0
    )
    high = JobService(
        dockyard.db, clock=clock, backoff_base_seconds=10, backoff_max_seconds=25, jitter=lambda: 1.0
    )
    assert [low.backoff(n) for n in (1, 2, 3, 9)] == [5, 10, 12.5, 12.5]
    assert [high.backoff(n) for n in (1, 2, 3, 9)] == [15, 30, 37.5, 37.5]


def test_an_expired_lease_is_taken_over_and_the_old_owner_cannot_settle(dockyard, clock):
    ran = []
    killed = make_runtime(dockyard.db, clock)
    survivor = make_runtime(dockyard.db, clock)
    for runtime in (killed, survivor):
        runtime.job("long", lambda job: ran.append(job.id), lease_seconds=60)
    job_id = killed.jobs.enqueue("long", {}, max_attempts=2)
    (job,) = killed.claim_jobs(1)  # …and the process dies before running it
    assert survivor.run_jobs() == 0  # the lease still holds
    clock.advance(61)
    assert survivor.run_jobs() == 1
    assert ran == [job_id]
    assert not killed.jobs.succeed(job, killed.owner)
    assert survivor.jobs.get(job_id).status == SUCCEEDED


def test_a_job_whose_worker_keeps_dying_is_dead_lettered(dockyard, clock, runtime):
    runtime.job("crash", lambda job: None, lease_seconds=60)
    job_id = runtime.jobs.enqueue("crash", {}, max_attempts=2)
    for _ in range(2):
        assert len(runtime.claim_jobs(1)) == 1  # claimed, never settled
        clock.advance(61)
    assert runtime.claim_jobs(1) == []
    job = runtime.jobs.get(job_id)
    assert job.status == DEAD
    assert "lease expired" in job.last_error


def test_stats_give_depth_by_status_and_the_oldest_due_age(runtime, clock):
    runtime.job("ok", lambda job: None)
    assert runtime.jobs.stats().oldest_due_age_seconds is None
    runtime.jobs.enqueue("ok", {})
    clock.advance(30)
    runtime.jobs.enqueue("ok", {})
    runtime.jobs.enqueue("ok", {}, run_at=clock() + timedelta(hours=1))  # queued, not due
    runtime.jobs.enqueue("other", {})  # nobody here runs this kind
    stats = runtime.jobs.stats()
    assert stats.depth == {QUEUED: 4, RUNNING: 0, SUCCEEDED: 0, DEAD: 0}
    assert stats.oldest_due_age_seconds == 30
    clock.advance(1)
    assert runtime.run_jobs(slots=10) == 2
    assert runtime.jobs.stats().depth == {QUEUED: 2, RUNNING: 0, SUCCEEDED: 2, DEAD: 0}


def test_the_async_loop_runs_a_job_enqueued_after_it_started(dockyard):
    done = threading.Event()
    runtime = Runtime(
        dockyard.db, JobService(dockyard.db), dockyard.events, poll_seconds=0.05, idle_poll_seconds=0.2
    )
    runtime.job("ping", lambda job: done.set())

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(runtime.run)
            await anyio.to_thread.run_sync(runtime.jobs.enqueue, "ping", {})
            deadline = time.monotonic() + 10
            while not done.is_set():
                assert time.monotonic() < deadline, "the job never ran"
                await anyio.sleep(0.01)
            runtime.stop_claiming()
            assert await runtime.drain(5) == 0
            group.cancel_scope.cancel()

    anyio.run(main)
    (job,) = runtime.jobs.list()
    assert job.status == SUCCEEDED


# -- event consumers -------------------------------------------------------------------------------


def test_two_consumers_each_see_every_event_once(dockyard, runtime):
    seen: dict[str, list[str]] = {"replication": [], "scanning": []}
    for name, tags in seen.items():
        runtime.consumer(
            name, lambda conn, events, tags=tags: tags.extend(e.tag for e in events) or 0, batch=2
        )
    for tag in ("a", "b", "c"):
        record(dockyard.db, dockyard.events, "team/app", tag)
    while runtime.consume():
        pass
    record(dockyard.db, dockyard.events, "team/app", "d")
    runtime.consume()
    assert runtime.consume() == 0
    assert seen == {"replication": ["a", "b", "c", "d"], "scanning": ["a", "b", "c", "d"]}


def test_a_failing_consumer_keeps_its_cursor_and_its_writes_roll_back(dockyard, runtime):
    attempts = []

    def handler(conn, events) -> int:
        enqueue(conn, "follow-up", {"tags": [e.tag for e in events]})
        attempts.append([e.tag for e in events])
        if len(attempts) == 1:
            raise RuntimeError("handler failed halfway")
        return 1

    runtime.consumer("fragile", handler)
    record(dockyard.db, dockyard.events, "team/app", "a")
    assert runtime.consume() == 0  # logged, not raised
    assert runtime.jobs.list() == []  # its write rolled back with the cursor
    assert runtime.consume() == 1
    assert attempts == [["a"], ["a"]]
    assert [job.payload for job in runtime.jobs.list()] == [{"tags": ["a"]}]


def test_a_poison_event_is_set_aside_and_the_rest_flow(dockyard, clock):
    """A handler that always fails on one event must not block every later event for good."""
    runtime = make_runtime(dockyard.db, clock, consumer_attempts=3)
    seen: list[str] = []
    poisoned = {"bad"}

    def handler(conn, events) -> int:
        for event in events:
            if event.tag in poisoned:
                raise ValueError(f"cannot handle {event.tag}")
        seen.extend(event.tag for event in events)
        return len(events)

    runtime.consumer("picky", handler)
    for tag in ("a", "bad", "c", "d"):
        record(dockyard.db, dockyard.events, "team/app", tag)
    for _ in range(10):
        runtime.consume()
    assert seen == ["a", "c", "d"]
    dead = runtime.jobs.list(status="dead")
    assert [job.kind for job in dead] == [SET_ASIDE]
    assert dead[0].payload["consumer"] == "picky"
    assert "cannot handle bad" in (dead[0].last_error or "")
    # Fixed (here: the handler accepts it now), the operator retries the dead job: the event is replayed.
    poisoned.clear()
    assert runtime.jobs.retry(dead[0].id)
    assert runtime.run_jobs() == 1
    assert seen == ["a", "c", "d", "bad"]
    assert runtime.jobs.list(status="dead") == []


def test_database_errors_never_set_an_event_aside(dockyard, clock, monkeypatch):
    runtime = make_runtime(dockyard.db, clock, consumer_attempts=2)
    runtime.consumer("patient", lambda conn, events: len(events))
    record(dockyard.db, dockyard.events, "team/app", "a")

    def outage(*args, **kwargs):
        raise sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("database down"))

    monkeypatch.setattr(cursors, "pending", outage)
    for _ in range(5):
        assert runtime.consume() == 0
    monkeypatch.undo()
    assert runtime.consume() == 1
    assert runtime.jobs.list(status="dead") == []


def test_an_idle_consumer_moves_past_batches_unread_until_it_has_work(dockyard, runtime):
    """``idle``: nothing to do for any event (no webhook, no task), so no event row is read."""
    seen: list[str] = []
    idle = [True]
    runtime.consumer(
        "sleepy",
        lambda conn, events: seen.extend(e.tag for e in events) or 0,
        batch=2,
        idle=lambda conn: idle[0],
    )
    for tag in ("a", "b", "c"):
        record(dockyard.db, dockyard.events, "team/app", tag)
    assert runtime.consume() == 2  # one batch at a time, as when reading
    assert runtime.consume() == 1
    assert runtime.consume() == 0
    assert seen == []
    idle[0] = False
    record(dockyard.db, dockyard.events, "team/app", "d")
    assert runtime.consume() == 1
    assert seen == ["d"]  # what was skipped stays skipped; what came after is read


def test_an_idle_consumer_is_asked_inside_its_transaction_after_the_batch_is_fixed(dockyard, runtime):
    """A webhook made after the batch's events were fixed still sees them: ``idle`` is asked last."""
    seen: list[str] = []
    asked: list[bool] = []

    def idle(conn) -> bool:
        # What a webhook created by now would make the consumer see: the batch is read after this.
        asked.append(conn.in_transaction())
        return False

    runtime.consumer("late-hook", lambda conn, events: seen.extend(e.tag for e in events) or 0, idle=idle)
    record(dockyard.db, dockyard.events, "team/app", "a")
    assert runtime.consume() == 1
    assert asked == [True]
    assert seen == ["a"]
    assert runtime.consume() == 0
    assert asked == [True]  # no batch: not asked


#: PostgreSQL only: SQLite has one writer, so neither a second consumer nor a late commit can interleave.
ON_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@contextlib.contextmanager
def committed_late(dockyard) -> Iterator[None]:
    """Record "slow" (the smaller id) in a transaction committed when the block ends, and "fast"
    (the larger id) committed at once."""
    slow = dockyard.db.engine.connect()
    try:
        transaction = slow.begin()
        dockyard.events.record(slow, PUSH, "team/app", tag="slow")
        record(dockyard.db, dockyard.events, "team/app", "fast")
        yield
        transaction.commit()
    finally:
        slow.close()


@ON_POSTGRESQL
def test_a_consumer_locked_elsewhere_is_skipped_not_consumed_twice(dockyard, runtime):
    seen = []
    runtime.consumer("solo", lambda conn, events: seen.extend(events) or 0)
    record(dockyard.db, dockyard.events, "team/app", "a")
    runtime.consume()  # creates the cursor
    record(dockyard.db, dockyard.events, "team/app", "b")
    other = dockyard.db.engine.connect()
    try:
        with other.begin():
            other.execute(
                sa.select(event_cursors).where(event_cursors.c.consumer == "solo").with_for_update()
            )
            assert runtime.consume() == 0  # SKIP LOCKED: the other process has this batch
        assert runtime.consume() == 1
    finally:
        other.close()
    assert [e.tag for e in seen] == ["a", "b"]


@ON_POSTGRESQL
def test_an_event_committed_after_a_larger_id_is_not_skipped(dockyard, runtime):
    """A sequence hands out ids at insert time: id 1 can become visible after id 2."""
    seen = []
    runtime.consumer("ordered", lambda conn, events: seen.extend(e.tag for e in events) or 0)
    with committed_late(dockyard):
        ids = dict(
            dockyard.db.run_lookup(
                lambda conn: conn.execute(sa.text("SELECT tag, id FROM repository_events")).all()
            )
        )
        assert list(ids) == ["fast"]  # only the fast one is visible yet
        assert runtime.consume() == 0  # it waits: an older transaction is still running
    while runtime.consume():
        pass
    assert seen == ["slow", "fast"]
    ids = dict(
        dockyard.db.run_lookup(
            lambda conn: conn.execute(sa.text("SELECT tag, id FROM repository_events")).all()
        )
    )
    assert ids["slow"] < ids["fast"]


@ON_POSTGRESQL
def test_an_idle_consumer_never_moves_past_a_transaction_still_running(dockyard, runtime):
    """The skip obeys the same horizon as the read: it stops before an older transaction's events."""
    seen: list[str] = []
    idle = [True]
    runtime.consumer(
        "skipper", lambda conn, events: seen.extend(e.tag for e in events) or 0, idle=lambda conn: idle[0]
    )
    with committed_late(dockyard):
        assert runtime.consume() == 0  # "fast" is past the horizon while "slow" may still commit
        idle[0] = False  # a webhook appears before "slow" commits
    while runtime.consume():
        pass
    assert seen == ["slow", "fast"]


# -- schedules -------------------------------------------------------------------------------------


def test_a_schedule_runs_once_per_interval_across_two_runtimes(dockyard, clock, settings):
    other_db = Database(settings.database_url, pool_size=2)  # a second process: its own engine
    try:
        runs = []
        first, second = make_runtime(dockyard.db, clock), make_runtime(other_db, clock)
        for name, runtime in (("first", first), ("second", second)):
            runtime.schedule("prune", 60, lambda name=name: runs.append(name))
        assert first.run_due() == 1
        assert second.run_due() == 0
        clock.advance(59)
        assert first.run_due() + second.run_due() == 0
        clock.advance(1)
        assert second.run_due() == 1
        assert first.run_due() == 0
        assert runs == ["first", "second"]
        clock.advance(60)
        barrier = threading.Barrier(2)
        counts = []

        def race(runtime: Runtime) -> None:
            barrier.wait()
            counts.append(runtime.run_due())

        threads = [threading.Thread(target=race, args=(rt,)) for rt in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(counts) == [0, 1]
        assert len(runs) == 3
    finally:
        other_db.dispose()


def test_a_failing_schedule_is_recorded_and_runs_again_next_interval(dockyard, runtime, clock):
    calls = []

    def broken() -> None:
        calls.append(clock())
        raise OSError("disk on fire")

    runtime.schedule("broken", 30, broken)
    assert runtime.run_due() == 1
    with dockyard.db.read() as conn:
        row = conn.execute(
            sa.text("SELECT last_status, last_error FROM schedules WHERE name = 'broken'")
        ).one()
    assert tuple(row) == ("failed", "OSError: disk on fire")
    assert runtime.run_due() == 0
    clock.advance(30)
    assert runtime.run_due() == 1
    assert len(calls) == 2


def test_the_rooms_register_their_work_and_upload_expiry_runs_as_a_schedule(dockyard):
    runtime = dockyard.runtime
    assert [c.name for c in runtime.consumers] == ["webhooks", "builds"]
    on_postgresql = {"registry.refresh-statistics"} if not dockyard.db.is_sqlite else set()
    assert {s.name for s in runtime.schedules} == on_postgresql | {
        "access.prune-audit",
        "webhooks.prune-deliveries",
        "events.prune",
        "registry.expire-uploads",
        "lifecycle.expire-recycle-bin",
        "lifecycle.retention",
        "lifecycle.purge-schedules",
        "lifecycle.gc",
        "ratelimits.prune",
        "builds.recover",
        "builds.timers",
        "builds.base-poll",
        "builds.prune",
        "tiers.read-stored-bytes",
    }
    assert runtime.run_due() == 14 + len(on_postgresql)
    assert (
        runtime.run_due() == 0
    )  # next due in an hour (ten minutes for uploads, five for retention, a minute for purges, 5 s
    # for the stored bytes)
    with dockyard.db.read() as conn:
        statuses = set(conn.execute(sa.text("SELECT last_status FROM schedules")).scalars())
    assert statuses == {"succeeded"}
