"""What the CLI says when the user got something wrong: one line, the right exit code, no traceback."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.cli import options
from dockyard.cli.credentials import NULL_GUID, encode_auth
from dockyard.config import LogFormat, LogLevel, TlsMode
from tests.cli.conftest import Cli
from tests.e2e.support import ADMIN_PASSWORD, ADMIN_USERNAME, DockyardServer, dockyard_command

pytestmark = pytest.mark.e2e


def _no_traceback(result: object) -> None:
    output = getattr(result, "output", "") + getattr(result, "stderr", "")
    assert "Traceback" not in output, output
    assert getattr(result, "exception", None) is None or isinstance(result.exception, SystemExit), output


@pytest.fixture
def local(isolated: Path) -> Cli:
    return Cli(folder=isolated.parent)


@pytest.mark.parametrize(
    "command",
    [["db", "current"], ["db", "check"], ["db", "upgrade"], ["admin", "enable"], ["admin", "reset-password"]],
)
def test_local_commands_name_a_missing_data_folder(local: Cli, tmp_path: Path, command: list[str]) -> None:
    result = local.fails(*command, "--data-dir", str(tmp_path / "nowhere"), registry=False)
    assert result.stderr.strip() == (
        f"ERROR: no data folder at {tmp_path / 'nowhere'}: "
        "give --data-dir (the folder `dockyard serve` uses) or --database-url"
    )
    _no_traceback(result)
    assert not (tmp_path / "nowhere").exists()


def test_local_commands_name_a_missing_database(local: Cli, tmp_path: Path) -> None:
    result = local.fails("db", "current", "--data-dir", str(tmp_path), registry=False)
    assert f"no database at {tmp_path / 'dockyard.db'}" in result.stderr
    assert not (tmp_path / "dockyard.db").exists(), "looking must not create an empty database"

    upgraded = local.ok("db", "upgrade", "--data-dir", str(tmp_path), registry=False)
    assert "database at revision" in upgraded.stdout
    current = json.loads(local.ok("db", "current", "--data-dir", str(tmp_path), registry=False).stdout)
    assert current["current"] == current["head"]
    assert local.ok("db", "check", "--data-dir", str(tmp_path), registry=False).stdout.strip() == (
        "schema is up to date"
    )


def test_an_unreachable_database_is_one_line(local: Cli) -> None:
    url = "postgresql://nobody:secret@127.0.0.1:1/none"
    result = local.fails("db", "current", "--database-url", url, registry=False)
    assert result.stderr.startswith("ERROR: cannot use the database: ")
    assert len(result.stderr.strip().splitlines()) == 1
    _no_traceback(result)


def test_a_missing_config_file_exits_2(local: Cli, tmp_path: Path) -> None:
    result = local.fails("admin", "enable", "--config", str(tmp_path / "none.toml"), code=2, registry=False)
    assert "config file" in result.stderr
    assert "not found" in result.stderr


def test_admin_reset_password_works_offline(local: Cli, tmp_path: Path) -> None:
    """A lost admin password: regenerate it on the database, no login needed."""
    data = tmp_path / "data"
    data.mkdir()
    local.ok("db", "upgrade", "--data-dir", str(data), registry=False)
    first = json.loads(local.ok("admin", "reset-password", "--data-dir", str(data), registry=False).stdout)
    assert first["username"] == "dockyard"
    assert [p["name"] for p in first["passwords"]] == ["password", "password2"]
    one = local.ok(
        "admin", "reset-password", "--data-dir", str(data), "--password-name", "password2", registry=False
    )
    again = json.loads(one.stdout)
    assert [p["name"] for p in again["passwords"]] == ["password2"]
    assert again["passwords"][0]["value"] != first["passwords"][1]["value"]
    assert "Shown only now" in one.stderr


@pytest.mark.parametrize("url", ["http://[bad", "ftp://registry.example", "http://host:99999", "http://a b"])
def test_a_bad_registry_url_exits_2(local: Cli, url: str) -> None:
    result = local.fails("show", "--registry", url, code=2, registry=False)
    assert result.stderr.startswith(f"ERROR: not a registry URL: {url!r}")
    _no_traceback(result)


def test_an_unreachable_registry_is_one_line(local: Cli) -> None:
    result = local.fails("repository", "list", "--registry", "http://127.0.0.1:1", registry=False)
    assert result.stderr.startswith("ERROR: cannot reach http://127.0.0.1:1: ")
    assert len(result.stderr.strip().splitlines()) == 1


def _forged_refresh_token(subject: str, expires: float) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'ES256'})}.{part({'sub': subject, 'exp': int(expires)})}.c2lnbmF0dXJl"


def _save_login(cli: Cli, host: str, username: str, password: str) -> None:
    cli.auth_file.parent.mkdir(parents=True, exist_ok=True)
    cli.auth_file.write_text(json.dumps({"auths": {host: {"auth": encode_auth(username, password)}}}))


@pytest.fixture
def own(
    isolated: Path, start_server: Callable[..., DockyardServer], tmp_path: Path
) -> tuple[Cli, DockyardServer]:
    """A registry of this test's own: its refused sign-ins must not count against the shared one's."""
    server = start_server(data_dir=tmp_path / "own-data")
    return Cli(folder=isolated.parent, registry=server.url), server


def test_a_refused_login_says_why(own: tuple[Cli, DockyardServer]) -> None:
    cli, registry = own
    _save_login(cli, registry.host, NULL_GUID, _forged_refresh_token("alice", time.time() - 3600))
    expired = cli.fails("show")
    assert f"the saved login for 'alice' on {registry.host} expired at " in expired.stderr
    assert f"run `dockyard login {registry.host}` again" in expired.stderr

    _save_login(cli, registry.host, NULL_GUID, _forged_refresh_token("alice", time.time() + 3600))
    refused = cli.fails("show")
    assert (
        f"the registry {registry.host} refused the saved login for 'alice': the identity is disabled or "
        "deleted, or its credential was renewed" in refused.stderr
    )
    assert "expired" not in refused.stderr

    _save_login(cli, registry.host, "bob", "a-wrong-password")  # as `podman login` stores it
    wrong = cli.fails("show")
    assert f"refused the login saved in {cli.auth_file} for 'bob': wrong password" in wrong.stderr


def test_a_disabled_identity_is_not_called_expired(own: tuple[Cli, DockyardServer], tmp_path: Path) -> None:
    admin, _ = own
    admin.login()
    created = admin.json("user", "create", "--name", "cli-disabled-carol")
    secret = next(c["value"] for c in created["credentials"] if c["name"] == "secret")
    admin.json("role", "assignment", "create", "--assignee", "cli-disabled-carol", "--role", "Reader")
    carol = admin.another(tmp_path / "carol")
    carol.login("cli-disabled-carol", secret)
    assert carol.json("show")["name"] == "dockyard"

    admin.json("user", "update", "--name", "cli-disabled-carol", "--status", "disabled")
    refused = carol.fails("show")
    assert "refused the saved login for 'cli-disabled-carol': the identity is disabled" in refused.stderr
    assert "expired" not in refused.stderr
    admin.json("user", "delete", "--name", "cli-disabled-carol", "--yes")


def test_table_output_has_no_raw_json(admin: Cli) -> None:
    admin.ok("network-rule", "add", "--ip-address", "198.51.100.9")
    try:
        shown = admin.ok("show", "-o", "table").stdout
        assert "ipRules=[(action=Allow value=198.51.100.9/32)]" in shown
        assert "{" not in shown
        audit = admin.ok("audit", "list", "--top", "5", "-o", "tsv").stdout
        assert audit.strip()
        assert "{" not in audit
    finally:
        admin.ok("network-rule", "remove", "--ip-address", "198.51.100.9")


def test_the_cli_choices_match_the_settings_enums() -> None:
    assert [m.value for m in options.LogLevel] == [m.value for m in LogLevel]
    assert [m.value for m in options.TlsMode] == [m.value for m in TlsMode]
    assert [m.value for m in options.LogFormat] == [m.value for m in LogFormat]


def test_help_and_a_listing_command_import_no_server_code(tmp_path: Path) -> None:
    """`dockyard --help` and a client command must not pay for the server's imports."""
    probe = (
        "import sys\n"
        "sys.argv = sys.argv[1:]\n"
        "from dockyard.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ['sqlalchemy', 'starlette', 'granian', 'alembic', 'cryptography', 'jwt', 'argon2',\n"
        "         'pydantic_settings', 'dockyard.config', 'dockyard.db', 'httpx', 'rich']\n"
        "print([m for m in heavy if m in sys.modules], file=sys.stderr)\n"
    )
    for argv in (["dockyard", "--help"], ["dockyard", "repository", "list", "-r", "http://127.0.0.1:1"]):
        done = subprocess.run(
            [sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr


def test_an_unwritable_credential_file_is_one_line(cli: Cli, registry: DockyardServer) -> None:
    """A file that reads as missing but cannot be written (under /proc): no traceback from login."""
    env = {**os.environ, **cli.env, "REGISTRY_AUTH_FILE": "/proc/dockyard-test/auth.json"}
    done = subprocess.run(
        dockyard_command("login", registry.host, "-u", ADMIN_USERNAME, "--password-stdin"),
        input=ADMIN_PASSWORD,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("ERROR: ")
    assert "/proc/dockyard-test" in done.stderr
