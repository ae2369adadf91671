"""Nodes starting at once on a new PostgreSQL database: migrations and first-start setup happen once."""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.synchronize
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dockyard.access.models import credentials, identities, scope_maps, signing_keys
from dockyard.access.passwords import verify_secret
from dockyard.config import Settings
from dockyard.db import Database
from tests.support.auth import ADMIN_PASSWORD

NODES = 3


@pytest.fixture
def empty_postgres(postgres_url: str) -> Iterator[str]:
    """A new database without any tables on the session's cluster, dropped afterwards."""
    base, _, _ = postgres_url.rpartition("/")
    admin = Database(postgres_url, pool_size=1)

    def recreate(create: bool) -> None:
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("DROP DATABASE IF EXISTS first_start_race WITH (FORCE)"))
            if create:
                conn.execute(sa.text("CREATE DATABASE first_start_race"))

    recreate(True)
    try:
        yield f"{base}/first_start_race"
    finally:
        recreate(False)
        admin.dispose()


def _start_node(settings_json: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    """What `dockyard serve` does before serving (server._prepare_database), released together."""
    from dockyard.server import _prepare_database

    barrier.wait(30)
    _prepare_database(settings_json)


def test_nodes_starting_together_migrate_and_bootstrap_once(empty_postgres: str, tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"database_url": empty_postgres, "data_dir": tmp_path, "admin_password": ADMIN_PASSWORD}
    )
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(NODES)
    nodes = [
        context.Process(target=_start_node, args=(settings.model_dump_json(), barrier)) for _ in range(NODES)
    ]
    for node in nodes:
        node.start()
    for node in nodes:
        node.join(60)
    assert [node.exitcode for node in nodes] == [0] * NODES

    db = Database(empty_postgres, pool_size=1)
    try:
        with db.read() as conn:
            admins = (
                conn.execute(sa.select(identities.c.id).where(identities.c.kind == "admin")).scalars().all()
            )
            assert len(admins) == 1
            hashes = conn.execute(
                sa.select(credentials.c.secret_hash).where(credentials.c.identity_id == admins[0])
            ).scalars()
            assert any(verify_secret(h, ADMIN_PASSWORD) for h in hashes)
            active_keys = conn.execute(
                sa.select(signing_keys.c.kid).where(signing_keys.c.retired_at.is_(None))
            )
            assert len(active_keys.all()) == 1
            system_maps = conn.execute(sa.select(scope_maps.c.name).where(scope_maps.c.system)).scalars()
            assert sorted(system_maps) == ["_repositories_admin", "_repositories_pull", "_repositories_push"]
    finally:
        db.dispose()


def test_exclusive_lets_one_holder_in_at_a_time(postgres_url: str) -> None:
    first, second = Database(postgres_url, pool_size=1), Database(postgres_url, pool_size=1)
    probe = sa.text("SELECT pg_try_advisory_lock(:key)")
    key = int.from_bytes(hashlib.sha256(b"test.lock").digest()[:8], "big", signed=True)
    try:
        with first.exclusive("test.lock"), second.engine.connect() as conn:
            assert conn.execute(probe, {"key": key}).scalar() is False
        with second.engine.connect() as conn:
            assert conn.execute(probe, {"key": key}).scalar() is True
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        first.dispose()
        second.dispose()
