"""A fake build engine for the builds room's API tests, and helpers to drive runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dockyard.app import Dockyard
from dockyard.builds.interfaces import ContextSource, Deadline, LogSink, PreparedContext, RegistryAccess
from dockyard.builds.models import build_runs
from dockyard.builds.spec import RunOutcome, RunVariables, Step, StepOutcome, TaskSpec


@dataclass
class FakeEngine:
    """Records what a run asked for; logs, optionally waits, and ends with ``outcome``."""

    outcome: RunOutcome = field(default_factory=lambda: RunOutcome("Succeeded"))
    log_lines: tuple[str, ...] = ("step one\n",)
    #: When set, execute waits until it is set or the run is canceled.
    hold: threading.Event | None = None
    running: threading.Event = field(default_factory=threading.Event)
    sources: list[ContextSource] = field(default_factory=list)
    source_bytes: list[bytes] = field(default_factory=list)
    requests: list[Mapping[str, Any]] = field(default_factory=list)
    build_args: list[list[tuple[str, str]]] = field(default_factory=list)
    variables: list[RunVariables] = field(default_factory=list)
    registries: list[RegistryAccess] = field(default_factory=list)
    workdirs: list[Path] = field(default_factory=list)

    def prepare_context(
        self,
        source: ContextSource,
        dest: Path,
        *,
        log: LogSink,
        read_source: Callable[[str], Any],
        deadline: Deadline,
    ) -> PreparedContext:
        self.sources.append(source)
        dest.mkdir(parents=True, exist_ok=True)
        if source.kind == "upload":
            self.source_bytes.append(b"".join(read_source(source.location)))
        log.write(f"context {source.kind} ready\n")
        return PreparedContext(dest, commit="c0ffee" if source.kind == "git" else "")

    def task_spec(
        self, request: Mapping[str, Any], context: PreparedContext, build_args: list[tuple[str, str]]
    ) -> TaskSpec:
        self.requests.append(request)
        self.build_args.append(build_args)
        return TaskSpec(steps=(Step("acb_step_0", "cmd", "busybox echo hi"),))

    def execute(
        self,
        spec: TaskSpec,
        context: PreparedContext,
        variables: RunVariables,
        *,
        registry: RegistryAccess,
        workdir: Path,
        platform: str,
        log: LogSink,
        canceled: Callable[[], bool],
        run_deadline: float,
    ) -> RunOutcome:
        self.variables.append(variables)
        self.registries.append(registry)
        self.workdirs.append(workdir)
        for line in self.log_lines:
            log.write(line)
        self.running.set()
        if self.hold is not None:
            deadline = time.monotonic() + 20
            while not self.hold.wait(0.05):
                if canceled():
                    return RunOutcome("Canceled", "canceled", (StepOutcome("acb_step_0", "Canceled"),))
                assert time.monotonic() < deadline, "the fake run was never released"
        return self.outcome


def use_engine(node: Dockyard, engine: FakeEngine) -> FakeEngine:
    node.service("builds").executor_factory = lambda: engine
    return engine


def run_status(node: Dockyard, run_id: str) -> str:
    return node.service("builds").runs.get(run_id).status


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``predicate`` until it holds (a deadline, never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def set_run(node: Dockyard, run_id: str, **values: Any) -> None:
    seq = int(run_id[2:], 36)
    node.db.run_write(
        lambda conn: conn.execute(build_runs.update().where(build_runs.c.seq == seq).values(**values))
    )


def job_count(node: Dockyard, seq: int) -> int:
    from dockyard.events.models import jobs

    with node.db.read() as conn:
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(jobs.c.kind == "builds.run", jobs.c.status == "queued")
        ).scalar_one()
