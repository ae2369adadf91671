"""The registry's shared reading of its stored bytes: one ``registry_settings`` row every process uses.

A reading is one scan of every live blob and distinct manifest (``stored_bytes``): the figure,
when the scan ended (the scanning process's wall clock) and how long it took. Readings from
other nodes are compared across clocks, so ``CLOCK_ALLOWANCE`` says how far apart the clocks
may be (NTP keeps them far closer); a row that does not parse is no reading at all.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.access.models import INSERT_SETTING_IF_MISSING, registry_settings
from dockyard.db import Database, utcnow

#: The figure is trusted for this many times as long as its scan took, if that is longer than
#: the quota's interval: on a large registry scans stay a small share of the database's time.
COST_FACTOR = 50
#: A reading is never trusted longer than this, however long its scan took.
MAX_TRUST_SECONDS = 600.0
#: How far another node's wall clock may run ahead of this one's (see ``StorageQuota._adopt``).
CLOCK_ALLOWANCE = 1.0
#: The ``registry_settings`` row that holds the reading.
READING_KEY = "stored_bytes"
MAX_BYTES = 2**63 - 1

log = logging.getLogger(__name__)
_READ = sa.select(registry_settings.c.value).where(registry_settings.c.key == READING_KEY)
_WRITE = registry_settings.update().where(registry_settings.c.key == READING_KEY)


@dataclass(frozen=True)
class Reading:
    """One scan of the stored bytes: the figure, when the scan ended (wall clock), what it took."""

    used: int
    at: float
    took: float

    @property
    def started(self) -> float:
        """When the scan started: every commit before it is in the figure."""
        return self.at - self.took

    def trusted_for(self, cache_seconds: float) -> float:
        """How long after ``at`` the figure is used before the registry is scanned again."""
        return min(MAX_TRUST_SECONDS, max(cache_seconds, self.took * COST_FACTOR))


class SharedReading:
    """The last reading any process of the registry made, kept in ``registry_settings``."""

    def __init__(self, db: Database, wall: Callable[[], float] = time.time) -> None:
        self._db = db
        self.wall = wall

    def load(self) -> Reading | None:
        """The row's reading (None if there is none or it does not parse)."""
        with self._db.read() as conn:
            return _stored(conn)

    def age(self, reading: Reading) -> float:
        """Seconds since ``reading`` was made, by this process's clock."""
        return self.wall() - reading.at

    def usable(self, reading: Reading, cache_seconds: float, *, spare: float) -> bool:
        """Whether ``reading`` is younger than its trust plus ``spare`` seconds, and not from a clock
        further ahead of this one than ``CLOCK_ALLOWANCE``."""
        return -CLOCK_ALLOWANCE < self.age(reading) < reading.trusted_for(cache_seconds) + spare

    def save(self, reading: Reading) -> None:
        """Make ``reading`` the registry's, unless the row holds one whose scan started later (a
        slow scan never takes the row back in time; a reading from a clock further ahead than
        ``CLOCK_ALLOWANCE`` is replaced). Bookkeeping: a power cut may lose it."""
        value = {"used": reading.used, "at": reading.at, "took": reading.took}
        row = {"key": READING_KEY, "value": value, "updated_at": utcnow()}

        def work(conn: Connection) -> None:
            inserting = INSERT_SETTING_IF_MISSING[conn.dialect.name].returning(registry_settings.c.key)
            if conn.execute(inserting, row).first() is not None:
                return
            current = _stored(conn, _READ.with_for_update())
            if (
                current is None
                or current.started <= reading.started
                or current.at > reading.at + CLOCK_ALLOWANCE
            ):
                conn.execute(_WRITE.values(value=value, updated_at=row["updated_at"]))

        self._db.run_write(work, durable=False)


def _stored(conn: Connection, query: sa.Select[Any] = _READ) -> Reading | None:
    try:
        value = conn.execute(query).scalar()
    except ValueError:  # SQLite: text that is not JSON
        log.warning("the stored-bytes reading in registry_settings is not JSON: scanning over it")
        return None
    return parsed(value)


def parsed(value: Any) -> Reading | None:
    """A reading from the row's JSON value, or None unless it holds sane numbers."""
    if not isinstance(value, dict):
        return None
    used, at, took = value.get("used"), _seconds(value.get("at")), _seconds(value.get("took"))
    if type(used) is not int or not 0 <= used <= MAX_BYTES or at is None or took is None:
        return None
    return Reading(used, at, took)


def _seconds(value: Any) -> float | None:
    if type(value) not in (int, float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
