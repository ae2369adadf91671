"""Fixtures for the end-to-end suite: running `dockyard serve` processes, HTTP clients, container tools."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.support import ContainerTools, DockyardServer, HttpsServer
from tests.support.postgres import free_port

#: Every server the suite started, so a failing test can show the logs of the ones it used.
_SERVERS: list[DockyardServer] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """Attach the stderr/stdout of the servers a failed test ran against to its report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for server in _SERVERS:
        shared_but_unused = server.owner == "" and "dockyard_server" not in getattr(item, "fixturenames", ())
        if item.nodeid.startswith(server.owner) and not shared_but_unused:
            report.sections.append((f"dockyard serve on port {server.port}", server.logs()))


@pytest.fixture(scope="session")
def e2e_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-logs")


ServerFactory = Callable[..., DockyardServer]


def _finish(servers: list[DockyardServer]) -> list[str]:
    """Stop every server; describe the ones that had died or would not stop."""
    problems = []
    for server in servers:
        if server.proc is None:
            continue
        crashed = server.proc.poll() is not None and not server.stopped_on_purpose
        server.stop()
        if crashed:
            problems.append(f"dockyard serve on port {server.port} exited early:\n{server.logs()}")
        elif server.forced_kill:
            problems.append(f"dockyard serve on port {server.port} ignored SIGTERM:\n{server.logs()}")
    return problems


class ServerGroup:
    """Servers started together and stopped together, each listed for failed tests' reports."""

    def __init__(self) -> None:
        self.servers: list[DockyardServer] = []

    def start(self, server: DockyardServer, *, wait: bool = True) -> DockyardServer:
        _SERVERS.append(server)
        self.servers.append(server)
        return server.start(wait=wait)


@contextmanager
def server_group() -> Iterator[ServerGroup]:
    """A ServerGroup stopped on leaving, which fails (with their logs) if a server had died or hung."""
    group = ServerGroup()
    try:
        yield group
    finally:
        problems = _finish(group.servers)
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def start_server(request: pytest.FixtureRequest, e2e_logs: Path) -> Iterator[ServerFactory]:
    """Start extra servers for one test (own data dirs, restarts, PostgreSQL); all stopped afterwards.

    ``start_server(data_dir=..., port=..., cwd=..., extra_args=[...], env={...}, wait=True)``,
    ``env`` being settings for that server only. A server that exits by itself (not through
    ``stop``/``kill``) fails the test at teardown with its logs.
    """
    with server_group() as group:

        def start(
            *,
            data_dir: Path | None = None,
            port: int | None = None,
            cwd: Path | None = None,
            extra_args: tuple[str, ...] | list[str] = (),
            env: dict[str, str] | None = None,
            wait: bool = True,
        ) -> DockyardServer:
            server = DockyardServer(
                log_dir=e2e_logs,
                port=port or free_port(),
                data_dir=data_dir,
                cwd=cwd,
                extra_args=extra_args,
                owner=request.node.nodeid,
                env=env,
            )
            return group.start(server, wait=wait)

        yield start


@pytest.fixture(scope="session")
def dockyard_server(tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path) -> Iterator[DockyardServer]:
    """One registry (SQLite + filesystem) shared by the client tests, which use distinct repositories."""
    data_dir = tmp_path_factory.mktemp("shared-server") / "data"
    with server_group() as group:
        yield group.start(DockyardServer(log_dir=e2e_logs, port=free_port(), data_dir=data_dir, owner=""))


@pytest.fixture(scope="session")
def registry_http(dockyard_server: DockyardServer) -> Iterator[httpx.Client]:
    """Raw HTTP to the shared registry."""
    with dockyard_server.http(timeout=60.0) as client:
        yield client


@pytest.fixture(scope="session")
def container_tools(
    tmp_path_factory: pytest.TempPathFactory, dockyard_server: DockyardServer
) -> Iterator[ContainerTools]:
    """skopeo, podman and buildah kept off the machine's configuration, signed in to the shared registry."""
    tools = ContainerTools(tmp_path_factory.mktemp("container-tools"))
    tools.authorize(dockyard_server.host)
    yield tools
    tools.close()


@pytest.fixture
def fresh_postgres_url(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty database on the session's PostgreSQL cluster, dropped afterwards."""
    import sqlalchemy as sa

    from dockyard.db import Database

    base, _, _ = postgres_url.rpartition("/")
    name = "e2e_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    admin = Database(postgres_url, pool_size=1)

    def drop_and(create: bool) -> None:
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            if create:
                conn.execute(sa.text(f"CREATE DATABASE {name}"))

    drop_and(create=True)
    try:
        yield f"{base}/{name}"
    finally:
        drop_and(create=False)
        admin.dispose()


StartHttps = Callable[..., HttpsServer]


@pytest.fixture
def start_https_server(request: pytest.FixtureRequest, e2e_logs: Path) -> Iterator[StartHttps]:
    """Like conftest's ``start_server``, for HttpsServer: logs attached to failures, stopped afterwards."""
    started: list[DockyardServer] = []

    def start(*, data_dir: Path, extra_args: tuple[str, ...] = ()) -> HttpsServer:
        server = HttpsServer(
            log_dir=e2e_logs,
            port=free_port(),
            data_dir=data_dir,
            extra_args=["--tls", "self-signed", *extra_args],
            owner=request.node.nodeid,
        )
        _SERVERS.append(server)
        started.append(server)
        return server.start()

    yield start
    problems = _finish(started)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
