"""Fixtures shared by every test: databases (SQLite, a real PostgreSQL), blob stores, settings, apps."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3.session
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.testclient import TestClient

from dockyard.access.services import bootstrap
from dockyard.app import Dockyard, build, create_app
from dockyard.config import Settings
from dockyard.db import Database, metadata
from dockyard.migrations import load_models, upgrade
from tests.support.auth import ADMIN, ADMIN_PASSWORD
from tests.support.azurite import Azurite, azurite_server
from tests.support.postgres import private_cluster
from tests.support.seaweedfs import SeaweedS3, seaweedfs_server

#: Fixtures of support modules, for every test that asks for them.
pytest_plugins = ["tests.support.quota_readings"]

ENGINES = ("sqlite", "postgresql")
STORES = ("filesystem", "s3", "azure")
#: The combinations the API suite runs on: ``<engine>`` (filesystem store) or ``<engine>-<store>``.
#: CI runs the default; narrow DOCKYARD_TEST_BACKENDS only for a quick local run.
DEFAULT_BACKENDS = "sqlite,postgresql,sqlite-s3,sqlite-azure"


def split_backend(name: str) -> tuple[str, str]:
    """``"postgresql-azure"`` → ``("postgresql", "azure")``; a bare engine uses the filesystem."""
    engine, _, store = name.partition("-")
    store = store or "filesystem"
    if engine not in ENGINES or store not in STORES:
        raise pytest.UsageError(
            f"DOCKYARD_TEST_BACKENDS: unknown combination {name!r} "
            f"(an engine of {ENGINES}, optionally -s3 or -azure)"
        )
    return engine, store


BACKENDS = [
    b.strip() for b in os.environ.get("DOCKYARD_TEST_BACKENDS", DEFAULT_BACKENDS).split(",") if b.strip()
]
for _backend in BACKENDS:
    split_backend(_backend)


def backend_of(item: pytest.Item) -> str | None:
    """The combination a test runs on (its ``database_url`` parameter), None if it has none."""
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("database_url") if callspec is not None else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (reported, never skipped) runs of tests on backends they cannot use.

    On object stores: tests marked ``filesystem_only`` and tests that never build ``settings``
    (so never a blob store), which would only repeat the filesystem run. On SQLite: tests marked
    ``postgresql_only``.
    """
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        backend = backend_of(item)
        on_object_store = backend is not None and split_backend(backend)[1] != "filesystem"
        on_sqlite = backend is not None and split_backend(backend)[0] != "postgresql"
        needs_a_filesystem = item.get_closest_marker("filesystem_only") or "settings" not in item.fixturenames
        needs_postgresql = item.get_closest_marker("postgresql_only")
        if (on_object_store and needs_a_filesystem) or (on_sqlite and needs_postgresql):
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(autouse=True)
def no_leftover_change_listeners() -> Iterator[None]:
    """Every app a test started stopped its PostgreSQL change listener again."""
    yield
    leftover = [thread for thread in threading.enumerate() if thread.name == "dockyard-changes"]
    assert not leftover, "a content change listener outlived its app"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL database for the session (a private cluster unless one is given)."""
    given = os.environ.get("DOCKYARD_TEST_POSTGRES_URL")
    if given:
        url = given
        cluster = None
    else:
        cluster = private_cluster()
        url = cluster.__enter__()
    try:
        db = Database(url, pool_size=1)
        upgrade(db)
        db.dispose()
        yield url
    finally:
        if cluster is not None:
            cluster.__exit__(None, None, None)


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedS3]:
    """A real SeaweedFS S3 gateway with a bucket, for the whole session (missing `weed` fails)."""
    with seaweedfs_server() as server:
        yield server


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One real Azurite for the session (installed by scripts/test; missing fails)."""
    with azurite_server() as server:
        yield server


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file each test copies (migrating per test would be slow)."""
    path = tmp_path_factory.mktemp("template") / "dockyard.db"
    db = Database(f"sqlite:///{path}", pool_size=1)
    upgrade(db)
    db.dispose()
    return path


def _truncate_all(url: str) -> None:
    load_models()
    db = Database(url, pool_size=1)
    names = ", ".join(table.name for table in metadata.sorted_tables)
    with db.write() as conn:
        conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    db.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database on each configured engine (the store half of the name is
    ``store_settings``' business)."""
    engine, _ = split_backend(request.param)
    if engine == "sqlite":
        target = tmp_path / "dockyard.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    url = request.getfixturevalue("postgres_url")
    _truncate_all(url)
    return url


@pytest.fixture(scope="session")
def boto3_session() -> boto3.session.Session:
    """One boto3 session whose loaded service models every test's S3 store reuses."""
    return boto3.session.Session()


@pytest.fixture
def store_settings(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings for the test's blob store: a fresh prefix of the session's S3 bucket or Azure
    container, or nothing (the filesystem under the test's data_dir)."""
    backend = backend_of(request.node)
    store = split_backend(backend)[1] if backend else "filesystem"
    prefix = f"api-{secrets.token_hex(6)}"
    if store == "s3":
        s3: SeaweedS3 = request.getfixturevalue("seaweedfs")
        # A new boto3 session parses botocore's JSON models again (~0.5 s per store built);
        # stores are built one at a time, so they can share one session's loader.
        shared = request.getfixturevalue("boto3_session")
        monkeypatch.setattr(boto3.session, "Session", lambda: shared)
        return {
            "storage": f"s3://{s3.bucket}/{prefix}",
            "s3_endpoint_url": s3.endpoint_url,
            "s3_region": s3.region,
            "s3_access_key_id": s3.access_key_id,
            "s3_secret_access_key": s3.secret_access_key,
        }
    if store == "azure":
        azure: Azurite = request.getfixturevalue("azurite")
        return {
            "storage": f"azure://{azure.container}/{prefix}",
            "azure_connection_string": azure.connection_string(),
        }
    return {}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, store_settings: dict[str, str]) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "access_log": False,
            "db_pool_size": 8,
            "admin_password": ADMIN_PASSWORD,
            **store_settings,
        }
    )


@pytest.fixture
def dockyard(settings: Settings) -> Iterator[Dockyard]:
    parts = build(settings)
    bootstrap(settings, parts.access)
    yield parts
    parts.db.dispose()


@pytest.fixture
def app(settings: Settings, dockyard: Dockyard) -> Starlette:
    return create_app(settings, dockyard, background_jobs=False)


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    """A client signed in as the admin user (HTTP Basic on every request)."""
    with TestClient(app, headers=ADMIN) as test_client:
        yield test_client


@pytest.fixture
def anonymous(app: Starlette) -> Iterator[TestClient]:
    """A client without credentials, on the same app as ``client``."""
    with TestClient(app) as test_client:
        yield test_client


@contextlib.contextmanager
def _recording(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement.lstrip().split(None, 1)[0].upper())

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)


@pytest.fixture
def statements_of() -> Callable[[Dockyard], contextlib.AbstractContextManager[list[str]]]:
    """``with statements_of(node) as seen:`` records the verb of every SQL statement ``node`` sends."""
    return lambda node: _recording(node.db)


@pytest.fixture
def statements(dockyard: Dockyard) -> Iterator[list[str]]:
    """The verb (SELECT, INSERT, …) of every SQL statement the registry sends from now on."""
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement.lstrip().split(None, 1)[0].upper())

    sa.event.listen(dockyard.db.engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(dockyard.db.engine, "before_cursor_execute", record)
