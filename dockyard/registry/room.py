"""The registry room's registration: the OCI data plane's services and routes, upload expiry,
planner statistics (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.events.runtime import Runtime
from dockyard.registry import jobs
from dockyard.registry.routes import build_routes
from dockyard.registry.services import RegistryServices, build_registry_services
from dockyard.rooms import Dockyard, Kernel, Room


def _services(kernel: Kernel, built: Mapping[str, Any]) -> RegistryServices:
    quota = built["tiers"].quota if "tiers" in built else None
    return build_registry_services(kernel.settings, kernel.db, kernel.store, kernel.events, quota)


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    return build_routes(parts.registry, policy)


def _work(parts: Dockyard, runtime: Runtime) -> None:
    runtime.schedule(
        "registry.expire-uploads", jobs.EXPIRE_UPLOADS_EVERY, lambda: jobs.expire_uploads(parts.registry)
    )
    if not parts.db.is_sqlite:
        runtime.schedule(
            "registry.refresh-statistics",
            jobs.REFRESH_STATISTICS_EVERY,
            lambda: jobs.refresh_statistics(parts.db),
        )


ROOM = Room("registry", services=_services, routes=_routes, work=_work)
