"""Fixtures for the CLI tests: a real `dockyard serve`, private credential files, an in-process CLI runner.

The servers come from the end-to-end suite's helpers (DockyardServer, start_server), which
start every server with the suite's admin password (DOCKYARD_ADMIN_PASSWORD).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dockyard.cli import app
from tests.e2e.conftest import _SERVERS, e2e_logs, server_group, start_server  # noqa: F401 - fixtures used here
from tests.e2e.support import ADMIN_PASSWORD, ADMIN_USERNAME, DockyardServer, wait_for
from tests.support.postgres import free_port

SHARED_OWNER = "tests/cli (shared registry)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """Attach the logs of the servers a failed test used."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    uses_shared = "registry" in getattr(item, "fixturenames", ())
    for server in _SERVERS:
        if server.owner == item.nodeid or (uses_shared and server.owner == SHARED_OWNER):
            report.sections.append((f"dockyard serve on port {server.port}", server.logs()))


def wait_answering(server: DockyardServer, timeout: float = 60.0) -> None:
    """Poll GET /v2/ until the server answers at all (401 without credentials); fail if it dies."""

    def answering() -> bool:
        if not server.running():
            pytest.fail(f"dockyard serve exited before answering:\n{server.logs()}")
        try:
            return httpx.get(f"{server.url}/v2/", timeout=2.0).status_code in (200, 401)
        except httpx.TransportError:
            return False

    wait_for(answering, timeout=timeout, what=f"dockyard serve on port {server.port} to answer")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path) -> Iterator[DockyardServer]:  # noqa: F811
    """One registry (SQLite) whose admin password is ADMIN_PASSWORD, shared by the CLI tests."""
    root = tmp_path_factory.mktemp("cli-server")
    server = DockyardServer(log_dir=e2e_logs, port=free_port(), data_dir=root / "data", owner=SHARED_OWNER)
    with server_group() as group:
        yield group.start(server)


def private_files(folder: Path) -> dict[str, str]:
    """HOME, XDG_CONFIG_HOME, XDG_RUNTIME_DIR, DOCKER_CONFIG and REGISTRY_AUTH_FILE under ``folder``."""
    (folder / "home").mkdir(parents=True, exist_ok=True)
    (folder / "run").mkdir(mode=0o700, exist_ok=True)
    return {
        "HOME": str(folder / "home"),
        "XDG_RUNTIME_DIR": str(folder / "run"),
        "XDG_CONFIG_HOME": str(folder / "home" / ".config"),
        "DOCKER_CONFIG": str(folder / "docker"),
        "REGISTRY_AUTH_FILE": str(folder / "containers" / "auth.json"),
    }


@dataclass
class Cli:
    """Runs `dockyard` in this process against one registry, with its own credential files."""

    folder: Path
    registry: str = ""
    runner: CliRunner = field(default_factory=CliRunner)

    @property
    def env(self) -> dict[str, str]:
        return private_files(self.folder)

    @property
    def docker_config(self) -> Path:
        return Path(self.env["DOCKER_CONFIG"]) / "config.json"

    @property
    def auth_file(self) -> Path:
        return Path(self.env["REGISTRY_AUTH_FILE"])

    def another(self, folder: Path) -> Cli:
        """A CLI for the same registry with other credential files (another person's machine)."""
        return Cli(folder=folder, registry=self.registry)

    def run(self, *args: str, input: str | None = None, registry: bool = True) -> Any:
        """Invoke the CLI; ``registry`` appends --registry for the commands that take it."""
        argv = [*args, "--registry", self.registry] if registry and self.registry else list(args)
        return self.runner.invoke(app, argv, input=input, env=self.env, catch_exceptions=False)

    def ok(self, *args: str, input: str | None = None, registry: bool = True) -> Any:
        result = self.run(*args, input=input, registry=registry)
        assert result.exit_code == 0, f"dockyard {' '.join(args)} exited {result.exit_code}:\n{result.output}"
        return result

    def json(self, *args: str) -> Any:
        """Run with -o json and parse stdout."""
        return json.loads(self.ok(*args, "-o", "json").stdout)

    def fails(self, *args: str, code: int = 1, registry: bool = True) -> Any:
        result = self.run(*args, registry=registry)
        assert result.exit_code == code, (
            f"dockyard {' '.join(args)} exited {result.exit_code}, expected {code}:\n{result.output}"
        )
        return result

    def login(self, username: str = ADMIN_USERNAME, password: str = ADMIN_PASSWORD) -> Any:
        return self.ok(
            "login", self.registry, "-u", username, "--password-stdin", input=password, registry=False
        )


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME, XDG_RUNTIME_DIR, DOCKER_CONFIG and REGISTRY_AUTH_FILE under ``tmp_path/cli``; no DOCKYARD_*."""
    for name in list(os.environ):
        if name.startswith("DOCKYARD_"):
            monkeypatch.delenv(name)
    for name, value in private_files(tmp_path / "cli").items():
        monkeypatch.setenv(name, value)
    return Path(os.environ["HOME"])


@pytest.fixture
def cli(isolated: Path, registry: DockyardServer) -> Cli:
    """The CLI pointed at the shared registry, not logged in yet."""
    return Cli(folder=isolated.parent, registry=registry.url)


@pytest.fixture
def admin(cli: Cli) -> Cli:
    """The CLI logged in to the shared registry as the admin user."""
    cli.login()
    return cli
