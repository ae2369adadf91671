"""The lifecycle room's registration: its services, management routes and background work."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.events.runtime import Runtime
from dockyard.lifecycle.routes import build_routes
from dockyard.lifecycle.services import LifecycleServices, build_lifecycle_services
from dockyard.rooms import Dockyard, Room


def _services_of(parts: Dockyard) -> LifecycleServices:
    return parts.service("lifecycle")


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    return build_routes(_services_of(parts), policy)


def _work(parts: Dockyard, runtime: Runtime) -> None:
    return None


ROOM = Room("lifecycle", services=build_lifecycle_services, routes=_routes, work=_work)
