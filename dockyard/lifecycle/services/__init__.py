"""The lifecycle room's services, one module per concern, built by ``build_lifecycle_services``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockyard.lifecycle.interfaces import KeptBlobs
from dockyard.lifecycle.services.purge import PurgeService
from dockyard.rooms import Kernel


@dataclass
class LifecycleServices:
    """What the lifecycle room offers; each concern adds its service here."""

    #: ``dockyard purge``: runs (once or scheduled) and purge schedules.
    purge: PurgeService
    #: Blob digests garbage collection must keep besides those manifests reference.
    kept_blobs: list[KeptBlobs] = field(default_factory=list)


def build_lifecycle_services(kernel: Kernel, built: Mapping[str, Any]) -> LifecycleServices:
    """The lifecycle services for one registry (``built`` holds the registry room's services)."""
    return LifecycleServices(purge=PurgeService(kernel.db, built["registry"].manifests))
