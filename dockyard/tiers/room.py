"""The tiers room's registration: the tier service every limit reads, with the storage quota."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dockyard.events.runtime import Runtime
from dockyard.rooms import Dockyard, Kernel, Room
from dockyard.tiers.quota import QUOTA_CACHE_SECONDS, StorageQuota
from dockyard.tiers.reading import SharedReading
from dockyard.tiers.services import TierService

#: The schedule that reads the stored bytes again once per registry when the shared reading runs out.
STORED_BYTES_SCHEDULE = "tiers.read-stored-bytes"


def _services(kernel: Kernel, built: Mapping[str, Any]) -> TierService:
    tiers = TierService(kernel.db, kernel.settings)
    tiers.quota = StorageQuota(kernel.db, tiers, shared=SharedReading(kernel.db))
    return tiers


def _work(parts: Dockyard, runtime: Runtime) -> None:
    quota = parts.service("tiers").quota
    runtime.schedule(STORED_BYTES_SCHEDULE, QUOTA_CACHE_SECONDS, quota.refresh)


ROOM = Room("tiers", services=_services, work=_work)
