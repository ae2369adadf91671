"""The ratelimits room's registration: the limiter, its policy check and the pruning schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dockyard.ratelimits.services import RateLimiter
from dockyard.rooms import Dockyard, Kernel, Room

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from dockyard.access.policy import Policy
    from dockyard.events.runtime import Runtime

#: Idle rows are deleted this often (once per registry).
PRUNE_EVERY_SECONDS = 3600.0


def _services(kernel: Kernel, built: Mapping[str, Any]) -> RateLimiter:
    return RateLimiter(kernel.db, built["tiers"].current)


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    """No routes: the limiter joins the policy chain (when ``rate_limits_enabled``)."""
    if parts.settings.rate_limits_enabled:
        limiter: RateLimiter = parts.service("ratelimits")
        if policy.metrics is not None:
            limiter.attach_metrics(policy.metrics)
        limiter.client_ip = policy.client_ip
        policy.add_check(limiter.check)
    return ()


def _work(parts: Dockyard, runtime: Runtime) -> None:
    runtime.schedule("ratelimits.prune", PRUNE_EVERY_SECONDS, parts.service("ratelimits").prune)


ROOM = Room("ratelimits", services=_services, routes=_routes, work=_work)
