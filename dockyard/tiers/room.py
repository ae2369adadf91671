"""The tiers room's registration: the tier service every limit reads, with the storage quota."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dockyard.rooms import Kernel, Room
from dockyard.tiers.quota import StorageQuota
from dockyard.tiers.services import TierService


def _services(kernel: Kernel, built: Mapping[str, Any]) -> TierService:
    tiers = TierService(kernel.db, kernel.settings)
    tiers.quota = StorageQuota(kernel.db, tiers)
    return tiers


ROOM = Room("tiers", services=_services)
