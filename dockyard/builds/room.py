"""The builds room's registration: services, routes, the ``builds.run`` job and the schedules/consumer."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.builds import jobs
from dockyard.builds.routes import BuildRoutes
from dockyard.builds.services import BuildServices, build_builds_services
from dockyard.builds.services.common import JOB_KIND, LEASE_SECONDS
from dockyard.events.runtime import Runtime
from dockyard.rooms import Dockyard, Room


def _services_of(parts: Dockyard) -> BuildServices:
    return parts.service("builds")


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    return BuildRoutes(_services_of(parts), policy, parts.access.audit).routes()


def _work(parts: Dockyard, runtime: Runtime) -> None:
    """Registry-wide bookkeeping everywhere; running builds only where ``builds_enabled`` is on."""
    builds = _services_of(parts)
    settings = parts.settings
    if settings.builds_enabled:
        runtime.job(JOB_KIND, builds.handler.handle, lease_seconds=LEASE_SECONDS)
    runtime.schedule(jobs.RECOVER_SCHEDULE, settings.builds_heartbeat_seconds, builds.jobs.recover)
    runtime.schedule(jobs.TIMERS_SCHEDULE, jobs.TIMERS_EVERY, builds.jobs.fire_timers)
    runtime.schedule(jobs.BASE_POLL_SCHEDULE, settings.builds_base_poll_seconds, builds.jobs.poll_bases)
    runtime.schedule(jobs.PRUNE_SCHEDULE, jobs.PRUNE_EVERY, builds.jobs.prune)
    runtime.consumer(jobs.CONSUMER, builds.jobs.on_events, idle=builds.jobs.idle)


ROOM = Room("builds", services=build_builds_services, routes=_routes, work=_work)
