"""The builds room's background work: recovery of dead workers' runs, timers, base-image triggers
(pushes here through the event log; other registries by polling), pruning of old runs and sources."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.builds.credentials import TaskCredentials
from dockyard.builds.models import build_run_logs, build_runs, build_task_bases, build_tasks, build_timers
from dockyard.builds.services.common import STOPPED_WORKER
from dockyard.builds.services.handler import local_hosts
from dockyard.builds.services.runs import RunService
from dockyard.builds.services.sources import SourceService
from dockyard.builds.services.tasks import ENABLED, TaskService
from dockyard.builds.spec import BASE_IMAGE, ERROR, FINAL_STATUSES, QUEUED, RUNNING, STARTED, TIMER
from dockyard.config import Settings
from dockyard.db import Database, utcnow
from dockyard.events.services import PUSH, EventService, RepositoryEvent
from dockyard.lifecycle.cron import cron_next
from dockyard.oci.mediatypes import MANIFEST_TYPES
from dockyard.upstream.client import DOCKER_HUB, open_upstream
from dockyard.upstream.interfaces import Credentials, UpstreamClient, UpstreamError

log = logging.getLogger(__name__)

TIMERS_SCHEDULE = "builds.timers"
TIMERS_EVERY = 60
RECOVER_SCHEDULE = "builds.recover"
BASE_POLL_SCHEDULE = "builds.base-poll"
PRUNE_SCHEDULE = "builds.prune"
PRUNE_EVERY = 3600
CONSUMER = "builds"
_ANY_BASE_TRIGGER = (
    sa.select(build_task_bases.c.task_id)
    .select_from(build_task_bases.join(build_tasks, build_tasks.c.id == build_task_bases.c.task_id))
    .where(build_tasks.c.base_image_trigger.is_(True), build_tasks.c.status == ENABLED)
    .limit(1)
)

OpenUpstream = Callable[[str, Credentials | None, Settings], UpstreamClient]
Clock = Callable[[], datetime]


class BuildJobs:
    """Schedules and the event consumer of the builds room (each runs once per registry)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        runs: RunService,
        tasks: TaskService,
        sources: SourceService,
        events: EventService,
        *,
        credentials: TaskCredentials | None = None,
        open_client: OpenUpstream = open_upstream,
        clock: Clock = utcnow,
    ) -> None:
        self._db = db
        self._settings = settings
        self._runs = runs
        self._tasks = tasks
        self._sources = sources
        self._events = events
        self._credentials = credentials
        self.open_client = open_client
        self.clock = clock

    # -- dead workers ---------------------------------------------------------------------------

    def recover(self) -> int:
        """Runs Started/Running whose heartbeat is older than 3 heartbeats end Error, their run
        credentials revoked; how many."""
        stale = self.clock() - timedelta(seconds=3 * self._settings.builds_heartbeat_seconds)
        dead = sa.or_(build_runs.c.heartbeat_at.is_(None), build_runs.c.heartbeat_at < stale)

        def work(conn: Connection) -> list[str]:
            rows = conn.execute(
                sa.select(build_runs)
                .where(build_runs.c.status.in_((STARTED, RUNNING)), dead)
                .with_for_update()
            ).all()
            for row in rows:
                self._runs.finish(conn, row, ERROR, STOPPED_WORKER)
            return [row.run_id for row in rows]

        recovered = self._db.run_write(work)
        found = len(recovered)
        if found:
            self._events.committed()
            if self._credentials is not None:
                self._credentials.revoke(recovered)
            log.warning("%d build runs lost their worker; marked Error", found)
        return found

    # -- timers ---------------------------------------------------------------------------------

    def fire_timers(self) -> int:
        """Queue a Timer run for each due timer, each exactly once (a conditional update claims it)."""
        now = self.clock()
        due = (
            sa.select(
                build_timers, build_tasks.c.name.label("task_name"), build_tasks.c.status.label("task_status")
            )
            .select_from(build_timers.join(build_tasks, build_tasks.c.id == build_timers.c.task_id))
            .where(build_timers.c.next_run_at <= now)
        )
        with self._db.read() as conn:
            rows = conn.execute(due).all()
        fired = 0
        for timer in rows:

            def work(conn: Connection, timer: Any = timer) -> bool:
                claimed = conn.execute(
                    build_timers.update()
                    .where(
                        build_timers.c.task_id == timer.task_id,
                        build_timers.c.name == timer.name,
                        build_timers.c.next_run_at == timer.next_run_at,
                    )
                    .values(next_run_at=cron_next(timer.schedule, now))
                ).rowcount
                if not claimed or not timer.enabled or timer.task_status != ENABLED:
                    return False
                self._tasks.run(timer.task_name, trigger=TIMER, detail={"timer": timer.name}, conn=conn)
                return True

            fired += bool(self._db.run_write(work))
        return fired

    # -- base images ----------------------------------------------------------------------------

    @staticmethod
    def idle(conn: Connection) -> bool:
        """Whether no enabled task rebuilds on a base image update: ``on_events`` would queue nothing."""
        return conn.execute(_ANY_BASE_TRIGGER).first() is None

    def on_events(self, conn: Connection, events: list[RepositoryEvent]) -> int:
        """The ``builds`` consumer: a push of a tag some task was built on queues that task."""
        pushes = [e for e in events if e.action == PUSH and e.tag]
        if not pushes:
            return 0
        hosts = local_hosts(self._settings)
        # One query for the whole batch (a busy registry hands over hundreds of pushes at once).
        rows = conn.execute(
            sa.select(
                build_tasks,
                build_task_bases.c.image,
                build_task_bases.c.repository.label("base_repository"),
                build_task_bases.c.tag.label("base_tag"),
            )
            .select_from(build_task_bases.join(build_tasks, build_tasks.c.id == build_task_bases.c.task_id))
            .where(
                build_task_bases.c.host.in_(hosts),
                build_task_bases.c.repository.in_(sorted({e.repository for e in pushes})),
                build_task_bases.c.tag.in_(sorted({e.tag or "" for e in pushes})),
                build_tasks.c.base_image_trigger.is_(True),
                build_tasks.c.status == ENABLED,
            )
        ).all()
        if not rows:
            return 0
        by_image: dict[tuple[str, str], list[Any]] = {}
        for row in rows:
            by_image.setdefault((row.base_repository, row.base_tag), []).append(row)
        queued = 0
        for event in pushes:
            for row in by_image.get((event.repository, event.tag or ""), ()):
                if _own_output(row, event.repository):
                    continue
                queued += self._queue_base_update(conn, row, f"{row.image}")
        return queued

    def _queue_base_update(self, conn: Connection, task: Any, image: str) -> int:
        pending = conn.execute(
            sa.select(build_runs.c.seq).where(
                build_runs.c.task_id == task.id,
                build_runs.c.status == QUEUED,
                build_runs.c.trigger == BASE_IMAGE,
            )
        ).first()
        if pending is not None:
            return 0  # one queued base-image run covers every update until it starts
        self._tasks.run(task.name, trigger=BASE_IMAGE, detail={"baseImage": image}, conn=conn)
        return 1

    def poll_bases(self) -> int:
        """One HEAD per base image on another registry; a changed digest queues its tasks."""
        hosts = local_hosts(self._settings)
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(build_task_bases)
                .join(build_tasks, build_tasks.c.id == build_task_bases.c.task_id)
                .where(
                    build_task_bases.c.host.not_in(hosts),
                    build_tasks.c.base_image_trigger.is_(True),
                    build_tasks.c.status == ENABLED,
                )
            ).all()
        by_ref: dict[tuple[str, str, str], list[Any]] = {}
        for row in rows:
            by_ref.setdefault((row.host, row.repository, row.tag), []).append(row)
        queued = 0
        for (host, repository, tag), bases in by_ref.items():
            try:
                client = self.open_client(DOCKER_HUB if host == "docker.io" else host, None, self._settings)
                try:
                    digest = client.head_manifest(repository, tag, MANIFEST_TYPES).digest
                finally:
                    client.close()
            except UpstreamError as exc:
                log.info("base image %s/%s:%s not checked: %s", host, repository, tag, exc)
                continue
            queued += self._db.run_write(
                lambda conn, bases=bases, digest=digest: self._changed(conn, bases, digest)
            )
        if queued:
            self._events.committed()
        return queued

    def _changed(self, conn: Connection, bases: list[Any], digest: str) -> int:
        queued = 0
        now = self.clock()
        for base in bases:
            conn.execute(
                build_task_bases.update()
                .where(build_task_bases.c.task_id == base.task_id, build_task_bases.c.image == base.image)
                .values(digest=digest, checked_at=now)
            )
            if base.digest is None or base.digest == digest:
                continue
            task = conn.execute(sa.select(build_tasks).where(build_tasks.c.id == base.task_id)).first()
            if task is not None:
                queued += self._queue_base_update(conn, task, base.image)
        return queued

    # -- pruning --------------------------------------------------------------------------------

    def prune(self) -> int:
        """Delete runs (with their logs) that ended more than ``builds_log_retention_days`` ago,
        and forget expired uploaded sources."""
        cutoff = self.clock() - timedelta(days=self._settings.builds_log_retention_days)

        def work(conn: Connection) -> int:
            old = sa.select(build_runs.c.seq).where(
                build_runs.c.status.in_(FINAL_STATUSES), build_runs.c.finished_at < cutoff
            )
            conn.execute(build_run_logs.delete().where(build_run_logs.c.run_seq.in_(old)))
            return conn.execute(
                build_runs.delete().where(
                    build_runs.c.status.in_(FINAL_STATUSES), build_runs.c.finished_at < cutoff
                )
            ).rowcount

        runs = self._db.run_write(work, durable=False)
        sources = self._sources.prune()
        if runs or sources:
            log.info("pruned %d build runs and %d expired build sources", runs, sources)
        return runs + sources


def repository_of(image: str) -> str:
    """The repository an image name (``[host/]repo[:tag]``, maybe ``{{.Run.Registry}}/…``) pushes to here."""
    image = image.split("@", maxsplit=1)[0]
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first.startswith("{{")):
        image = rest
    head, _, last = image.rpartition("/")
    name = last.split(":")[0]
    return f"{head}/{name}" if head else name


def _own_output(task: Any, repository: str) -> bool:
    """Whether ``repository`` is one the task pushes to (a task never triggers itself)."""
    return any(repository_of(image) == repository for image in task.images or [])
