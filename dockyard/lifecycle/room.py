"""The lifecycle room's registration: its services, management routes and background work."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.events.runtime import Runtime
from dockyard.lifecycle import jobs
from dockyard.lifecycle.recycle_routes import recycle_routes
from dockyard.lifecycle.routes import build_routes
from dockyard.lifecycle.services import LifecycleServices, build_lifecycle_services
from dockyard.lifecycle.services.gc_runs import JOB_KIND
from dockyard.lifecycle.services.purge import JOB_KIND as PURGE_JOB
from dockyard.lifecycle.services.purge import LEASE_SECONDS as PURGE_LEASE_SECONDS
from dockyard.lifecycle.services.purge import TICK_SCHEDULE as PURGE_TICK
from dockyard.lifecycle.services.purge import TICK_SECONDS as PURGE_TICK_SECONDS
from dockyard.rooms import Dockyard, Room

#: A collection of a very large registry may take hours; its job lease must outlast it.
GC_LEASE_SECONDS = 6 * 3600


def _services_of(parts: Dockyard) -> LifecycleServices:
    return parts.service("lifecycle")


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    services = _services_of(parts)
    return [
        *build_routes(services, policy, parts.access.audit),
        *recycle_routes(services.recycle, policy, parts.access.audit),
    ]


def _work(parts: Dockyard, runtime: Runtime) -> None:
    services = _services_of(parts)
    if services.gc is not None:
        runtime.job(JOB_KIND, services.gc.handle, lease_seconds=GC_LEASE_SECONDS)
        if parts.settings.gc_interval_seconds:
            runtime.schedule(JOB_KIND, parts.settings.gc_interval_seconds, services.gc.scheduled)
    runtime.job(PURGE_JOB, services.purge.handle, lease_seconds=PURGE_LEASE_SECONDS)
    runtime.schedule(PURGE_TICK, PURGE_TICK_SECONDS, services.purge.tick)
    recycle = services.recycle
    if recycle is not None:
        every = jobs.EXPIRE_RECYCLE_BIN_EVERY
        runtime.schedule("lifecycle.expire-recycle-bin", every, lambda: jobs.expire_recycle_bin(recycle))
        runtime.schedule("lifecycle.retention", jobs.RETENTION_EVERY, lambda: jobs.apply_retention(recycle))


ROOM = Room("lifecycle", services=build_lifecycle_services, routes=_routes, work=_work)
