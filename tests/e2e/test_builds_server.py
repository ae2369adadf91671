"""A real build through the server: an uploaded context, POST /api/v1/runs, the builds.run job in
`dockyard serve`'s runtime (buildah, the system:tasks credential), the image pushed back, the log."""

from __future__ import annotations

import io
import json
import tarfile
import time

import httpx
import pytest

from tests.e2e.support import ContainerTools, DockyardServer, fetch_manifest, push_busybox_base

pytestmark = pytest.mark.e2e

BASE = "serverbuild/busybox:1"


@pytest.fixture(scope="module")
def base_image(
    container_tools: ContainerTools, dockyard_server: DockyardServer, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """``host/serverbuild/busybox:1``: busybox from scratch, pushed to the shared Dockyard."""
    store = tmp_path_factory.mktemp("server-base-store")
    return push_busybox_base(container_tools, store, "server-base", f"{dockyard_server.host}/{BASE}")


def context_tar(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def wait_final(http: httpx.Client, run_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = http.get(f"/api/v1/runs/{run_id}").json()
        if run["status"] in ("Succeeded", "Failed", "Canceled", "Error", "Timeout"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
        time.sleep(0.5)


def test_a_quick_build_runs_in_the_server(
    base_image: str, dockyard_server: DockyardServer, registry_http: httpx.Client
) -> None:
    dockerfile = (
        f"FROM {base_image}\nARG GREETING\n"
        'RUN /bin/busybox --install -s /bin && echo "$GREETING" > /greeting\n'
        "COPY ctx.txt /ctx.txt\n"
    )
    uploaded = registry_http.post(
        "/api/v1/builds/sources",
        content=context_tar({"Dockerfile": dockerfile, "ctx.txt": "from the context\n"}),
        headers={"Content-Type": "application/gzip"},
    )
    assert uploaded.status_code == 201, uploaded.text
    body = {
        "type": "build",
        "images": ["serverbuild/app:{{.Run.ID}}"],
        "source": {"kind": "upload", "location": uploaded.json()["digest"]},
        "args": {"GREETING": "hello"},
        "secretArgs": {"TOKEN": "s3cret-build-arg"},
    }
    queued = registry_http.post("/api/v1/runs", json=body)
    assert queued.status_code == 202, queued.text
    run_id = queued.json()["runId"]
    run = wait_final(registry_http, run_id)
    log = registry_http.get(f"/api/v1/runs/{run_id}/logs").text
    assert run["status"] == "Succeeded", (run, log)
    assert run["outputImages"][0]["repository"] == "serverbuild/app"
    assert run["outputImages"][0]["tag"] == run_id
    assert run["baseImages"][0]["image"] == base_image
    manifest = fetch_manifest(registry_http, "serverbuild/app", run_id)
    assert run["outputImages"][0]["digest"].startswith("sha256:")
    assert len(json.loads(manifest)["layers"]) >= 2  # the base and what the build added
    assert "s3cret-build-arg" not in log
    assert run_id in log
    runs_dir = dockyard_server.data_dir / "builds" / run_id if dockyard_server.data_dir else None
    assert runs_dir is not None
    assert not runs_dir.exists()  # the run's folder is removed at the end
