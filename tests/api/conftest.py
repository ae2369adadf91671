"""Two registry processes on one database: PostgreSQL nodes A and B (``pg_*``), and two processes
on one SQLite file (``sqlite_*``). Each node has its own engine, caches and change listener."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dockyard.access.services import bootstrap
from dockyard.app import Dockyard, build, create_app
from dockyard.config import Settings
from tests.conftest import _truncate_all
from tests.support.auth import ADMIN
from tests.support.nodes import node_settings
from tests.support.polling import eventually


@pytest.fixture
def pg_settings(tmp_path: Path, postgres_url: str) -> Settings:
    _truncate_all(postgres_url)
    return node_settings(tmp_path, postgres_url)


@pytest.fixture
def pg_node(pg_settings: Settings) -> Iterator[Dockyard]:
    """Node A's services (its app runs in ``pg_client``)."""
    parts = build(pg_settings)
    bootstrap(pg_settings, parts.access)
    yield parts
    parts.db.dispose()


@pytest.fixture
def pg_client(pg_settings: Settings, pg_node: Dockyard) -> Iterator[TestClient]:
    """Node A's admin client, once its change listener is connected."""
    with TestClient(create_app(pg_settings, pg_node, background_jobs=False), headers=ADMIN) as client:
        eventually(lambda: pg_node.registry.cache.enabled, "the change listener to connect")
        yield client


@pytest.fixture
def pg_other(pg_settings: Settings) -> Iterator[TestClient]:
    """Node B: a second registry process on the same database and store (its admin client)."""
    parts = build(pg_settings)
    with TestClient(create_app(pg_settings, parts, background_jobs=False), headers=ADMIN) as client:
        eventually(lambda: parts.registry.cache.enabled, "node B's change listener to connect")
        yield client
    parts.db.dispose()


@pytest.fixture
def sqlite_settings(tmp_path: Path, sqlite_template: Path) -> Settings:
    shutil.copy(sqlite_template, tmp_path / "dockyard.db")
    return node_settings(tmp_path, f"sqlite:///{tmp_path / 'dockyard.db'}")


@pytest.fixture
def sqlite_node(sqlite_settings: Settings) -> Iterator[tuple[Dockyard, TestClient]]:
    """One process on a SQLite file: its services and its admin client."""
    parts = build(sqlite_settings)
    bootstrap(sqlite_settings, parts.access)
    with TestClient(create_app(sqlite_settings, parts, background_jobs=False), headers=ADMIN) as client:
        yield parts, client
    parts.db.dispose()


@pytest.fixture
def sqlite_other(sqlite_settings: Settings) -> Iterator[TestClient]:
    """A second process's registry on the same SQLite file (its own engine and connections)."""
    parts = build(sqlite_settings)
    with TestClient(create_app(sqlite_settings, parts, background_jobs=False), headers=ADMIN) as client:
        yield client
    parts.db.dispose()
