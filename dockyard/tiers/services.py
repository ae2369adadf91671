"""The registry's current tier (`registry_settings` key `sku`, else the settings' `sku`) and its limits.

Every limit is checked inside the transaction that creates the resource, after ``lock(conn)``:
on PostgreSQL a transaction-scoped advisory lock that every limit check and every SKU change
takes first, so two concurrent creates cannot both count below the limit (SQLite's write
transactions are serial already). Rooms that own a counted resource register a counter
(``add_counter``) so downgrades and ``show-usage`` see it; they check with ``check_count``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from dockyard.access.models import identities, registry_settings, scope_maps
from dockyard.config import Settings
from dockyard.db import Database
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.models import blobs, manifests
from dockyard.registry.services.blobstate import LIVE
from dockyard.tiers.table import UNLIMITED, Sku, Tier, tier_table
from dockyard.webhooks.models import webhooks

if TYPE_CHECKING:
    from dockyard.tiers.quota import StorageQuota

#: Other processes see a tier change within this many seconds; this process at once.
CACHE_SECONDS = 5.0
SKU_KEY = "sku"
#: pg_advisory_xact_lock key every limit check and SKU change takes ("dyTiers" in ASCII, 63 bits).
LIMITS_LOCK = 0x6479546965727300

#: Count limits: the Tier field, the name in messages, the name `show-usage` uses (ACR's).
LIMIT_NAMES: dict[str, tuple[str, str]] = {
    "webhooks": ("webhooks", "Webhooks"),
    "tokens": ("tokens", "Tokens"),
    "scope_maps": ("scope maps", "ScopeMaps"),
    "ip_rules": ("IP rules", "IPRules"),
    "replicas": ("geo-replications", "Geo-replications"),
    "cache_rules": ("cache rules", "CacheRules"),
}

Counter = Callable[[sa.Connection], int]


@dataclass(frozen=True)
class Usage:
    """One line of ``show-usage``: a limit (-1: unlimited) and what the registry uses."""

    name: str
    limit: int
    current: int
    unit: str


def limit_exceeded(message: str, **detail: object) -> RegistryError:
    """The error a refused create or downgrade answers: 409 LIMIT_EXCEEDED naming tier and limit."""
    return RegistryError(ErrorCode.LIMIT_EXCEEDED, message, detail=detail or None)


def stored_bytes(conn: sa.Connection) -> int:
    """What the registry stores: each live blob once, plus each distinct manifest once."""
    distinct_manifests = sa.select(manifests.c.digest, manifests.c.size).distinct().subquery()
    blob_bytes = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(blobs.c.size), 0)).where(blobs.c.state == LIVE)
    ).scalar_one()
    manifest_bytes = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(distinct_manifests.c.size), 0))
    ).scalar_one()
    return int(blob_bytes) + int(manifest_bytes)


def _setting(conn: sa.Connection, key: str) -> object:
    return conn.execute(
        sa.select(registry_settings.c.value).where(registry_settings.c.key == key)
    ).scalar_one_or_none()


def _count_ip_rules(conn: sa.Connection) -> int:
    return len(_setting(conn, "ip_rules") or [])  # type: ignore[arg-type]


def _counting(query: sa.Select[tuple[int]]) -> Counter:
    return lambda conn: int(conn.execute(query).scalar_one())


class TierService:
    """The tier table (ACR's, with the operator's overrides), the registry's current tier and its limits."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self.table = tier_table(settings.tiers)
        self._default = Sku(settings.sku)
        self._cached: tuple[Tier, float] | None = None
        self._lock = threading.Lock()
        self._counters: dict[str, Counter] = {
            "webhooks": _counting(sa.select(sa.func.count()).select_from(webhooks)),
            "tokens": _counting(
                sa.select(sa.func.count()).select_from(identities).where(identities.c.kind == "token")
            ),
            "scope_maps": _counting(
                sa.select(sa.func.count()).select_from(scope_maps).where(scope_maps.c.system.is_(False))
            ),
            "ip_rules": _count_ip_rules,
        }
        #: The storage quota uploads consult (set by the room).
        self.quota: StorageQuota | None = None

    # -- the current tier -------------------------------------------------------------------

    def current(self) -> Tier:
        """The registry's tier now (cached for ``CACHE_SECONDS``; a change here drops the cache)."""
        known = self.known()
        if known is not None:
            return known
        with self._db.read() as conn:
            tier = self.read(conn)
        with self._lock:
            self._cached = (tier, time.monotonic())
        return tier

    def known(self) -> Tier | None:
        """``current()`` if this process has it in memory (safe on the event loop), else None."""
        with self._lock:
            cached = self._cached
        if cached is not None and time.monotonic() - cached[1] < CACHE_SECONDS:
            return cached[0]
        return None

    def read(self, conn: sa.Connection) -> Tier:
        """The tier as ``conn``'s transaction sees it (for checks inside a write transaction)."""
        stored = _setting(conn, SKU_KEY)
        return self.table[Sku(stored) if stored is not None else self._default]  # type: ignore[arg-type]

    def forget(self) -> None:
        """Drop the cached tier (after this process changed it)."""
        with self._lock:
            self._cached = None

    # -- limits, inside the creating transaction -----------------------------------------------

    def lock(self, conn: sa.Connection) -> Tier:
        """Serialise limit checks and SKU changes for the rest of ``conn``'s transaction; the tier then.

        Call it before counting: the count a caller takes afterwards sees every create that
        committed before, and no other create commits until this transaction ends.
        """
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LIMITS_LOCK})
        return self.read(conn)

    def add_counter(self, limit: str, counter: Counter) -> None:
        """Register how to count ``limit`` (a Tier count field, e.g. ``cache_rules``) in a transaction.

        The room owning the resource calls it at build time; SKU downgrades refuse while the
        count exceeds the new tier's limit, and ``show-usage`` reports it.
        """
        if limit not in LIMIT_NAMES:
            raise ValueError(f"unknown tier limit {limit!r}")
        self._counters[limit] = counter

    def check_count(
        self, conn: sa.Connection, limit: str, count: int | None = None, *, adding: int = 1
    ) -> Tier:
        """Lock, then refuse (409 LIMIT_EXCEEDED) if ``count + adding`` passes the tier's ``limit``.

        ``limit`` is a Tier count field (``webhooks``, ``tokens``, ``scope_maps``, ``ip_rules``,
        ``replicas``, ``cache_rules``); ``count`` is what the registry has now, counted by the
        registered counter when omitted (counted after the lock, so it is exact).
        Example: ``tiers.check_count(conn, "cache_rules")`` before inserting a rule.
        """
        tier = self.lock(conn)
        maximum = getattr(tier, limit)
        if maximum == UNLIMITED:
            return tier
        if count is None:
            counter = self._counters.get(limit)
            count = counter(conn) if counter is not None else 0
        if count + adding > maximum:
            noun = LIMIT_NAMES[limit][0]
            message = f"the {tier.sku} tier allows {maximum} {noun}"
            if maximum == 0:
                message += f" (they need the {self.lowest(limit)} tier)"
            elif adding == 1:
                message += f"; this registry has {count}: delete one first"
            else:
                message += f"; {count + adding} were asked for"
            raise limit_exceeded(message, tier=str(tier.sku), limit=limit, maximum=maximum, count=count)
        return tier

    def require(self, conn: sa.Connection, feature: str, what: str) -> Tier:
        """Lock, then refuse (409 LIMIT_EXCEEDED) unless the tier has ``feature`` (a Tier flag field)."""
        tier = self.lock(conn)
        if not getattr(tier, feature):
            raise limit_exceeded(
                f"{what} needs the {self.lowest(feature)} tier or higher; this registry is {tier.sku}",
                tier=str(tier.sku),
                limit=feature,
            )
        return tier

    def lowest(self, limit: str) -> Sku:
        """The lowest tier that allows some of ``limit`` (a count or flag field)."""
        for sku in Sku:
            value = getattr(self.table[sku], limit)
            if value is True or (not isinstance(value, bool) and value != 0):
                return sku
        return Sku.Premium

    def violations(self, conn: sa.Connection, tier: Tier) -> list[str]:
        """What the registry holds now that ``tier`` does not allow (empty: it fits)."""
        found: list[str] = []
        for limit, counter in self._counters.items():
            maximum = getattr(tier, limit)
            count = counter(conn)
            if maximum != UNLIMITED and count > maximum:
                found.append(
                    f"the {tier.sku} tier allows {maximum} {LIMIT_NAMES[limit][0]}; this registry has {count}"
                )
        if _setting(conn, "anonymous_pull_enabled") and not tier.anonymous_pull:
            found.append(f"the {tier.sku} tier does not allow anonymous pull; it is enabled")
        if _setting(conn, "public_network_access") is False and not tier.private_only:
            found.append(
                f"the {tier.sku} tier does not allow disabling public network access; it is disabled"
            )
        if _setting(conn, "default_action") == "Deny" and tier.ip_rules == 0:
            found.append(f"the {tier.sku} tier does not allow network rules; the default action is Deny")
        return found

    def usage(self) -> list[Usage]:
        """The tier's limits with what the registry uses (``show-usage``); -1 is unlimited, as in ACR."""
        with self._db.read() as conn:
            tier = self.read(conn)
            size = stored_bytes(conn)
            counts = {limit: counter(conn) for limit, counter in self._counters.items()}

        return [
            Usage("Size", tier.storage_bytes, size, "Bytes"),
            *(
                Usage(LIMIT_NAMES[limit][1], getattr(tier, limit), counts.get(limit, 0), "Count")
                for limit in LIMIT_NAMES
            ),
        ]
