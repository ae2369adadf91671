"""The lifecycle room's services, one module per concern, built by ``build_lifecycle_services``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dockyard.access.permissions import CONTENT_DELETE
from dockyard.lifecycle.interfaces import KeptBlobs
from dockyard.lifecycle.services.gc import GarbageCollector
from dockyard.lifecycle.services.gc_runs import GcService
from dockyard.lifecycle.services.policies import PolicyService
from dockyard.lifecycle.services.purge import PurgeService, Rights
from dockyard.lifecycle.services.recycle import RecycleService
from dockyard.lifecycle.services.retention import RetentionService
from dockyard.lifecycle.services.usage import UsageService
from dockyard.rooms import Kernel

if TYPE_CHECKING:
    from dockyard.access.services import AccessServices


@dataclass(frozen=True)
class RecycleServices:
    """Soft delete (the recycle bin), retention of untagged manifests, and their policies."""

    policies: PolicyService
    bin: RecycleService
    retention: RetentionService


def build_recycle(kernel: Kernel, built: Mapping[str, Any]) -> RecycleServices:
    """The recycle-bin and retention services, registered on the registry's delete and untag hooks."""
    registry = built["registry"]
    recycle = RecycleServices(
        policies=PolicyService(kernel.db),
        bin=RecycleService(kernel.db, registry.manifests),
        retention=RetentionService(kernel.db, registry.manifests),
    )
    registry.hooks.before_delete.append(recycle.bin.on_delete)
    registry.hooks.tags_dropped.append(recycle.retention.on_tags_dropped)
    return recycle


@dataclass
class LifecycleServices:
    """What the lifecycle room offers; each concern adds its service here."""

    #: ``dockyard purge``: runs (once or scheduled) and purge schedules.
    purge: PurgeService
    #: Blob digests garbage collection must keep besides those manifests reference.
    kept_blobs: list[KeptBlobs] = field(default_factory=list)
    #: Garbage-collection runs (``gc.collector`` holds the phases); set by build_lifecycle_services.
    gc: GcService | None = None
    usage: UsageService | None = None
    #: Soft delete and retention (None only in a registry built without them).
    recycle: RecycleServices | None = None


def delete_rights(access: AccessServices) -> Rights:
    """Where an identity (by name) may delete now, from its current roles; None if it is gone."""

    def rights(name: str) -> Callable[[str], bool] | None:
        principal = access.authenticator.principal(name, fresh=True)
        if principal is None:
            return None
        return lambda repository: principal.permissions.allows(repository, CONTENT_DELETE)

    return rights


def build_lifecycle_services(kernel: Kernel, built: Mapping[str, Any]) -> LifecycleServices:
    """The lifecycle services for one registry (``built`` holds the registry room's services)."""
    purge = PurgeService(kernel.db, built["registry"].manifests, rights=delete_rights(built["access"]))
    services = LifecycleServices(purge=purge)
    services.recycle = build_recycle(kernel, built)
    services.kept_blobs.append(services.recycle.bin.kept_blobs)
    settings = kernel.settings
    collector = GarbageCollector(kernel.db, kernel.store, built["registry"].manifests, services.kept_blobs)
    services.gc = GcService(kernel.db, collector, grace_seconds=settings.gc_grace_seconds)
    services.usage = UsageService(kernel.db, built["tiers"])
    return services
