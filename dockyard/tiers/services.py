"""The registry's current tier: `registry_settings` key `sku`, else the settings' `sku`."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from dockyard.access.models import registry_settings
from dockyard.config import Settings
from dockyard.db import Database
from dockyard.tiers.table import Sku, Tier, tier_table

#: Other processes see a tier change within this many seconds; this process at once.
CACHE_SECONDS = 5.0
SKU_KEY = "sku"


class TierService:
    """The tier table (ACR's, with the operator's overrides) and the registry's current tier."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self.table = tier_table(settings.tiers)
        self._default = Sku(settings.sku)
        self._cached: tuple[Tier, float] | None = None
        self._lock = threading.Lock()

    def current(self) -> Tier:
        """The registry's tier now (cached for ``CACHE_SECONDS``; a change here drops the cache)."""
        with self._lock:
            cached = self._cached
        if cached is not None and time.monotonic() - cached[1] < CACHE_SECONDS:
            return cached[0]
        with self._db.read() as conn:
            tier = self.read(conn)
        with self._lock:
            self._cached = (tier, time.monotonic())
        return tier

    def read(self, conn: sa.Connection) -> Tier:
        """The tier as ``conn``'s transaction sees it (for checks inside a write transaction)."""
        stored = conn.execute(
            sa.select(registry_settings.c.value).where(registry_settings.c.key == SKU_KEY)
        ).scalar_one_or_none()
        return self.table[Sku(stored) if stored is not None else self._default]

    def forget(self) -> None:
        """Drop the cached tier (after this process changed it)."""
        with self._lock:
            self._cached = None
