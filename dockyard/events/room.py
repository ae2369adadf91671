"""The events room's registration: the event log's routes, pull batching, pruning."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.events import jobs
from dockyard.events.routes import EventRoutes
from dockyard.events.runtime import Runtime
from dockyard.rooms import Dockyard, Room


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    return EventRoutes(parts.events, policy).routes()


def _work(parts: Dockyard, runtime: Runtime) -> None:
    runtime.flush(jobs.PULL_FLUSH_SECONDS, parts.events.flush_pulls)
    runtime.schedule(
        "events.prune",
        jobs.PRUNE_EVERY,
        lambda: jobs.prune(
            parts.events,
            parts.jobs,
            parts.settings.event_retention_days,
            [consumer.name for consumer in runtime.consumers],
        ),
    )


ROOM = Room("events", routes=_routes, work=_work)
