"""The job runtime: runs every room's jobs, event consumers and schedules in one loop per process.

Rooms register what they need (``job``, ``consumer``, ``schedule``, ``task``, ``flush``) while
the app is built; ``run`` then works until cancelled: it wakes when this process commits an
event someone wants, when another process's work shows (``changed``, asked every ``poll_seconds``:
PostgreSQL's LISTEN, SQLite's data version), or after ``poll_seconds`` for other processes' work. While
rounds find nothing, that wait doubles up to ``idle_poll_seconds``, so an idle registry costs
little. Tests drive it by hand with ``step`` (or ``consume`` / ``run_due`` / ``run_jobs``) and a
fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.asgi import run_sync
from dockyard.db import Database, utcnow
from dockyard.events import cursors, schedules
from dockyard.events.cursors import Consumer, ConsumerHandler
from dockyard.events.queue import DEAD, Clock, Job, JobService
from dockyard.events.schedules import Schedule
from dockyard.events.services import EventService

log = logging.getLogger(__name__)

#: After a wake-up the runtime waits this long, so a burst of commits costs one round, not one each.
BATCH_SECONDS = 0.05
DEFAULT_LEASE_SECONDS = 300.0


def idle_wait(poll: float, idle_poll: float, idle_rounds: int) -> float:
    """The wait after ``idle_rounds`` rounds in a row that found nothing: ``poll``, doubling from
    the first idle round, never above ``idle_poll`` (nor below ``poll``)."""
    if idle_rounds <= 0:
        return poll
    return min(max(poll, idle_poll), poll * 2.0 ** min(idle_rounds, 32))


class Task(Protocol):
    """A room's own long-running loop (webhook delivery), started and stopped with the runtime."""

    async def run(self) -> None: ...

    def stop_claiming(self) -> None: ...

    async def drain(self, timeout: float) -> int: ...


@dataclass(frozen=True)
class JobKind:
    kind: str
    handler: Callable[[Job], Any]
    lease_seconds: float


@dataclass(frozen=True)
class Flush:
    """Per-process work on memory (pull and audit batches): every ``every_seconds`` and at shutdown."""

    every_seconds: float
    run: Callable[[], Any]


class CommitWatch:
    """``Runtime.changed`` on SQLite: whether any connection (of any process) committed since the
    last call, from ``PRAGMA data_version`` on the event loop's connection; True when it cannot
    tell (off the loop's thread, or the pragma failed)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._seen: tuple[int, int] | None = None

    def __call__(self) -> bool:
        version = self._db.data_version()
        changed = version is None or version != self._seen
        self._seen = version
        return changed


class WorkNotices:
    """``Runtime.changed`` on PostgreSQL: whether a ``dockyard_work`` notice arrived (``set``, from
    the listener's thread) since the last call. Read at the runtime's poll, never more often: under
    a stream of pushes, every push notifies every process, and a round per notice would cost more
    than the notices save."""

    def __init__(self) -> None:
        self._arrived = threading.Event()

    def set(self) -> None:
        self._arrived.set()

    def __call__(self) -> bool:
        arrived = self._arrived.is_set()
        if arrived:
            self._arrived.clear()
        return arrived


class Runtime:
    """Registrations from every room, and the loop that runs them."""

    def __init__(
        self,
        db: Database,
        jobs: JobService,
        events: EventService,
        *,
        poll_seconds: float = 0.5,
        idle_poll_seconds: float = 4.0,
        concurrency: int = 4,
        consumer_attempts: int = 5,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.jobs = jobs
        self.events = events
        self.poll = poll_seconds
        self.idle_poll = idle_poll_seconds
        #: Asked every ``poll`` seconds while idle, on the loop's thread: did other processes' work
        #: show since the last call (``CommitWatch``, ``WorkNotices``)? None: only wake-ups and the
        #: wait end a pause.
        self.changed: Callable[[], bool] | None = None
        self.concurrency = concurrency
        self._clock = clock
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self.kinds: dict[str, JobKind] = {cursors.SET_ASIDE: JobKind(cursors.SET_ASIDE, self._replay, 300)}
        self.consumers: list[Consumer] = []
        self.schedules: list[Schedule] = []
        self.tasks: list[Task] = []
        self.flushes: list[Flush] = []
        self._prepared = False
        #: Failing on the same event this many times in a row sets it aside.
        self.consumer_attempts = consumer_attempts
        self._consumer_failures: dict[str, int] = {}
        self._claiming = True
        self._in_flight = 0
        self._running_schedules: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    # -- registration (while the app is built) ----------------------------------------------------

    def job(
        self, kind: str, handler: Callable[[Job], Any], *, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> None:
        """Run ``handler(job)`` in a worker thread for each job of ``kind``; raising means retry."""
        if kind in self.kinds:
            raise ValueError(f"job kind {kind!r} is registered twice")
        self.kinds[kind] = JobKind(kind, handler, lease_seconds)

    def consumer(
        self,
        name: str,
        handler: ConsumerHandler,
        *,
        batch: int = 500,
        wants: Callable[..., bool] | None = None,
        after_commit: Callable[[], None] | None = None,
        idle: Callable[[Connection], bool] | None = None,
    ) -> None:
        """Hand every event to ``handler(conn, events)``, batch by batch, after ``name``'s cursor
        (``idle(conn)`` true: move past the batch unread, see ``Consumer.idle``)."""
        if any(c.name == name for c in self.consumers):
            raise ValueError(f"event consumer {name!r} is registered twice")
        self.consumers.append(Consumer(name, handler, batch, wants, after_commit, idle))
        if wants is not None:
            self.events.subscribe(wants)

    def schedule(self, name: str, every_seconds: float, run: Callable[[], Any]) -> None:
        """Run ``run()`` every ``every_seconds``, once per registry."""
        if any(s.name == name for s in self.schedules):
            raise ValueError(f"schedule {name!r} is registered twice")
        self.schedules.append(Schedule(name, every_seconds, run))

    def task(self, task: Task) -> None:
        """Run a room's own loop alongside the runtime."""
        self.tasks.append(task)

    def flush(self, every_seconds: float, run: Callable[[], Any]) -> None:
        """Per-process memory work: run by the serving process every ``every_seconds`` and at shutdown."""
        self.flushes.append(Flush(every_seconds, run))

    # -- one round, by hand (tests) or from ``run`` ----------------------------------------------

    def prepare(self) -> None:
        """Create the registered schedules' rows (idempotent; every process does it once)."""
        if not self._prepared:
            schedules.ensure(self.db, self.schedules, self._clock())
            self._prepared = True

    def consume(self) -> int:
        """Give each consumer its next batch; return how many events were read in all.

        After a handler fails, its consumer reads one event at a time, so the event it fails
        on is found; failing on that one ``consumer_attempts`` times in a row sets it aside
        as a dead job and the consumer goes on (a poison event never blocks the rest).
        Database errors are not the event's fault: they are retried without counting.
        """
        read = 0
        for consumer in self.consumers:
            failures = self._consumer_failures.get(consumer.name, 0)
            try:
                count, done = cursors.consume(self.db, consumer, limit=1 if failures else None)
            except sa.exc.DBAPIError:
                log.exception("event consumer %s: database error; batch read again later", consumer.name)
                continue
            except Exception as exc:
                self._consumer_failed(consumer, failures + 1, exc)
                continue
            self._consumer_failures.pop(consumer.name, None)
            read += count
            if done:
                self.wake()  # what it queued may be for us
        return read

    def _consumer_failed(self, consumer: cursors.Consumer, failures: int, exc: Exception) -> None:
        if failures < self.consumer_attempts:
            self._consumer_failures[consumer.name] = failures
            log.warning("event consumer %s failed (%d in a row): %s", consumer.name, failures, exc)
            return
        self._consumer_failures.pop(consumer.name, None)
        event_id = cursors.set_aside(self.db, consumer, f"{type(exc).__name__}: {exc}")
        log.error(
            "event consumer %s failed %d times on event %s; set aside as a dead job "
            "(`dockyard job list --status dead`, then `dockyard job retry ID`)",
            consumer.name,
            failures,
            event_id,
        )

    def _replay(self, job: Job) -> None:
        """The handler of set-aside events: hand the event to its consumer again."""
        name, event_id = job.payload["consumer"], int(job.payload["event"])
        consumer = next((c for c in self.consumers if c.name == name), None)
        if consumer is None:
            raise LookupError(f"no event consumer {name!r} is registered")
        cursors.replay(self.db, consumer, event_id)

    def due_schedules(self) -> list[Schedule]:
        """The schedules this process just claimed to run now."""
        self.prepare()
        now = self._clock()
        by_name = {s.name: s for s in self.schedules}
        claimed = []
        for name in schedules.due(self.db, now):
            schedule = by_name.get(name)
            if schedule is None or name in self._running_schedules:
                continue
            if schedules.claim(self.db, schedule, now):
                claimed.append(schedule)
        return claimed

    def run_schedule(self, schedule: Schedule) -> None:
        self._running_schedules.add(schedule.name)
        error = None
        try:
            schedule.run()
        except Exception as exc:
            log.exception("schedule %s failed", schedule.name)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self._running_schedules.discard(schedule.name)
        schedules.record(self.db, schedule.name, error)

    def run_due(self) -> int:
        """Run the schedules that are due, here and now; return how many ran."""
        claimed = self.due_schedules()
        for schedule in claimed:
            self.run_schedule(schedule)
        return len(claimed)

    def claim_jobs(self, slots: int) -> list[Job]:
        leases = {kind: spec.lease_seconds for kind, spec in self.kinds.items()}
        return self.jobs.claim(list(self.kinds), self.owner, slots, leases)

    def execute(self, job: Job) -> str:
        """Run one claimed job's handler and settle it; return its new status."""
        try:
            self.kinds[job.kind].handler(job)
        except Exception as exc:
            status = self.jobs.fail(job, self.owner, f"{type(exc).__name__}: {exc}")
            log.log(
                logging.WARNING if status == DEAD else logging.INFO,
                "job %d (%s) attempt %d failed: %s; now %s",
                job.id,
                job.kind,
                job.attempts,
                exc,
                status,
            )
            return status
        self.jobs.succeed(job, self.owner)
        return "succeeded"

    def run_jobs(self, slots: int | None = None) -> int:
        """Claim due jobs and run them one after another here; return how many ran."""
        claimed = self.claim_jobs(self.concurrency if slots is None else slots)
        for job in claimed:
            self.execute(job)
        return len(claimed)

    def step(self) -> int:
        """One whole round in the calling thread: consumers, due schedules, due jobs."""
        return self.consume() + self.run_due() + self.run_jobs()

    # -- the loop ---------------------------------------------------------------------------------

    def wake(self) -> None:
        """Start the next round soon (from any thread)."""
        # a loop that already closed (an app that shut down while its work finished) needs no wake-up
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop_claiming(self) -> None:
        """Start no more jobs or schedules (graceful shutdown); those running, and tasks' work, finish."""
        self._claiming = False
        for task in self.tasks:
            task.stop_claiming()

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds in all for running work to finish; return how much did not."""
        deadline = anyio.current_time() + timeout
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        left = self._in_flight
        for task in self.tasks:
            left += await task.drain(max(0.0, deadline - anyio.current_time()))
        return left

    async def run(self) -> None:
        """Work until cancelled."""
        self._loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()
        self.events.on_recorded(self.wake)
        async with anyio.create_task_group() as group:
            for task in self.tasks:
                group.start_soon(task.run)
            idle_rounds = 0
            while True:
                wake.clear()
                found = 1  # a failed round, or none while draining, keeps the short wait
                if self._claiming:
                    try:
                        found = await self._round(group)
                    except Exception:
                        log.exception("job runtime round failed; retrying")
                idle_rounds = 0 if found else idle_rounds + 1
                await self._pause(wake, idle_wait(self.poll, self.idle_poll, idle_rounds))

    async def _pause(self, wake: asyncio.Event, seconds: float) -> None:
        """Wait ``seconds``, or less: until a wake-up (then ``BATCH_SECONDS`` more), or until
        ``changed`` (asked every ``poll`` seconds) says the database changed."""
        deadline = anyio.current_time() + seconds
        while (left := deadline - anyio.current_time()) > 0:
            with anyio.move_on_after(min(left, self.poll)):
                await wake.wait()
                await anyio.sleep(BATCH_SECONDS)
                return
            if self.changed is not None and self.changed():
                return

    async def _round(self, group: anyio.abc.TaskGroup) -> int:
        """Consume, start due schedules and claimed jobs; how many things it found to do."""
        await run_sync(self.prepare)
        found = await run_sync(self.consume)
        for schedule in await run_sync(self.due_schedules):
            found += 1
            self._started()
            group.start_soon(self._background, self.run_schedule, schedule)
        for job in await run_sync(self.claim_jobs, self.concurrency - self._in_flight):
            found += 1
            self._started()
            group.start_soon(self._background, self.execute, job)
        return found

    def _started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    async def _background(self, work: Callable[[Any], Any], item: Any) -> None:
        try:
            await run_sync(work, item)
        except Exception:
            log.exception("background work %r failed", item)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
            self.wake()
