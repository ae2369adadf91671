"""The cache room's registration: cache rules, credential sets, and the registry's pull-through hook."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.cache.pull import PullThroughCache
from dockyard.cache.routes import CacheRoutes
from dockyard.cache.services import CacheConfigService, count_rules
from dockyard.registry.services import RegistryServices
from dockyard.rooms import Dockyard, Kernel, Room


@dataclass(frozen=True)
class CacheServices:
    """The rules and credential sets (``config``) and the read path the registry calls (``pull``)."""

    config: CacheConfigService
    pull: PullThroughCache


def _services(kernel: Kernel, built: Mapping[str, Any]) -> CacheServices:
    registry: RegistryServices = built["registry"]
    config = CacheConfigService(kernel.db, built["tiers"])
    built["tiers"].add_counter("cache_rules", count_rules)
    pull = PullThroughCache(kernel.settings, kernel.db, registry, config)
    registry.hooks.pull_through = pull
    return CacheServices(config, pull)


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    return CacheRoutes(parts.service("cache").config, policy, parts.access.audit).routes()


ROOM = Room("cache", services=_services, routes=_routes)
