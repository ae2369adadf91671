"""The tiers room's registration: the tier service every limit reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dockyard.rooms import Kernel, Room
from dockyard.tiers.services import TierService


def _services(kernel: Kernel, built: Mapping[str, Any]) -> TierService:
    return TierService(kernel.db, kernel.settings)


ROOM = Room("tiers", services=_services)
