"""`dockyard admin enable` on a PostgreSQL deployment whose admin user started disabled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dockyard.access.services import bootstrap, build_access_services
from dockyard.config import Settings
from dockyard.db import Database
from dockyard.server import _prepare_database as prepare_database
from tests.cli.conftest import Cli, wait_answering
from tests.e2e.support import ADMIN_PASSWORD, ADMIN_USERNAME, DockyardServer, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def empty_postgres_url(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new database on the session's PostgreSQL cluster (not migrated), dropped afterwards."""
    url = sa.make_url(postgres_url)
    name = "cli_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    server = Database(postgres_url, pool_size=1)

    def recreate(create: bool) -> None:
        with server.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            if create:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    recreate(create=True)
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        recreate(create=False)
        server.dispose()


def _admin_enabled(database_url: str) -> bool | None:
    db = Database(database_url, pool_size=1)
    try:
        access = build_access_services(Settings(database_url=database_url), db)
        admin = access.identities.admin()
        return None if admin is None else admin.enabled
    finally:
        db.dispose()


@pytest.fixture
def cli(isolated: Path) -> Cli:
    """The CLI with private credential files, for a server this test starts itself."""
    return Cli(folder=isolated.parent)


def test_admin_enable_on_postgresql(
    cli: Cli, empty_postgres_url: str, start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    url = empty_postgres_url
    early = cli.fails("admin", "enable", "--database-url", url, registry=False)
    assert "run `dockyard db upgrade` first" in early.stderr

    assert "database at revision" in cli.ok("db", "upgrade", "--database-url", url, registry=False).stdout
    # What `dockyard serve` does at first start: without DOCKYARD_ADMIN_PASSWORD, on PostgreSQL,
    # the admin user is created disabled with passwords nobody has seen.
    db = Database(url, pool_size=1)
    try:
        settings = Settings(database_url=url, data_dir=tmp_path / "data")
        created = bootstrap(settings, build_access_services(settings, db))
        assert [c.name for c in created] == ["password", "password2"]
    finally:
        db.dispose()
    assert _admin_enabled(url) is False

    server = start_server(data_dir=tmp_path / "data", extra_args=["--database-url", url], wait=False)
    wait_answering(server)
    assert "the admin user 'dockyard' is disabled" in server.stderr()
    refused = cli.run("login", server.url, "-u", ADMIN_USERNAME, "--password-stdin", input=ADMIN_PASSWORD)
    assert refused.exit_code == 1, "the server's DOCKYARD_ADMIN_PASSWORD does not apply to an existing admin"

    enabled = cli.json("admin", "enable", "--database-url", url)
    assert enabled["username"] == ADMIN_USERNAME
    assert enabled["enabled"] is True
    passwords = {p["name"]: p["value"] for p in enabled["passwords"]}
    assert set(passwords) == {"password", "password2"}
    assert passwords["password"] != passwords["password2"]
    assert _admin_enabled(url) is True

    def logs_in() -> bool:
        result = cli.run(
            "login", server.url, "-u", ADMIN_USERNAME, "--password-stdin", input=passwords["password"]
        )
        return result.exit_code == 0

    wait_for(logs_in, timeout=30, what="the admin user to log in after `dockyard admin enable`")
    shown = cli.json("show", "--registry", server.url)
    assert shown["adminUserEnabled"] is True
    assert cli.json("credential", "show", "--registry", server.url)["enabled"] is True

    # Running it again regenerates both passwords: the old ones stop working.
    again = cli.json("admin", "enable", "--database-url", url)
    new = {p["name"]: p["value"] for p in again["passwords"]}
    assert not set(new.values()) & set(passwords.values())
    wait_for(
        lambda: (
            cli.run(
                "login", server.url, "-u", ADMIN_USERNAME, "--password-stdin", input=passwords["password2"]
            ).exit_code
            == 1
        ),
        timeout=60,
        what="the old admin password to stop working",
    )
    cli.ok("login", server.url, "-u", ADMIN_USERNAME, "--password-stdin", input=new["password2"])


def test_first_start_on_postgresql_says_the_new_admin_is_disabled(
    empty_postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(database_url=empty_postgres_url, data_dir=tmp_path / "data", admin_password="")
    prepare_database(settings.model_dump_json())
    shown = capsys.readouterr().err
    assert "Admin user created (disabled until `dockyard admin enable`); its passwords" in shown
    assert _admin_enabled(empty_postgres_url) is False
    prepare_database(settings.model_dump_json())  # a later start: the warning alone
    again = capsys.readouterr().err
    assert "Admin user created" not in again
    assert "the admin user 'dockyard' is disabled" in again
