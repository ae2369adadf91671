"""`dockyard import` end to end: real upstreams (CNCF Distribution over plain HTTP, a second
`dockyard serve` with the token flow), the CLI, and skopeo pulling every platform back."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import server_group
from tests.e2e.support import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    ContainerTools,
    DockyardServer,
    clean_environment,
    dockyard_command,
    push_image,
    run,
    wait_for,
)
from tests.support.distribution import Distribution, distribution, push_to
from tests.support.images import OCI_INDEX, make_artifact, make_image, make_index, sha256, write_oci_layout
from tests.support.postgres import free_port

pytestmark = pytest.mark.e2e

AMD = make_image("e2e-import-amd", architecture="amd64", layers=2, layer_size=300_000)
ARM = make_image("e2e-import-arm", architecture="arm64", layers=2, layer_size=300_000)
INDEX = make_index([AMD, ARM])
BIG = make_image("e2e-import-big", layer_size=8 * 1024 * 1024)


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerTools]:
    tools = ContainerTools(tmp_path_factory.mktemp("import-tools"))
    yield tools
    tools.close()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, tools: ContainerTools) -> Iterator[Distribution]:
    """Distribution with team/multi:v1, a two-platform index pushed by `skopeo copy --all`."""
    layout = tmp_path_factory.mktemp("layout")
    write_oci_layout(layout, {}, {"multi": (INDEX, [AMD, ARM])})
    with distribution(tmp_path_factory.mktemp("distribution")) as server:
        tools.skopeo(
            "copy",
            "--all",
            "--dest-tls-verify=false",
            f"oci:{layout}:multi",
            f"docker://{server.host}/team/multi:v1",
        )
        with httpx.Client(base_url=server.url) as http:
            push_to(http, "team/big", "v1", BIG)
        yield server


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path) -> Iterator[DockyardServer]:
    """The registry importing: plain HTTP and loopback allowed for the test upstreams."""
    env = {"DOCKYARD_INSECURE_UPSTREAMS": "127.0.0.1", "DOCKYARD_UPSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8"}
    data_dir = tmp_path_factory.mktemp("import-target") / "data"
    with server_group() as group:
        yield group.start(DockyardServer(log_dir=e2e_logs, port=free_port(), data_dir=data_dir, env=env))


def dockyard_import(target: DockyardServer, *args: str, check: bool = True) -> Any:
    """`dockyard import … -o json` as the target's admin; the finished import (or the failed run)."""
    env = clean_environment(DOCKYARD_USERNAME=ADMIN_USERNAME, DOCKYARD_PASSWORD=ADMIN_PASSWORD)
    result = run(
        dockyard_command("import", *args, "--registry", target.url, "-o", "json"), env=env, check=check
    )
    return json.loads(result.stdout) if result.returncode == 0 else result


def pull_back(tools: ContainerTools, target: DockyardServer, reference: str, into: Path) -> dict[str, bytes]:
    """`skopeo copy --all` from the target into an OCI layout; its blobs by digest."""
    tools.authorize(target.host)
    tools.skopeo(
        "copy", "--all", "--src-tls-verify=false", f"docker://{target.host}/{reference}", f"oci:{into}:x"
    )
    return {f"sha256:{p.name}": p.read_bytes() for p in (into / "blobs" / "sha256").iterdir()}


def test_import_by_tag_every_platform_pulls_back_byte_exact(
    upstream: Distribution, target: DockyardServer, tools: ContainerTools, tmp_path: Path
) -> None:
    done = dockyard_import(target, "--source", f"{upstream.host}/team/multi:v1", "--image", "mirror/multi:v1")
    assert done["status"] == "succeeded"
    assert done["digest"] == sha256(INDEX)
    assert done["progress"]["manifestsDone"] == 3
    pulled = pull_back(tools, target, "mirror/multi:v1", tmp_path / "pulled")
    assert pulled[sha256(INDEX)] == INDEX
    for image in (AMD, ARM):
        assert pulled[image.digest] == image.manifest
        for blob in image.blobs:
            assert pulled[blob.digest] == blob.data


def test_existing_tag_refused_then_forced(upstream: Distribution, target: DockyardServer) -> None:
    with target.http() as http:
        push_image(http, "taken/multi", "v1", make_image("e2e-import-other"))
    refused = dockyard_import(
        target, "--source", f"{upstream.host}/team/multi:v1", "--image", "taken/multi:v1", check=False
    )
    assert refused.returncode == 1
    assert "taken/multi:v1 exists" in refused.stderr
    forced = dockyard_import(
        target, "--source", f"{upstream.host}/team/multi:v1", "--image", "taken/multi:v1", "--force"
    )
    assert forced["status"] == "succeeded"
    with target.http() as http:
        head = http.head("/v2/taken/multi/manifests/v1", headers={"Accept": OCI_INDEX})
    assert head.headers["Docker-Content-Digest"] == sha256(INDEX)


def test_missing_tag_fails_clearly(upstream: Distribution, target: DockyardServer) -> None:
    failed = dockyard_import(target, "--source", f"{upstream.host}/team/multi:nope", check=False)
    assert failed.returncode == 1
    assert "not found" in failed.stderr


def test_token_flow_by_digest_with_referrers(
    dockyard_server: DockyardServer, target: DockyardServer, tools: ContainerTools, tmp_path: Path
) -> None:
    """From a second Dockyard with credentials (Bearer tokens): by digest, referrers optional."""
    image = make_image("e2e-import-signed")
    signature = make_artifact("application/vnd.example.sig", b"e2e-sig", subject=image.descriptor())
    with dockyard_server.http() as http:
        digest = push_image(http, "src/signed", "v1", image)
        push_image(http, "src/signed", signature.digest, signature)
    source = f"{dockyard_server.host}/src/signed@{digest}"
    wrong = dockyard_import(
        target,
        "--source",
        source,
        "--repository",
        "dst/signed",
        "-u",
        ADMIN_USERNAME,
        "-p",
        "wrong",
        check=False,
    )
    assert wrong.returncode == 1
    assert "refused" in wrong.stderr
    assert "wrong" not in wrong.stderr.replace("refused", "")
    plain = dockyard_import(
        target, "--source", source, "--image", "dst/plain:v1", "-u", ADMIN_USERNAME, "-p", ADMIN_PASSWORD
    )
    assert plain["progress"]["manifestsDone"] == 1
    done = dockyard_import(
        target,
        "--source",
        source,
        "--image",
        "dst/signed:v1",
        "-u",
        ADMIN_USERNAME,
        "-p",
        ADMIN_PASSWORD,
        "--include-referrers",
    )
    assert done["progress"]["manifestsDone"] == 2
    with target.http() as http:
        referrers = http.get(f"/v2/dst/signed/referrers/{digest}").json()["manifests"]
        plain_referrers = http.get(f"/v2/dst/plain/referrers/{digest}").json()["manifests"]
    assert [r["digest"] for r in referrers] == [signature.digest]
    assert plain_referrers == []
    pulled = pull_back(tools, target, "dst/signed:v1", tmp_path / "signed")
    assert pulled[digest] == image.manifest


class StallingProxy:
    """A TCP proxy to ``upstream`` that passes ``budget`` bytes of answers, then holds the rest;
    ``cut()`` closes every connection and the listener: the upstream is gone mid-way."""

    def __init__(self, upstream_port: int, budget: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream_port = upstream_port
        self.budget = budget
        self.passed = 0
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, metered: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    return
                if metered:
                    with self.lock:
                        allowed = max(0, self.budget - self.passed)
                        self.passed += min(allowed, len(data))
                    if allowed < len(data):
                        sink.sendall(data[:allowed])
                        self.closed.wait()  # hold the rest until the cut
                        return
                sink.sendall(data)
        except OSError:
            return

    def cut(self) -> None:
        self.closed.set()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_upstream_down_midway_tags_nothing(upstream: Distribution, target: DockyardServer) -> None:
    proxy = StallingProxy(upstream.port, budget=2 * 1024 * 1024)
    try:
        started = dockyard_import(
            target, "--source", f"127.0.0.1:{proxy.port}/team/big:v1", "--image", "down/big:v1", "--no-wait"
        )
        with target.http() as http:

            def moving() -> Any:
                found = http.get(f"/api/v1/imports/{started['id']}").json()
                return found if found["progress"]["bytesDone"] > 0 else None

            wait_for(moving, timeout=60, what="the import to receive bytes")
            proxy.cut()

            def ended() -> Any:
                found = http.get(f"/api/v1/imports/{started['id']}").json()
                return found if found["status"] in ("succeeded", "failed") else None

            final = wait_for(ended, timeout=60, what="the import to end")
            assert final["status"] == "failed", final
            assert "unavailable" in final["error"]
            assert http.head("/v2/down/big/manifests/v1").status_code == 404
    finally:
        proxy.cut()
