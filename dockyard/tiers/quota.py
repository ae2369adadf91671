"""The storage quota: pushes of new blobs stop once the registry stores its tier's ``storage_bytes``.

The stored-bytes figure (each live blob once, plus each distinct manifest, as ``show-usage``
counts) is not summed on every commit. It is read by scanning the blobs and manifests, and the
reading is shared: whoever scans writes it to one ``registry_settings`` row (``READING_KEY``),
and every process adopts that row while it is fresh. A reading stays fresh for ``cache_seconds``,
or ``COST_FACTOR`` times what the scan took if that is longer, so on a large registry scans are
spaced out to keep them a small share of the database's time. A schedule of the job runtime
scans once per registry when the reading has run out; a process that finds no fresh reading
(no job runtime anywhere, or a ``forget``) scans itself. Each process re-reads the row every
``cache_seconds`` and adds the blobs it committed itself in between. So the registry passes the
quota by at most what its processes commit within one interval (docs/tiers.md). Freed space
(a delete, then garbage collection) is seen within one interval as well.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from dockyard.access.models import UPSERT_SETTING, registry_settings
from dockyard.db import Database, utcnow
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.tiers.services import TierService, stored_bytes
from dockyard.tiers.table import UNLIMITED, Tier

#: How long one process trusts the stored-bytes figure it read (at least).
QUOTA_CACHE_SECONDS = 5.0
#: The figure is trusted for this many times as long as reading it took, if that is longer.
COST_FACTOR = 50
#: The ``registry_settings`` row that holds the last reading, for every process of the registry.
READING_KEY = "stored_bytes"

log = logging.getLogger(__name__)
_READ_READING = sa.select(registry_settings.c.value).where(registry_settings.c.key == READING_KEY)


@dataclass(frozen=True)
class Reading:
    """One scan of the stored bytes: the figure, when the scan ended (wall clock), what it took."""

    used: int
    at: float
    took: float

    def trusted_for(self, cache_seconds: float) -> float:
        """How long after ``at`` the figure is used before the registry is scanned again."""
        return max(cache_seconds, self.took * COST_FACTOR)


class SharedReading:
    """The last reading any process of the registry made, kept in ``registry_settings``."""

    def __init__(self, db: Database, wall: Callable[[], float] = time.time) -> None:
        self._db = db
        self.wall = wall

    def load(self) -> Reading | None:
        """The row's reading (None if there is none or it does not parse)."""
        with self._db.read() as conn:
            value = conn.execute(_READ_READING).scalar()
        return _parsed(value)

    def fresh(self, cache_seconds: float) -> Reading | None:
        """The row's reading while it is to be trusted, allowing one more ``cache_seconds`` for the
        schedule to come round; None when it is older (or from a clock far ahead of this one)."""
        reading = self.load()
        if reading is None:
            return None
        age = self.age(reading)
        return reading if -cache_seconds < age < reading.trusted_for(cache_seconds) + cache_seconds else None

    def age(self, reading: Reading) -> float:
        """Seconds since ``reading`` was made, by this process's clock."""
        return self.wall() - reading.at

    def save(self, reading: Reading) -> None:
        """Make ``reading`` the registry's (bookkeeping: a power cut may lose it, a scan redoes it)."""
        value = {"used": reading.used, "at": reading.at, "took": reading.took}
        row = {"key": READING_KEY, "value": value, "updated_at": utcnow()}
        self._db.run_write(lambda conn: conn.execute(UPSERT_SETTING[conn.dialect.name], row), durable=False)


def _parsed(value: Any) -> Reading | None:
    if not isinstance(value, dict):
        return None
    used, at, took = value.get("used"), value.get("at"), value.get("took")
    if not isinstance(used, int) or isinstance(used, bool) or used < 0:
        return None
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in (at, took)):
        return None
    return Reading(used, float(at), float(took))  # type: ignore[arg-type]


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{value} bytes"


class StorageQuota:
    """Refuses new blobs past the tier's storage limit (403 DENIED), from the registry's shared
    reading of its stored bytes (``shared``; None: this process's own scans only) and the blobs
    this process committed since that reading."""

    def __init__(
        self,
        db: Database,
        tiers: TierService,
        *,
        cache_seconds: float = QUOTA_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedReading | None = None,
    ) -> None:
        self._db = db
        self._tiers = tiers
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._shared = shared
        self._wall = shared.wall if shared is not None else time.time
        self._lock = threading.Lock()
        self._read: tuple[int, float] | None = None  # (stored bytes, when read)
        self._reading_at: float | None = None  # the wall time of the reading in use
        self._commits: deque[tuple[float, int]] = deque()  # (wall time, bytes) committed since it
        self._added = 0  # their sum
        self._interval = cache_seconds
        self._reading = False  # a thread of this process is reading the figure
        self._scan_next = False  # ``forget``: the next read scans, whatever the shared reading says

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
            self._reading, scan, self._scan_next = True, self._scan_next, False
        try:
            reading = None if scan or self._shared is None else self._shared.fresh(self._cache_seconds)
            if reading is None:
                reading = self._scan()
        except BaseException:
            with self._lock:
                self._reading, self._scan_next = False, self._scan_next or scan
            raise
        with self._lock:
            self._reading = False
            self._adopt(reading)
            return reading.used + self._added

    def _scan(self) -> Reading:
        """Sum the stored bytes (a scan of every blob and manifest) and share the reading."""
        started = self._clock()
        with self._db.read() as conn:
            used = stored_bytes(conn)
        reading = Reading(used, self._wall(), self._clock() - started)
        if self._shared is not None:
            self._shared.save(reading)
        return reading

    def _adopt(self, reading: Reading) -> None:
        """Use ``reading`` from now on (the lock held): keep the commits it may not include, those
        since its scan started, and trust it for ``cache_seconds`` (the shared row: a cheap read
        then) or for what its scan cost (this process's own scans)."""
        if reading.at != self._reading_at:
            scan_started = reading.at - reading.took
            while self._commits and self._commits[0][0] <= scan_started:
                self._added -= self._commits.popleft()[1]
            self._reading_at = reading.at
        self._read = (reading.used, self._clock())
        shared = self._shared is not None
        self._interval = self._cache_seconds if shared else reading.trusted_for(self._cache_seconds)

    def refresh(self) -> None:
        """The schedule's run (once per registry): scan when the shared reading has run out, so that
        pushes find a fresh one. Nothing under an unlimited tier: no push asks for the figure."""
        if self._shared is None or self._tiers.current().storage_bytes == UNLIMITED:
            return
        reading = self._shared.load()
        if reading is not None and 0 <= self._shared.age(reading) < reading.trusted_for(self._cache_seconds):
            return
        reading = self._scan()
        log.debug("stored bytes read again: %d bytes, %.3f s", reading.used, reading.took)
        with self._lock:
            self._adopt(reading)

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
            self._commits.append((self._wall(), size))
            self._added += size

    def forget(self) -> None:
        """Scan the stored bytes again at the next check (e.g. after this process freed space), and
        share that reading."""
        with self._lock:
            self._read, self._scan_next = None, True

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
