"""The registry's side of the pull-through cache: is a repository a cache target, and push refusal."""

from __future__ import annotations

from dockyard.asgi import run_sync
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.services.common import ContentHooks, PullThrough

#: Set on answers whose content was fetched from the upstream during the request (ACR: X-Azure-Origin).
ORIGIN_HEADER = "X-Dockyard-Origin"


async def cache_for(hooks: ContentHooks, name: str) -> PullThrough | None:
    """The pull-through cache if a rule covers ``name`` (from memory; a thread only when it is old)."""
    pull = hooks.pull_through
    if pull is None:
        return None
    covered = pull.covers(name)
    if covered is None:
        covered = await run_sync(pull.covered, name)
    return pull if covered else None


async def refuse_cache_push(hooks: ContentHooks, name: str) -> None:
    """403 DENIED for a push into a cache target repository (as ACR)."""
    if await cache_for(hooks, name) is not None:
        raise RegistryError(
            ErrorCode.DENIED,
            f"repository {name!r} is the target of a cache rule: it takes no pushes",
            detail={"name": name},
        )
