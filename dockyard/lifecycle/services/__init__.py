"""The lifecycle room's services, one module per concern, built by ``build_lifecycle_services``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockyard.lifecycle.interfaces import KeptBlobs
from dockyard.lifecycle.services.gc import GarbageCollector
from dockyard.lifecycle.services.gc_runs import GcService
from dockyard.lifecycle.services.usage import UsageService
from dockyard.rooms import Kernel


@dataclass
class LifecycleServices:
    """What the lifecycle room offers; each concern adds its service here."""

    #: Blob digests garbage collection must keep besides those manifests reference.
    kept_blobs: list[KeptBlobs] = field(default_factory=list)
    #: Garbage-collection runs (``gc.collector`` holds the phases); set by build_lifecycle_services.
    gc: GcService | None = None
    usage: UsageService | None = None


def build_lifecycle_services(kernel: Kernel, built: Mapping[str, Any]) -> LifecycleServices:
    """The lifecycle services for one registry (``built`` holds the registry room's services)."""
    services = LifecycleServices()
    settings = kernel.settings
    collector = GarbageCollector(kernel.db, kernel.store, kernel.events, services.kept_blobs)
    services.gc = GcService(kernel.db, collector, grace_seconds=settings.gc_grace_seconds)
    services.usage = UsageService(
        kernel.db, storage_limit=settings.storage_limit_bytes, webhook_limit=settings.webhook_limit
    )
    return services
