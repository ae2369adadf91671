"""The imports room's registration: its service, routes and the ``imports.run`` job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.events.runtime import Runtime
from dockyard.imports.routes import ImportRoutes
from dockyard.imports.services import JOB_KIND, LEASE_SECONDS, ImportService
from dockyard.rooms import Dockyard, Kernel, Room


def _services(kernel: Kernel, built: Mapping[str, Any]) -> ImportService:
    return ImportService(kernel.db, kernel.settings, built["registry"])


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    return ImportRoutes(parts.service("imports"), policy, parts.access.audit).routes()


def _work(parts: Dockyard, runtime: Runtime) -> None:
    runtime.job(JOB_KIND, parts.service("imports").handle, lease_seconds=LEASE_SECONDS)


ROOM = Room("imports", services=_services, routes=_routes, work=_work)
