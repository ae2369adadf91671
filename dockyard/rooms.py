"""How a room plugs in: one ``Room`` per capability, collected from one list by the app and the worker.

A room hands the app:

- ``services(kernel, built)``: its settings-derived services (``built`` holds the rooms before it);
- ``routes(parts, policy)``: its HTTP routes, guarded by the shared policy chain;
- ``work(parts, runtime)``: its background work, registered on the job runtime —
  ``runtime.job(kind, handler)``, ``runtime.consumer(name, handler)``,
  ``runtime.schedule(name, every_seconds, run)``, ``runtime.task(loop)`` and per-process
  ``runtime.flush(every_seconds, run)``.

``dockyard.app.ROOMS`` is the list; adding a room is one line there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dockyard.config import Settings
from dockyard.db import Database
from dockyard.events.queue import JobService
from dockyard.events.runtime import Runtime
from dockyard.events.services import EventService
from dockyard.storage import BlobStore

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from dockyard.access.policy import Policy
    from dockyard.access.services import AccessServices
    from dockyard.registry.services import RegistryServices
    from dockyard.webhooks.services import WebhookService


@dataclass(frozen=True)
class Kernel:
    """What every room may build on: settings, the database, the blob store, the event log, the job queue."""

    settings: Settings
    db: Database
    store: BlobStore
    events: EventService
    jobs: JobService


@dataclass(frozen=True)
class Dockyard:
    """Everything one running registry is made of: the kernel, each room's services, the runtime."""

    settings: Settings
    db: Database
    store: BlobStore
    events: EventService
    jobs: JobService
    runtime: Runtime
    services: Mapping[str, Any] = field(default_factory=dict)

    def service(self, room: str) -> Any:
        """The services room ``room`` built."""
        return self.services[room]

    @property
    def registry(self) -> RegistryServices:
        return self.services["registry"]

    @property
    def access(self) -> AccessServices:
        return self.services["access"]

    @property
    def webhooks(self) -> WebhookService:
        return self.services["webhooks"]


def _no_routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    return ()


def _no_work(parts: Dockyard, runtime: Runtime) -> None:
    return None


@dataclass(frozen=True)
class Room:
    """One capability's description of itself (see the module docstring)."""

    name: str
    services: Callable[[Kernel, Mapping[str, Any]], Any] | None = None
    routes: Callable[[Dockyard, Policy], Sequence[BaseRoute]] = _no_routes
    work: Callable[[Dockyard, Runtime], None] = _no_work
