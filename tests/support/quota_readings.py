"""Helpers for the shared stored-bytes reading's tests: two clocks moved by hand, a process's quota
on them, rows written and read directly, and scans counted, slowed and interleaved (fixtures,
registered for every test by ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from dockyard.access.models import UPSERT_SETTING, registry_settings
from dockyard.config import Settings
from dockyard.db import utcnow
from dockyard.registry.models import blobs
from dockyard.tiers import quota as quota_module
from dockyard.tiers.quota import StorageQuota
from dockyard.tiers.reading import READING_KEY, SharedReading
from dockyard.tiers.services import TierService
from tests.support.images import sha256

#: The storage limit the tests' tier has (far above what they store, unless they say otherwise).
LIMIT = 10**9
#: The quota's interval in these tests (the default).
CACHE = 5.0


def limited(settings: Settings) -> Settings:
    """``settings`` with the Premium tier limited to ``LIMIT`` bytes."""
    return settings.model_copy(update={"tiers": {"Premium": {"storage_bytes": LIMIT}}})


class Clocks:
    """A monotonic clock and a wall clock, moved together by the test."""

    def __init__(self) -> None:
        self.mono, self.wall = 100.0, 1_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@pytest.fixture
def quota_scans(monkeypatch):
    """Count the scans of the stored bytes (the real one runs)."""
    counted: list[int] = []
    real = quota_module.stored_bytes

    def counting(conn):
        counted.append(1)
        return real(conn)

    monkeypatch.setattr(quota_module, "stored_bytes", counting)
    return counted


@pytest.fixture
def slow_quota_scans(quota_scans, monkeypatch):
    """``slow_quota_scans(took)``: clocks whose every scan (still counted) takes ``took`` seconds."""

    def slow(took: float) -> Clocks:
        clocks = Clocks()
        counting = quota_module.stored_bytes

        def scan(conn):
            clocks.advance(took)
            return counting(conn)

        monkeypatch.setattr(quota_module, "stored_bytes", scan)
        return clocks

    return slow


@pytest.fixture
def timed_quota_scans(quota_scans: list[int]) -> Iterator[tuple[Clocks, dict[str, Any]]]:
    """(clocks, plan): each outer scan reads its figure at its start, takes ``plan["took"]``
    seconds, and runs ``plan["during"]`` [(offset, action)] at those offsets into it (another
    thread, or another process, at that moment). Scans nested in an action take no time."""
    clocks = Clocks()
    plan: dict = {"took": 0.0, "during": [], "depth": 0}
    counting = quota_module.stored_bytes

    def scan(conn):
        used = counting(conn)
        if plan["depth"]:
            return used
        plan["depth"] += 1
        try:
            elapsed, during, plan["during"] = 0.0, plan["during"], []
            for offset, action in sorted(during, key=lambda d: d[0]):
                clocks.advance(offset - elapsed)
                elapsed = offset
                action()
            clocks.advance(plan["took"] - elapsed)
        finally:
            plan["depth"] -= 1
        return used

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quota_module, "stored_bytes", scan)
        yield clocks, plan


def process(dockyard, clocks: Clocks, ahead: float = 0.0) -> StorageQuota:
    """One process's quota, on the registry's database and shared reading; ``ahead``: on another
    node, whose wall clock runs that many seconds ahead of ``clocks``."""
    tiers: TierService = dockyard.service("tiers")
    shared = SharedReading(dockyard.db, wall=lambda: clocks.wall + ahead)
    return StorageQuota(dockyard.db, tiers, cache_seconds=CACHE, clock=lambda: clocks.mono, shared=shared)


def store_blob(dockyard, seed: bytes, size: int) -> None:
    with dockyard.db.write() as conn:
        conn.execute(
            blobs.insert().values(
                digest=sha256(seed), size=size, created_at=utcnow(), state="live", generation=0
            )
        )


def saved(dockyard) -> object:
    with dockyard.db.read() as conn:
        return conn.execute(
            sa.select(registry_settings.c.value).where(registry_settings.c.key == READING_KEY)
        ).scalar()


def save_value(dockyard, value: object) -> None:
    with dockyard.db.write() as conn:
        conn.execute(
            UPSERT_SETTING[conn.dialect.name], {"key": READING_KEY, "value": value, "updated_at": utcnow()}
        )


def free(dockyard, seed: bytes) -> None:
    with dockyard.db.write() as conn:
        conn.execute(blobs.update().where(blobs.c.digest == sha256(seed)).values(state="gone"))
