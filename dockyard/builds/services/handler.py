"""The ``builds.run`` job: admit the run under the registry-wide concurrency limit, run it, record it.

Status Queued → Started (context being prepared) → Running (steps) → a final status, each change in
a short transaction of its own. A run found Started or Running when its job is claimed was being
run by a worker that died: it is marked Error, never run twice. At capacity the run stays Queued
and a new job is queued a few seconds later (the current one succeeds).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import zlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.builds.credentials import TaskCredentials, registry_host
from dockyard.builds.interfaces import BuildError, ContextSource, Deadline, RunCanceled, StepTimedOut
from dockyard.builds.models import build_runs, build_task_bases, build_tasks
from dockyard.builds.origins import context_origin
from dockyard.builds.services.common import JOB_KIND, STOPPED_WORKER
from dockyard.builds.services.engine import RunEngine
from dockyard.builds.services.logs import DbLogSink, RunMonitor
from dockyard.builds.services.runs import RunService
from dockyard.builds.services.sources import SourceService
from dockyard.builds.spec import (
    CANCELED,
    ERROR,
    FAILED,
    FINAL_STATUSES,
    QUEUED,
    RUNNING,
    STARTED,
    SUCCEEDED,
    TIMEOUT,
    RunOutcome,
    RunVariables,
)
from dockyard.config import Settings
from dockyard.db import Database, utcnow
from dockyard.events.queue import Job, enqueue
from dockyard.events.services import EventService

log = logging.getLogger(__name__)

#: At capacity, a run's job is queued again this much later.
RETRY_SECONDS = 3
CONCURRENCY_LOCK = zlib.crc32(b"dockyard.builds.concurrency")


def parse_image(reference: str) -> tuple[str, str, str] | None:
    """``host/repo:tag`` → (host, repository, tag) as Docker reads it; None for a digest reference."""
    if "@" in reference:
        return None
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = "docker.io", reference
        if "/" not in path:
            path = f"library/{path}"
    repository, _, tag = path.rpartition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "latest")
    return host, repository, tag or "latest"


def _failure(exc: Exception) -> RunOutcome:
    """How a run that raised ends: Canceled, Timeout, or Failed with the message for its log."""
    if isinstance(exc, RunCanceled):
        return RunOutcome(CANCELED, "canceled")
    if isinstance(exc, StepTimedOut):
        return RunOutcome(TIMEOUT, str(exc) or "the run timed out")
    return RunOutcome(FAILED, str(exc) or type(exc).__name__)


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class RunHandler:
    """Runs queued runs (the job handler) with a ``RunEngine`` built by ``engine_factory``."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        runs: RunService,
        sources: SourceService,
        credentials: TaskCredentials,
        events: EventService,
        engine_factory: Callable[[], RunEngine],
        worker: str,
    ) -> None:
        self._db = db
        self._settings = settings
        self._runs = runs
        self._sources = sources
        self._credentials = credentials
        self._events = events
        self.engine_factory = engine_factory
        self.worker = worker

    def handle(self, job: Job) -> None:
        """The ``builds.run`` job handler."""
        self.execute(int(job.payload["run"]))

    # -- admission ------------------------------------------------------------------------------

    def _admit(self, conn: Connection, seq: int) -> Any:
        """Started, or None (ended, handed back to the queue, or found orphaned and marked Error)."""
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": CONCURRENCY_LOCK})
        row = conn.execute(sa.select(build_runs).where(build_runs.c.seq == seq).with_for_update()).first()
        if row is None or row.status in FINAL_STATUSES:
            return None
        if row.status in (STARTED, RUNNING):
            self._runs.finish(conn, row, ERROR, STOPPED_WORKER)
            return None
        if row.cancel_requested:
            self._runs.finish(conn, row, CANCELED, "canceled before it started")
            return None
        now = utcnow()
        alive = now - timedelta(seconds=3 * self._settings.builds_heartbeat_seconds)
        busy = conn.execute(
            sa.select(sa.func.count())
            .select_from(build_runs)
            .where(build_runs.c.status.in_((STARTED, RUNNING)), build_runs.c.heartbeat_at >= alive)
        ).scalar_one()
        if busy >= self._settings.builds_concurrency:
            enqueue(
                conn, JOB_KIND, {"run": seq}, max_attempts=1, run_at=now + timedelta(seconds=RETRY_SECONDS)
            )
            return None
        conn.execute(
            build_runs.update()
            .where(build_runs.c.seq == seq)
            .values(status=STARTED, started_at=now, heartbeat_at=now, worker=self.worker)
        )
        return conn.execute(sa.select(build_runs).where(build_runs.c.seq == seq)).first()

    # -- running --------------------------------------------------------------------------------

    def execute(self, seq: int) -> None:
        row = self._db.run_write(lambda conn: self._admit(conn, seq))
        self._events.committed()
        if row is None:
            return
        task = None
        if row.task_id is not None:
            with self._db.read() as conn:
                task = conn.execute(sa.select(build_tasks).where(build_tasks.c.id == row.task_id)).first()
        secrets = self._secrets(row, task)
        sink = DbLogSink(
            self._db, seq, [*secrets["args"].values(), *secrets["values"].values(), secrets["token"]]
        )
        monitor = RunMonitor(self._db, seq, self.worker, sink, self._settings.builds_heartbeat_seconds)
        assert self._settings.builds_dir is not None
        workdir = Path(self._settings.builds_dir) / row.run_id
        outcome: RunOutcome
        monitor.start()
        try:
            outcome = self._run(row, task, secrets, sink, monitor, workdir)
        except Exception as exc:
            log.exception("build run %s failed", row.run_id)
            outcome = RunOutcome(ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            monitor.stop()
            self._revoke(row.run_id)
        if outcome.error:
            sink.write(f"\nRun {row.run_id} {outcome.status}: {outcome.error}\n")
        else:
            sink.write(f"\nRun {row.run_id} {outcome.status}\n")
        sink.flush()
        self._record(seq, outcome)
        if workdir.exists():
            shutil.rmtree(workdir, onerror=self._cleanup_failed)

    def _revoke(self, run_id: str) -> None:
        """The run's end revokes its credential; if the database refuses now, it expires on its own
        (the run's timeout plus the margin) and the next run's revocation deletes its row."""
        try:
            self._credentials.revoke([run_id])
        except sa.exc.SQLAlchemyError as exc:
            log.warning("could not revoke the credential of build run %s: %s", run_id, exc)

    @staticmethod
    def _cleanup_failed(function: Any, path: str, excinfo: Any) -> None:
        log.warning("could not remove %s after a build run: %s", path, excinfo[1])

    @staticmethod
    def _secrets(row: Any, task: Any) -> dict[str, Any]:
        given = json.loads(row.secrets) if row.secrets else {}
        args = {**(task.secret_args if task is not None else {}), **given.get("args", {})}
        values = {**(task.secret_values if task is not None else {}), **given.get("values", {})}
        token = task.git_access_token if task is not None and task.git_access_token else ""
        location = (row.request.get("source") or {}).get("location") or ""
        if token and context_origin(location) != context_origin(task.context):
            token = ""  # queued before the task's context moved: the token stays with its own host
        return {"args": args, "values": values, "token": token}

    def _run(
        self,
        row: Any,
        task: Any,
        secrets: dict[str, Any],
        sink: DbLogSink,
        monitor: RunMonitor,
        workdir: Path,
    ) -> RunOutcome:
        request = dict(row.request)
        timeout = int(request.get("timeout") or 3600)
        run_deadline = time.monotonic() + timeout
        engine = self.engine_factory()
        sink.write(f"Run {row.run_id} started on {self.worker} ({row.trigger})\n")
        workdir.mkdir(parents=True, exist_ok=True)
        source_spec = request.get("source") or {"kind": "none"}
        ref = request.get("commit") or request.get("ref") or source_spec.get("ref")
        source = ContextSource(
            kind=source_spec.get("kind", "none"),
            location=source_spec.get("location") or "",
            ref=ref,
            folder=source_spec.get("folder"),
            token=secrets["token"] or None,
        )
        deadline = Deadline(at=run_deadline, canceled=monitor.canceled)
        try:
            registry = self._credentials.mint(row.run_id, timeout)
            sink.add_secret(registry.password)
            context = engine.prepare_context(
                source, workdir / "context", log=sink, read_source=self._sources.read, deadline=deadline
            )
            build_args = [*request.get("args", {}).items(), *secrets["args"].items()]
            spec = engine.task_spec({**request, "platform": row.platform}, context, build_args)
            if monitor.canceled():
                raise RunCanceled("canceled")
            self._db.run_write(
                lambda conn: conn.execute(
                    build_runs.update()
                    .where(build_runs.c.seq == row.seq, build_runs.c.status == STARTED)
                    .values(status=RUNNING, heartbeat_at=utcnow())
                )
            )
            values = {**request.get("values", {}), **secrets["values"]}
            variables = RunVariables(
                run_id=row.run_id,
                registry=registry.host,
                registry_name=self._settings.registry_name,
                date=time.strftime("%Y%m%d-%H%M%Sz", time.gmtime()),
                architecture=row.platform.split("/")[1] if "/" in row.platform else "amd64",
                commit=context.commit or request.get("commit") or "",
                branch=context.branch or request.get("branch") or "",
                task_name=row.task_name or "",
                values=values,
                secret_values=frozenset(secrets["values"]),
            )
            outcome = engine.execute(
                spec,
                context,
                variables,
                registry=registry,
                workdir=workdir,
                platform=row.platform,
                log=sink,
                canceled=monitor.canceled,
                run_deadline=run_deadline,
            )
        except (BuildError, ValueError, OSError) as exc:
            return _failure(exc)
        if monitor.canceled() and outcome.status != SUCCEEDED:
            return RunOutcome(CANCELED, "canceled", outcome.steps, outcome.images, outcome.base_images)
        return outcome

    # -- the outcome ----------------------------------------------------------------------------

    def _record(self, seq: int, outcome: RunOutcome) -> None:
        outputs = [{"repository": i.repository, "tag": i.tag, "digest": i.digest} for i in outcome.images]
        bases = [{"image": image, "digest": digest} for image, digest in outcome.base_images]
        steps = [
            {
                "id": s.id,
                "status": s.status,
                "exitCode": s.exit_code,
                "startTime": _iso(s.started_at),
                "finishTime": _iso(s.finished_at),
                "error": s.error,
            }
            for s in outcome.steps
        ]

        def work(conn: Connection) -> None:
            row = conn.execute(sa.select(build_runs).where(build_runs.c.seq == seq).with_for_update()).first()
            if row is None or row.status in FINAL_STATUSES:
                return  # recovered as Error meanwhile (a long database outage): keep that verdict
            self._runs.finish(
                conn, row, outcome.status, outcome.error, outputs=outputs, base_images=bases, steps=steps
            )
            if row.task_id is not None and outcome.status == SUCCEEDED and outcome.base_images:
                self._record_bases(conn, row.task_id, outcome.base_images)

        self._db.run_write(work)
        self._events.committed()

    @staticmethod
    def _record_bases(
        conn: Connection, task_id: int, base_images: tuple[tuple[str, str | None], ...]
    ) -> None:
        conn.execute(build_task_bases.delete().where(build_task_bases.c.task_id == task_id))
        seen = set()
        now = utcnow()
        for image, digest in base_images:
            parsed = parse_image(image)
            if parsed is None or image in seen:
                continue
            seen.add(image)
            host, repository, tag = parsed
            conn.execute(
                build_task_bases.insert().values(
                    task_id=task_id,
                    image=image,
                    host=host,
                    repository=repository,
                    tag=tag,
                    digest=digest,
                    checked_at=now,
                )
            )


def local_hosts(settings: Settings) -> frozenset[str]:
    """The ``host:port`` names under which base images are this registry's own."""
    names = {registry_host(settings), f"localhost:{settings.port}", f"127.0.0.1:{settings.port}"}
    if settings.host and settings.host not in ("0.0.0.0", "::"):  # noqa: S104 - compared, not bound
        names.add(f"{settings.host}:{settings.port}")
    return frozenset(names)


__all__ = ["QUEUED", "RunHandler", "local_hosts", "parse_image"]
