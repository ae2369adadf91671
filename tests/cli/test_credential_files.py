"""The credential store and argument handling, without a server."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
import typer

from dockyard.cli import credentials
from dockyard.cli.access_commands import join_repository_actions, parse_repository_actions
from dockyard.cli.client import login_argument, registry_url


def test_auth_file_locations_follow_the_tools_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    """containers-auth.json(5): REGISTRY_AUTH_FILE alone, else the runtime file, ~/.config, docker's."""
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    docker = isolated / ".docker" / "config.json"
    config = isolated / ".config" / "containers" / "auth.json"
    assert credentials.docker_config_path() == docker
    assert credentials.containers_auth_path() == runtime / "containers" / "auth.json"
    assert credentials.auth_files() == [
        credentials.AuthFile(runtime / "containers" / "auth.json", primary=True),
        credentials.AuthFile(config, primary=False),
        credentials.AuthFile(docker, primary=True),
    ]

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))  # the tools skip a missing one
    assert credentials.containers_auth_path() == config
    assert [f.path for f in credentials.auth_files()] == [config, docker]

    # without XDG_RUNTIME_DIR: /run/containers/UID (here a stand-in for /run/containers)
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(credentials, "RUN_CONTAINERS", tmp_path / "run-containers")
    (tmp_path / "run-containers" / str(os.getuid())).mkdir(parents=True)
    assert credentials.containers_auth_path() == tmp_path / "run-containers" / str(os.getuid()) / "auth.json"

    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "explicit.json"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dockercfg"))
    assert credentials.auth_files() == [
        credentials.AuthFile(tmp_path / "explicit.json", primary=True),
        credentials.AuthFile(tmp_path / "dockercfg" / "config.json", primary=True),
    ]


def test_login_replaces_older_entries_in_fallback_files_only(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    fallback = isolated / ".config" / "containers" / "auth.json"
    fallback.parent.mkdir(parents=True)
    stale = {"auth": base64.b64encode(b"old:password").decode()}
    fallback.write_text(json.dumps({"auths": {"https://reg.example": stale}}))

    written = credentials.store("reg.example", credentials.NULL_GUID, "fresh")
    assert written == [credentials.containers_auth_path(), fallback, credentials.docker_config_path()]
    assert json.loads(fallback.read_text())["auths"] == {
        "reg.example": {"auth": credentials.encode_auth(credentials.NULL_GUID, "fresh")}
    }

    # a fallback file without an entry for the host is not created or touched
    assert credentials.store("other.example", credentials.NULL_GUID, "fresh") == [
        credentials.containers_auth_path(),
        credentials.docker_config_path(),
    ]
    assert credentials.remove("reg.example") == written


def test_token_claims_are_read_without_verifying() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"sub": "alice", "exp": 5}).encode()).decode().rstrip("=")
    assert credentials.token_claims(f"e30.{payload}.sig") == {"sub": "alice", "exp": 5}
    assert credentials.token_claims("a-password") is None
    assert credentials.token_claims("a.b$.c") is None


def test_store_keeps_other_entries_and_writes_private_files(isolated: Path) -> None:
    docker = credentials.docker_config_path()
    docker.parent.mkdir(parents=True)
    other = {"auth": base64.b64encode(b"bob:pw").decode()}
    docker.write_text(json.dumps({"auths": {"other.example": other}, "HttpHeaders": {"X-Test": "1"}}))

    written = credentials.store("reg.example:5000", credentials.NULL_GUID, "refresh-token")

    assert written == [credentials.containers_auth_path(), docker]
    for path in written:
        data = json.loads(path.read_text())
        assert data["auths"]["reg.example:5000"] == {
            "auth": base64.b64encode(f"{credentials.NULL_GUID}:refresh-token".encode()).decode()
        }
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    kept = json.loads(docker.read_text())
    assert kept["auths"]["other.example"] == other
    assert kept["HttpHeaders"] == {"X-Test": "1"}

    found = credentials.stored_credentials("reg.example:5000")
    assert found is not None
    assert (found.username, found.password, found.source) == (
        credentials.NULL_GUID,
        "refresh-token",
        str(credentials.containers_auth_path()),
    )
    assert credentials.stored_credentials("reg.example:5001") is None

    assert credentials.remove("reg.example:5000") == written
    assert json.loads(docker.read_text())["auths"] == {"other.example": other}
    assert json.loads(credentials.containers_auth_path().read_text())["auths"] == {}
    assert credentials.remove("reg.example:5000") == []


def test_scheme_prefixed_entries_are_read_and_removed(isolated: Path) -> None:
    auth_file = credentials.containers_auth_path()
    auth_file.parent.mkdir(parents=True)
    entry = {"auth": base64.b64encode(b"alice:secret").decode()}
    auth_file.write_text(json.dumps({"auths": {"https://reg.example": entry, "reg.example/team": entry}}))

    found = credentials.stored_credentials("reg.example")
    assert found is not None
    assert (found.username, found.password) == ("alice", "secret")

    credentials.remove("reg.example")
    assert json.loads(auth_file.read_text())["auths"] == {"reg.example/team": entry}


def test_a_damaged_file_is_reported_and_left_alone(isolated: Path) -> None:
    docker = credentials.docker_config_path()
    docker.parent.mkdir(parents=True)
    docker.write_text("{not json")
    with pytest.raises(typer.Exit):
        credentials.store("reg.example", credentials.NULL_GUID, "token")
    assert docker.read_text() == "{not json"
    assert not credentials.containers_auth_path().exists()


def test_environment_credentials_override_the_stored_login(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials.store("reg.example", credentials.NULL_GUID, "token")
    monkeypatch.setenv("DOCKYARD_USERNAME", "ci-bot")
    monkeypatch.setenv("DOCKYARD_PASSWORD", "ci-secret")
    found = credentials.credentials_for("reg.example")
    assert found is not None
    assert (found.username, found.password, found.from_environment) == ("ci-bot", "ci-secret", True)

    monkeypatch.delenv("DOCKYARD_PASSWORD")
    with pytest.raises(typer.Exit):
        credentials.credentials_for("reg.example")


def test_registry_urls(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    assert registry_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry_url("localhost:5000") == "http://localhost:5000"
    assert registry_url("[::1]:5000") == "http://[::1]:5000"
    assert registry_url("registry.example.com") == "https://registry.example.com"
    assert registry_url("http://10.0.0.5:5000/") == "http://10.0.0.5:5000"
    assert registry_url(None) == "http://127.0.0.1:5000"
    monkeypatch.setenv("DOCKYARD_REGISTRY", "reg.example:8443")
    assert registry_url(None) == "https://reg.example:8443"
    assert login_argument("http://127.0.0.1:5000") == "127.0.0.1:5000"
    assert login_argument("http://10.0.0.5:5000") == "http://10.0.0.5:5000"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--name", "m", "--repository", "team/app", "content/read", "metadata/read", "-o", "json"],
            ["--name", "m", "--repository", "team/app=content/read,metadata/read", "-o", "json"],
        ),
        (
            ["--repository", "a", "content/read", "--repository", "b/*", "content/write"],
            ["--repository", "a=content/read", "--repository", "b/*=content/write"],
        ),
        (["--repository=a", "content/read"], ["--repository", "a=content/read"]),
        (
            ["--add-repository", "a=content/read", "content/write"],
            ["--add-repository", "a=content/read,content/write"],
        ),
        (["--remove-repository", "a=content/read"], ["--remove-repository", "a=content/read"]),
        (["--description", "x", "--repository"], ["--description", "x", "--repository"]),
    ],
)
def test_repository_actions_are_folded_into_one_value(argv: list[str], expected: list[str]) -> None:
    assert join_repository_actions(argv) == expected


def test_repository_actions_parse_and_merge() -> None:
    assert parse_repository_actions(
        ["a=content/read", "a=metadata/read,content/read", "*=content/write"], "--x"
    ) == {
        "a": ["content/read", "metadata/read"],
        "*": ["content/write"],
    }
    with pytest.raises(typer.Exit):
        parse_repository_actions(["a"], "--repository")
