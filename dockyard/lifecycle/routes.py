"""The lifecycle room's management routes (/api/v1/...)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.lifecycle.services import LifecycleServices


def build_routes(services: LifecycleServices, policy: Policy) -> list[BaseRoute]:
    """Every route of the lifecycle room."""
    return []
