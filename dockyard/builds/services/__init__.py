"""The builds room's services, built together by ``build_builds_services``."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dockyard.builds.credentials import TaskCredentials
from dockyard.builds.services.engine import DefaultEngine, RunEngine
from dockyard.builds.services.handler import RunHandler
from dockyard.builds.services.quick import QuickRuns
from dockyard.builds.services.runs import RunService
from dockyard.builds.services.sources import SourceService
from dockyard.builds.services.tasks import TaskService
from dockyard.rooms import Kernel

if TYPE_CHECKING:
    from dockyard.builds.jobs import BuildJobs


@dataclass
class BuildServices:
    """What the builds room offers. ``executor_factory`` builds the engine each run uses (tests swap it)."""

    tasks: TaskService
    runs: RunService
    quick: QuickRuns
    sources: SourceService
    credentials: TaskCredentials
    handler: RunHandler
    jobs: BuildJobs

    @property
    def executor_factory(self) -> Callable[[], RunEngine]:
        return self.handler.engine_factory

    @executor_factory.setter
    def executor_factory(self, factory: Callable[[], RunEngine]) -> None:
        self.handler.engine_factory = factory


def build_builds_services(kernel: Kernel, built: Mapping[str, Any]) -> BuildServices:
    """The builds services of one registry; uploaded sources are kept from garbage collection."""
    from dockyard.builds.jobs import BuildJobs  # it builds on these services' modules

    settings, db = kernel.settings, kernel.db
    runs = RunService(db, kernel.events)
    tasks = TaskService(db, settings, runs, kernel.events)
    sources = SourceService(
        db, kernel.store, settings.builds_source_max_bytes, settings.builds_source_retention_hours
    )
    credentials = TaskCredentials(settings, built["access"])
    worker = f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:12]}"
    handler = RunHandler(
        db, settings, runs, sources, credentials, kernel.events, lambda: DefaultEngine(settings), worker
    )
    if "lifecycle" in built:
        built["lifecycle"].kept_blobs.append(sources.kept_blobs)
    return BuildServices(
        tasks=tasks,
        runs=runs,
        quick=QuickRuns(db, settings, tasks, sources),
        sources=sources,
        credentials=credentials,
        handler=handler,
        jobs=BuildJobs(db, settings, runs, tasks, sources, kernel.events, credentials=credentials),
    )
