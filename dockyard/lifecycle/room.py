"""The lifecycle room's registration: its services, management routes and background work."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.events.runtime import Runtime
from dockyard.lifecycle.routes import build_routes
from dockyard.lifecycle.services import LifecycleServices, build_lifecycle_services
from dockyard.lifecycle.services.gc_runs import JOB_KIND
from dockyard.rooms import Dockyard, Room

#: A collection of a very large registry may take hours; its job lease must outlast it.
GC_LEASE_SECONDS = 6 * 3600


def _services_of(parts: Dockyard) -> LifecycleServices:
    return parts.service("lifecycle")


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    return build_routes(_services_of(parts), policy)


def _work(parts: Dockyard, runtime: Runtime) -> None:
    services = _services_of(parts)
    if services.gc is not None:
        runtime.job(JOB_KIND, services.gc.handle, lease_seconds=GC_LEASE_SECONDS)
        if parts.settings.gc_interval_seconds:
            runtime.schedule(JOB_KIND, parts.settings.gc_interval_seconds, services.gc.scheduled)


ROOM = Room("lifecycle", services=build_lifecycle_services, routes=_routes, work=_work)
