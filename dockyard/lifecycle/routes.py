"""The lifecycle room's management routes (/api/v1/...)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.access.services.audit import AuditService
from dockyard.lifecycle.purge_routes import PurgeRoutes
from dockyard.lifecycle.services import LifecycleServices


def build_routes(services: LifecycleServices, policy: Policy, audit: AuditService) -> list[BaseRoute]:
    """Every route of the lifecycle room."""
    return [*PurgeRoutes(services.purge, policy, audit).routes()]
