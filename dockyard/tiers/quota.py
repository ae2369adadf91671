"""The storage quota: pushes of new blobs stop once the registry stores its tier's ``storage_bytes``.

The stored-bytes figure (each live blob once, plus each distinct manifest, as ``show-usage``
counts) is not summed on every commit but read by a scan, and the registry shares one reading
(``dockyard.tiers.reading``): whoever scans writes it to a ``registry_settings`` row, and every
process uses that row while it is fresh. A reading is trusted for ``cache_seconds``, or
``COST_FACTOR`` times what its scan took if that is longer (at most ``MAX_TRUST_SECONDS``), so on
a large registry scans stay a small share of the database's time. A schedule of the job runtime
(``refresh``) scans once per registry a little before the reading runs out; a process that finds
no usable reading (no job runtime anywhere, a ``forget``) scans itself and shares what it read.
A process re-reads the row every ``cache_seconds`` and adds the blobs it committed itself since
the reading's scan started. So the registry passes the quota by at most what its processes commit
within a reading's trust plus ``cache_seconds`` (docs/tiers.md); freed space (a delete, then
garbage collection) is seen as soon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import sqlalchemy as sa

from dockyard.db import Database
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.tiers.reading import (
    CLOCK_ALLOWANCE,
    MAX_TRUST_SECONDS,
    Reading,
    SharedReading,
)
from dockyard.tiers.services import TierService, stored_bytes
from dockyard.tiers.table import UNLIMITED, Tier

#: How long a process uses the figure it has before it reads the shared row (or scans) again.
QUOTA_CACHE_SECONDS = 5.0
#: This process's own commits are kept (to add to a reading) at most this long.
COMMITS_KEPT_SECONDS = MAX_TRUST_SECONDS + 2 * QUOTA_CACHE_SECONDS + CLOCK_ALLOWANCE

log = logging.getLogger(__name__)


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{value} bytes"


class Scan(NamedTuple):
    """A reading this process made itself, with when its scan started by both clocks."""

    reading: Reading
    mono_started: float
    wall_started: float


class StorageQuota:
    """Refuses new blobs past the tier's storage limit (403 DENIED), from the registry's shared
    reading of its stored bytes (``shared``; None: this process's own scans only) and the blobs
    this process committed since that reading's scan started."""

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
        self._read_lock = threading.Lock()  # one thread of the process reads; the others wait or answer
        self._read: tuple[int, float] | None = None  # (stored bytes, when adopted: monotonic)
        self._started: float | None = None  # when the scan of the reading in use started (wall)
        self._commits: deque[tuple[float, int]] = deque()  # (wall time, bytes) committed since
        self._added = 0  # their sum
        self._interval = cache_seconds
        self._reading = False  # a thread of this process is reading the figure
        self._scan_next = False  # ``forget``: the next read scans, whatever the shared reading says
        self._forgets = 0  # how many ``forget`` calls there were (one during a read voids its figure)
        self._last_scan: Scan | None = None  # this process's last scan

    def _known(self) -> int | None:
        """The stored bytes from memory while the figure read is current (or being read again)."""
        read = self._read
        if read is not None and (self._reading or self._clock() - read[1] < self._interval):
            return read[0] + self._added
        return None

    def used(self) -> int:
        """The registry's stored bytes as this process knows them (read again once per interval).

        One thread reads at a time: the others answer from the figure they have, or, with none
        (at start, after a ``forget``), wait for the reader's."""
        with self._lock:
            known = self._known()
        if known is not None:
            return known
        with self._read_lock:
            with self._lock:
                known = self._known()  # read by the thread this one waited for
                if known is not None:
                    return known
                self._reading, scan, self._scan_next = True, self._scan_next, False
                forgets = self._forgets
            try:
                shared = None if scan or self._shared is None else self._usable_row()
                own = self._scan() if shared is None else None
            except BaseException:
                with self._lock:
                    self._reading, self._scan_next = False, self._scan_next or scan
                raise
            with self._lock:
                self._reading = False
                self._adopt(own.reading if own is not None else shared, own)  # type: ignore[arg-type]
                if self._forgets != forgets:  # forgotten meanwhile: this figure once, then a scan
                    self._interval = 0.0
                assert self._read is not None
                return self._read[0] + self._added

    def _usable_row(self) -> Reading | None:
        """The shared reading while it may be used: its trust, and one ``cache_seconds`` more (the
        schedule replaces it before its trust runs out)."""
        assert self._shared is not None
        reading, cache = self._shared.load(), self._cache_seconds
        if reading is None or not self._shared.usable(reading, cache, spare=cache):
            return None
        return reading

    def _scan(self) -> Scan:
        """Sum the stored bytes (a scan of every blob and manifest) and share the reading; a failed
        save is only logged (the next scan shares again)."""
        started, wall_started = self._clock(), self._wall()
        with self._db.read() as conn:
            used = stored_bytes(conn)
        scan = Scan(Reading(used, self._wall(), self._clock() - started), started, wall_started)
        self._last_scan = scan
        if self._shared is not None:
            try:
                self._shared.save(scan.reading)
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                log.warning("cannot share the stored-bytes reading: %s", str(exc).splitlines()[0])
        return scan

    def _adopt(self, reading: Reading, own: Scan | None = None) -> None:
        """Use ``reading`` (``own``: a scan of this process's) from now on (the lock held).

        A reading whose scan started before the one in use is not taken (a race with the
        schedule, a slow scan), unless this process's own scan started after it took the one in
        use (then the wall clock was stepped back): the one in use is kept for another interval.
        The commits the reading may not hold, those since its scan started, are kept; for another
        node's reading the start is taken ``CLOCK_ALLOWANCE`` earlier (its clock may be ahead: a
        commit then counts twice, never not at all). An own scan is trusted for what it cost, as
        the shared row would be; the row is read again every ``cache_seconds``, and not used past
        its trust and one more.
        """
        current, started = self._read, self._started
        older = current is not None and started is not None and reading.started < started
        if older and (own is None or own.mono_started < current[1]):  # type: ignore[index]
            self._read, self._interval = (current[0], self._clock()), self._cache_seconds  # type: ignore[index]
            return
        since = reading.started - CLOCK_ALLOWANCE if own is None else min(own.wall_started, reading.started)
        while self._commits and self._commits[0][0] <= since:
            self._added -= self._commits.popleft()[1]
        self._started = reading.started
        self._read = (reading.used, self._clock())
        trust = reading.trusted_for(self._cache_seconds)
        if own is not None or self._shared is None:
            self._interval = trust
        else:
            left = trust + self._cache_seconds - self._shared.age(reading)
            self._interval = max(0.0, min(self._cache_seconds, left))

    def refresh(self) -> None:
        """The schedule's run (once per registry): scan when the shared reading's trust left is
        less than one ``cache_seconds`` and its scan's time, so that the new reading is shared
        before the old one runs out. Nothing under an unlimited tier: no push asks for it."""
        if self._shared is None or self._tiers.current().storage_bytes == UNLIMITED:
            return
        cache, last = self._cache_seconds, self._last_scan
        if last is not None and self._clock() - last.mono_started < last.reading.trusted_for(cache) - cache:
            return  # this process scanned lately, whatever the row says (another node's clock)
        reading = self._shared.load()
        if reading is not None and self._shared.usable(reading, cache, spare=-(cache + reading.took)):
            return
        own = self._scan()
        log.debug("stored bytes read again: %d bytes, %.3f s", own.reading.used, own.reading.took)
        with self._lock:
            self._adopt(own.reading, own)

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
        """A new blob of ``size`` bytes was committed by this process (kept to add to the next
        reading; not under an unlimited tier)."""
        tier = self._tiers.known()
        if tier is not None and tier.storage_bytes == UNLIMITED:
            self.forget()  # should the tier become limited, the figure must hold this blob
            return
        with self._lock:
            now = self._wall()
            while self._commits and self._commits[0][0] < now - COMMITS_KEPT_SECONDS:
                self._added -= self._commits.popleft()[1]
            self._commits.append((now, size))
            self._added += size

    def forget(self) -> None:
        """Scan the stored bytes again at the next check (e.g. after this process freed space), and
        share that reading."""
        with self._lock:
            self._read, self._scan_next = None, True
            self._forgets += 1

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
