"""The access room's registration: identity services, the token and management routes, audit upkeep."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.access.routes.identities import IdentityRoutes
from dockyard.access.routes.management import ManagementRoutes
from dockyard.access.routes.oauth import OAuthRoutes
from dockyard.access.routes.openapi import OpenApiRoutes
from dockyard.access.services import AccessServices, build_access_services
from dockyard.db import utcnow
from dockyard.events.runtime import Runtime
from dockyard.rooms import Dockyard, Kernel, Room

log = logging.getLogger(__name__)

#: How often old audit records are looked for.
PRUNE_AUDIT_SECONDS = 3600.0


def _services(kernel: Kernel, built: Mapping[str, Any]) -> AccessServices:
    return build_access_services(kernel.settings, kernel.db, built["tiers"])


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    return [
        *OAuthRoutes(parts.access, policy).routes(),
        *ManagementRoutes(parts.access, policy, parts.settings.registry_name).routes(),
        *IdentityRoutes(parts.access, policy).routes(),
        *OpenApiRoutes().routes(),
    ]


def _work(parts: Dockyard, runtime: Runtime) -> None:
    audit = parts.access.audit
    runtime.flush(parts.settings.audit_window_seconds, audit.flush)

    def prune() -> None:
        pruned = audit.prune(utcnow() - timedelta(days=parts.settings.audit_retention_days))
        if pruned:
            log.info("pruned %d audit records", pruned)

    runtime.schedule("access.prune-audit", PRUNE_AUDIT_SECONDS, prune)


ROOM = Room("access", services=_services, routes=_routes, work=_work)
