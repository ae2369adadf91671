"""Fixtures shared by every test: databases (SQLite and a real PostgreSQL), settings, apps, clients."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

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

#: Which database engines the API suite runs on; CI runs both. Narrow it only for a quick local run.
BACKENDS = [b for b in os.environ.get("DOCKYARD_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]


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
    """An empty, migrated database on each configured engine."""
    if request.param == "sqlite":
        target = tmp_path / "dockyard.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    url = request.getfixturevalue("postgres_url")
    _truncate_all(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "access_log": False,
            "db_pool_size": 8,
            "admin_password": ADMIN_PASSWORD,
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
