"""The seam between the run handler and the build machinery: context, steps, execution.

``DefaultEngine`` wires the executor helper's modules (contexts, buildah, executor) and the task-file
parser; tests hand the room another ``RunEngine`` (``BuildServices.executor_factory``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from dockyard.builds.interfaces import ContextSource, Deadline, LogSink, PreparedContext, RegistryAccess
from dockyard.builds.spec import RunOutcome, RunVariables, TaskSpec
from dockyard.config import Settings

ReadSource = Callable[[str], Iterator[bytes]]


class RunEngine(Protocol):
    """What the ``builds.run`` handler needs to turn a run request into an outcome."""

    def prepare_context(
        self, source: ContextSource, dest: Path, *, log: LogSink, read_source: ReadSource, deadline: Deadline
    ) -> PreparedContext: ...

    def task_spec(
        self, request: Mapping[str, Any], context: PreparedContext, build_args: list[tuple[str, str]]
    ) -> TaskSpec: ...

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
    ) -> RunOutcome: ...


class DefaultEngine:
    """buildah + podman through ``dockyard.builds.executor`` (imported when a run needs them)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def prepare_context(
        self, source: ContextSource, dest: Path, *, log: LogSink, read_source: ReadSource, deadline: Deadline
    ) -> PreparedContext:
        from dockyard.builds.contexts import prepare_context

        return prepare_context(
            source, dest, log=log, read_source=read_source, settings=self._settings, deadline=deadline
        )

    def task_spec(
        self, request: Mapping[str, Any], context: PreparedContext, build_args: list[tuple[str, str]]
    ) -> TaskSpec:
        from dockyard.builds import taskfile

        kind = request["type"]
        if kind == "build":
            return taskfile.quick_build_spec(
                request.get("images") or [],
                request.get("file"),
                build_args,
                request.get("platform"),
                bool(request.get("noPush")),
                bool(request.get("noCache")),
            )
        if kind == "cmd":
            return taskfile.quick_cmd_spec(request["cmd"])
        if kind == "patch":
            spec, dockerfile = taskfile.patch_spec(request["image"], request["tag"])
            (context.path / "Dockerfile").write_text(dockerfile)
            return spec
        text = request.get("taskFile")
        if not text:
            path = (context.path / (request.get("file") or "acr-task.yaml")).resolve()
            if not path.is_relative_to(context.path.resolve()) or not path.is_file():
                raise ValueError(f"the task file {request.get('file')!r} is not in the context")
            text = path.read_text()
        return taskfile.load_task_file(text)

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
        from dockyard.builds.buildah import BuildahBuilder
        from dockyard.builds.executor import Executor

        builder = BuildahBuilder(
            workdir / "builder", registry, platform, network=self._settings.builds_network
        )
        # the executor closes the builder (its processes, containers and private store) however it ends
        return Executor(builder, registry, log).execute(spec, context, variables, canceled, run_deadline)
