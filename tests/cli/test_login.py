"""`dockyard login`/`logout` against a running registry, and how every other command authenticates."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jwt
import pytest

from dockyard.cli.credentials import NULL_GUID, encode_auth
from tests.cli.conftest import Cli
from tests.e2e.support import ADMIN_PASSWORD, ADMIN_USERNAME, DockyardServer, require_tool, run
from tests.support.images import make_image, write_oci_layout

pytestmark = pytest.mark.e2e


def _stored(path_text: str, host: str) -> tuple[str, str]:
    entry = json.loads(path_text)["auths"][host]
    username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return username, password


def test_login_stores_a_refresh_token_in_both_files(cli: Cli, registry: DockyardServer) -> None:
    cli.docker_config.parent.mkdir(parents=True)
    other = {"auth": encode_auth("bob", "bobs-password")}
    cli.docker_config.write_text(json.dumps({"auths": {"elsewhere.example": other}, "psFormat": "table"}))

    result = cli.login()
    assert result.stdout.strip() == "Login Succeeded"

    docker_username, docker_token = _stored(cli.docker_config.read_text(), registry.host)
    podman_username, podman_token = _stored(cli.auth_file.read_text(), registry.host)
    assert docker_username == podman_username == NULL_GUID
    assert docker_token == podman_token
    claims = jwt.decode(docker_token, options={"verify_signature": False})
    assert (claims["sub"], claims["grant_type"]) == (ADMIN_USERNAME, "refresh_token")
    assert ADMIN_PASSWORD not in cli.docker_config.read_text()

    kept = json.loads(cli.docker_config.read_text())
    assert kept["auths"]["elsewhere.example"] == other
    assert kept["psFormat"] == "table"

    # every other command authenticates with the stored refresh token
    assert cli.json("show")["loginServer"] == registry.host

    logout = cli.ok("logout", registry.host, registry=False)
    assert registry.host in logout.stdout
    assert registry.host not in json.loads(cli.docker_config.read_text())["auths"]
    assert registry.host not in json.loads(cli.auth_file.read_text())["auths"]
    assert json.loads(cli.docker_config.read_text())["auths"]["elsewhere.example"] == other
    assert "Not logged in" in cli.ok("logout", registry.host, registry=False).stdout

    refused = cli.fails("show")
    assert f"not logged in to {registry.host}: run `dockyard login {registry.host}` first" in refused.stderr


def test_wrong_password_fails_and_stores_nothing(cli: Cli) -> None:
    result = cli.run(
        "login", cli.registry, "-u", ADMIN_USERNAME, "--password-stdin", input="wrong", registry=False
    )
    assert result.exit_code == 1
    assert "login to" in result.stderr
    assert "failed" in result.stderr
    assert not cli.docker_config.exists()
    assert not cli.auth_file.exists()


def test_login_prompts_for_what_is_missing(cli: Cli, registry: DockyardServer) -> None:
    result = cli.ok("login", registry.host, input=f"{ADMIN_USERNAME}\n{ADMIN_PASSWORD}\n", registry=False)
    assert "Username" in result.output
    assert "Login Succeeded" in result.stdout
    assert ADMIN_PASSWORD not in result.output, "the password prompt must not echo"
    assert _stored(cli.auth_file.read_text(), registry.host)[0] == NULL_GUID


def test_expose_token_prints_an_access_token_and_stores_nothing(cli: Cli, registry: DockyardServer) -> None:
    result = cli.ok(
        "login", cli.registry, "-u", ADMIN_USERNAME, "-p", ADMIN_PASSWORD, "--expose-token", registry=False
    )
    shown = json.loads(result.stdout)
    assert shown["loginServer"] == registry.host
    claims = jwt.decode(shown["accessToken"], options={"verify_signature": False})
    assert (claims["sub"], claims["grant_type"], claims["access"]) == (ADMIN_USERNAME, "access_token", [])
    assert not cli.docker_config.exists()
    assert not cli.auth_file.exists()

    # without -u/-p it uses the stored login
    cli.login()
    stored = cli.docker_config.read_text()
    again = json.loads(cli.ok("login", registry.host, "--expose-token", registry=False).stdout)
    claims = jwt.decode(again["accessToken"], options={"verify_signature": False})
    assert (claims["sub"], claims["grant_type"]) == (ADMIN_USERNAME, "access_token")
    assert cli.docker_config.read_text() == stored


def test_a_refused_stored_login_says_to_log_in_again(cli: Cli, registry: DockyardServer) -> None:
    cli.login()
    for path in (cli.auth_file, cli.docker_config):
        data = json.loads(path.read_text())
        data["auths"][registry.host]["auth"] = encode_auth(NULL_GUID, "expired.or.forged")
        path.write_text(json.dumps(data))

    result = cli.fails("repository", "list")
    assert f"run `dockyard login {registry.host}` again" in result.stderr


def test_the_containers_auth_file_alone_is_enough(cli: Cli) -> None:
    cli.login()
    cli.docker_config.unlink()
    assert cli.json("show")["adminUserEnabled"] is True


def test_environment_credentials_override_the_stored_login(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_USERNAME", ADMIN_USERNAME)
    monkeypatch.setenv("DOCKYARD_PASSWORD", ADMIN_PASSWORD)
    assert cli.json("show")["name"] == "dockyard"
    assert not cli.docker_config.exists()

    monkeypatch.setenv("DOCKYARD_PASSWORD", "not-the-password")
    result = cli.fails("show")
    assert "DOCKYARD_USERNAME/DOCKYARD_PASSWORD" in result.stderr


def test_skopeo_uses_the_stored_login(cli: Cli, registry: DockyardServer, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo", "skopeo")
    cli.login()
    repository = "cli-login/skopeo"
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    layout = tmp_path / "layout"
    write_oci_layout(layout, {"v1": make_image("cli-skopeo")})
    target = f"docker://{registry.host}/{repository}:v1"
    auth = ["--authfile", str(cli.auth_file)]
    run(
        [
            skopeo,
            "--policy",
            str(policy),
            "copy",
            "--dest-tls-verify=false",
            *auth,
            f"oci:{layout}:v1",
            target,
        ]
    )
    tags = run([skopeo, "list-tags", "--tls-verify=false", *auth, f"docker://{registry.host}/{repository}"])
    assert json.loads(tags.stdout)["Tags"] == ["v1"]
    assert cli.json("repository", "show-tags", "--repository", repository) == ["v1"]


def test_login_makes_the_registry_the_default(cli: Cli, registry: DockyardServer) -> None:
    before = cli.run("show", registry=False)
    assert before.exit_code == 1
    assert "127.0.0.1:5000" in before.output  # the built-in default, where nothing listens
    cli.login()
    shown = json.loads(cli.ok("show", "-o", "json", registry=False).stdout)
    assert shown["name"] == "dockyard"  # now the logged-in registry
    cli.ok("logout", cli.registry, registry=False)
    assert "127.0.0.1:5000" in cli.run("show", registry=False).output
