"""The storage quota: pushes of new blobs stop once the registry stores its tier's ``storage_bytes``.

The stored-bytes figure (each live blob once, plus each distinct manifest, as ``show-usage``
counts) is read at most once per interval per process, not summed on every commit; between
reads the process adds the blobs it committed itself. The interval is ``cache_seconds``, or
``COST_FACTOR`` times what the last read took if that is longer: the read scans every blob and
manifest, so on a large registry it is spaced out to keep it a small share of the database's
time. One thread of a process reads at a time; the others answer from the figure they have.
So one process never passes the quota by more than the blobs it is committing concurrently,
and a registry of N processes overshoots by at most what the other processes commit within
one interval (docs/tiers.md). Freed space (a delete, then garbage collection) is seen within
one interval as well.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dockyard.db import Database
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.tiers.services import TierService, stored_bytes
from dockyard.tiers.table import UNLIMITED, Tier

#: How long one process trusts the stored-bytes figure it read (at least).
QUOTA_CACHE_SECONDS = 5.0
#: The figure is trusted for this many times as long as reading it took, if that is longer.
COST_FACTOR = 50


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{value} bytes"


class StorageQuota:
    """Refuses new blobs past the tier's storage limit (403 DENIED), from a per-process usage figure."""

    def __init__(
        self,
        db: Database,
        tiers: TierService,
        *,
        cache_seconds: float = QUOTA_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._tiers = tiers
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._read: tuple[int, float] | None = None  # (stored bytes, when read)
        self._added = 0  # bytes this process committed since
        self._interval = cache_seconds
        self._reading = False  # a thread of this process is reading the figure

    def _known(self) -> int | None:
        """The stored bytes from memory while the figure read is current (or being read again)."""
        read = self._read
        if read is not None and (self._reading or self._clock() - read[1] < self._interval):
            return read[0] + self._added
        return None

    def used(self) -> int:
        """The registry's stored bytes as this process knows them (read again once per interval)."""
        with self._lock:
            known = self._known()
            if known is not None:
                return known
            self._reading = True
        started = self._clock()
        try:
            with self._db.read() as conn:
                used = stored_bytes(conn)
        except BaseException:
            with self._lock:
                self._reading = False
            raise
        now = self._clock()
        with self._lock:
            self._reading = False
            self._read, self._added = (used, now), 0
            self._interval = max(self._cache_seconds, (now - started) * COST_FACTOR)
        return used

    def check_start(self) -> None:
        """Before an upload starts: refuse once the registry is at or past its quota."""
        tier = self._tiers.current()
        if tier.storage_bytes != UNLIMITED:
            self._refuse_start(tier, self.used())

    def check_start_known(self) -> bool:
        """``check_start`` from memory (safe on the event loop): False when the tier or the stored
        bytes must be read first (call ``check_start`` in a worker thread then)."""
        tier = self._tiers.known()
        if tier is None:
            return False
        if tier.storage_bytes == UNLIMITED:
            return True
        with self._lock:
            used = self._known()
        if used is None:
            return False
        self._refuse_start(tier, used)
        return True

    def _refuse_start(self, tier: Tier, used: int) -> None:
        if used >= tier.storage_bytes:
            raise self._denied(tier, used)

    def check_new_blob(self, size: int) -> None:
        """Before a new blob (not stored yet) is committed: refuse if it would pass the quota."""
        tier = self._tiers.current()
        if tier.storage_bytes != UNLIMITED:
            used = self.used()
            if used + size > tier.storage_bytes:
                raise self._denied(tier, used, size)

    def added(self, size: int) -> None:
        """A new blob of ``size`` bytes was committed by this process."""
        with self._lock:
            self._added += size

    def forget(self) -> None:
        """Read the stored bytes again at the next check (e.g. after this process freed space)."""
        with self._lock:
            self._read = None

    @staticmethod
    def _denied(tier: Tier, used: int, size: int | None = None) -> RegistryError:
        message = (
            f"storage quota exceeded: the {tier.sku} tier allows {_size(tier.storage_bytes)}"
            f" and the registry stores {_size(used)}"
        )
        if size is not None:
            message += f"; this blob needs {_size(size)} more"
        message += " (delete images and run garbage collection to free space)"
        detail = {"tier": str(tier.sku), "limitBytes": tier.storage_bytes, "usedBytes": used}
        if size is not None:
            detail["blobBytes"] = size
        return RegistryError(ErrorCode.DENIED, message, detail=detail)
