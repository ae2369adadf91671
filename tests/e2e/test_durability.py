"""Uploads survive a graceful restart; a SIGKILL mid-upload leaves no partial blob and damages nothing."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import (
    ContainerTools,
    DockyardServer,
    fetch_blob,
    fetch_manifest,
    push_blob,
    push_image,
    sha256_digest,
    wait_for,
)
from tests.support.images import make_image, write_oci_layout
from tests.support.small_filesystem import small_filesystem

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
CHUNK = 256 * 1024  # how the streaming clients below hand their bodies to httpx


def _data(seed: str, size: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(size)


def _chunked_upload(http: httpx.Client, repository: str, data: bytes, chunk: int) -> str:
    """POST, PATCH in ``chunk``-sized pieces, PUT ?digest=; returns the digest."""
    response = http.post(f"/v2/{repository}/blobs/uploads/")
    assert response.status_code == 202
    location = response.headers["Location"]
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        response = http.patch(
            location,
            content=piece,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(piece) - 1}",
            },
        )
        assert response.status_code == 202, response.text
        location = response.headers["Location"]
    digest = sha256_digest(data)
    response = http.put(location, params={"digest": digest})
    assert response.status_code == 201, response.text
    return digest


def test_chunked_upload_resumes_after_graceful_restart(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    repository = "durable/resume"
    blob = _data("resume", 3 * MiB + 12345)
    first, rest = blob[: 2 * MiB], blob[2 * MiB :]
    digest = sha256_digest(blob)

    server = start_server(data_dir=data_dir)
    with server.http(timeout=60) as http:
        started = http.post(f"/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202
        upload_id = started.headers["Docker-Upload-UUID"]
        patched = http.patch(
            started.headers["Location"],
            content=first,
            headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{len(first) - 1}"},
        )
        assert patched.status_code == 202, patched.text
        assert patched.headers["Range"] == f"0-{len(first) - 1}"
        location = patched.headers["Location"]

    server.stop()
    assert not server.forced_kill, "dockyard serve did not stop on SIGTERM"
    assert server.proc is not None
    assert server.proc.returncode == 0, f"dockyard serve exited {server.proc.returncode} on SIGTERM"

    restarted = start_server(data_dir=data_dir, port=server.port)
    with restarted.http(timeout=60) as http:
        status = http.get(location)
        assert status.status_code == 204, status.text
        assert status.headers["Range"] == f"0-{len(first) - 1}"
        assert status.headers["Docker-Upload-UUID"] == upload_id

        patched = http.patch(
            location,
            content=rest,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{len(first)}-{len(blob) - 1}",
            },
        )
        assert patched.status_code == 202, patched.text
        assert patched.headers["Range"] == f"0-{len(blob) - 1}"

        done = http.put(patched.headers["Location"], params={"digest": digest})
        assert done.status_code == 201, done.text
        assert done.headers["Docker-Content-Digest"] == digest

        assert fetch_blob(http, repository, digest) == blob
        head = http.head(f"/v2/{repository}/blobs/{digest}")
        assert head.status_code == 200
        assert int(head.headers["content-length"]) == len(blob)
        finished = http.get(location)
        assert finished.status_code == 404
        assert finished.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_sigterm_lets_an_in_flight_upload_finish(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    """A graceful stop drains the request that is streaming a chunk; the chunk is kept."""
    data_dir = tmp_path / "data"
    repository = "durable/drain"
    blob = _data("drain", 8 * MiB)
    digest = sha256_digest(blob)
    server = start_server(data_dir=data_dir)
    with server.http(timeout=60) as http:
        started = http.post(f"/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202
        location = started.headers["Location"]
        upload_file = data_dir / "storage" / "uploads" / started.headers["Docker-Upload-UUID"]

    stopping = threading.Event()
    outcome: dict[str, object] = {}

    def body() -> Iterator[bytes]:
        for offset in range(0, len(blob), CHUNK):
            if offset == len(blob) // 2 and not stopping.wait(timeout=60):
                raise RuntimeError("the test never stopped the server")
            yield blob[offset : offset + CHUNK]

    def send() -> None:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(blob))}
        try:
            with server.http(timeout=60) as client:
                outcome["response"] = client.patch(location, content=body(), headers=headers)
        except Exception as exc:  # recorded and asserted on below
            outcome["error"] = exc

    sender = threading.Thread(target=send, name="draining-PATCH", daemon=True)
    sender.start()
    try:
        wait_for(
            lambda: upload_file.exists() and upload_file.stat().st_size >= MiB,
            timeout=60,
            what=f"the server to start writing the PATCH to {upload_file}",
        )
        server.terminate()
        wait_for(
            lambda: "Shutting down" in server.stdout_path.read_text(errors="replace"),
            timeout=30,
            what="the server to log that it is shutting down",
        )
    finally:
        stopping.set()
    sender.join(timeout=60)
    assert not sender.is_alive()
    response = outcome.get("response")
    assert isinstance(response, httpx.Response), f"the in-flight PATCH failed: {outcome.get('error')!r}"
    assert response.status_code == 202, response.text
    assert response.headers["Range"] == f"0-{len(blob) - 1}"
    server.stop()
    assert not server.forced_kill, "dockyard serve did not exit after draining"

    restarted = start_server(data_dir=data_dir, port=server.port)
    with restarted.http(timeout=60) as http:
        status = http.get(location)
        assert status.status_code == 204
        assert status.headers["Range"] == f"0-{len(blob) - 1}"
        done = http.put(location, params={"digest": digest})
        assert done.status_code == 201, done.text
        assert fetch_blob(http, repository, digest) == blob


TOTAL = 32 * MiB
STALL_AFTER = 16 * MiB  # the client sends no more than this until the server is dead
KILL_AT = 4 * MiB  # bytes the server must have written to the upload file before the kill


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_sigkill_mid_upload_leaves_no_partial_blob(
    start_server: Callable[..., DockyardServer], tmp_path: Path, method: str
) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir=data_dir)

    # What was pushed before the crash: an image (monolithic uploads) and a chunked-upload blob.
    image = make_image("durable-before", layers=2, layer_size=300 * 1024)
    chunked = _data("chunked-before", 3 * MiB + 7)
    big = _data(f"interrupted-{method}", TOTAL)
    big_digest = sha256_digest(big)
    with server.http(timeout=60) as http:
        image_digest = push_image(http, "durable/before", "v1", image)
        chunked_digest = _chunked_upload(http, "durable/before", chunked, chunk=MiB)
        started = http.post("/v2/durable/killed/blobs/uploads/")
        assert started.status_code == 202
        location = started.headers["Location"]
        upload_file = data_dir / "storage" / "uploads" / started.headers["Docker-Upload-UUID"]

    server_dead = threading.Event()
    outcome: dict[str, object] = {}

    def body() -> Iterator[bytes]:
        for offset in range(0, TOTAL, CHUNK):
            if offset >= STALL_AFTER and not server_dead.wait(timeout=60):
                raise RuntimeError("the test never killed the server")
            yield big[offset : offset + CHUNK]

    def send() -> None:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(TOTAL)}
        params = {"digest": big_digest} if method == "PUT" else None
        try:
            with server.http(timeout=60) as client:
                outcome["response"] = client.request(
                    method, location, params=params, content=body(), headers=headers
                )
        except Exception as exc:  # recorded and asserted on below
            outcome["error"] = exc

    sender = threading.Thread(target=send, name=f"interrupted-{method}", daemon=True)
    sender.start()
    try:
        wait_for(
            lambda: upload_file.exists() and upload_file.stat().st_size >= KILL_AT,
            timeout=60,
            what=f"the server to write {KILL_AT} bytes of the {method} to {upload_file}",
        )
    finally:
        server.kill()
        server_dead.set()
    sender.join(timeout=60)
    assert not sender.is_alive(), "the interrupted request did not end after the server was killed"
    assert "response" not in outcome, f"the interrupted {method} was answered: {outcome.get('response')}"
    assert isinstance(outcome.get("error"), httpx.TransportError), repr(outcome.get("error"))

    restarted = start_server(data_dir=data_dir, port=server.port)
    with restarted.http(timeout=60) as http:
        # The interrupted blob is nowhere: not served, not in the store.
        assert http.head(f"/v2/durable/killed/blobs/{big_digest}").status_code == 404
        missing = http.get(f"/v2/durable/killed/blobs/{big_digest}")
        assert missing.status_code == 404
        assert missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        hex_digest = big_digest.split(":", 1)[1]
        assert not (data_dir / "storage" / "blobs" / "sha256" / hex_digest[:2] / hex_digest).exists()
        # None of the interrupted chunk was recorded in the session.
        status = http.get(location)
        assert status.status_code in (204, 404), status.text
        if status.status_code == 204:
            assert status.headers["Range"] == "0-0"

        # Everything pushed before the crash is intact.
        assert fetch_manifest(http, "durable/before", "v1") == image.manifest
        assert fetch_manifest(http, "durable/before", image_digest) == image.manifest
        for blob in image.blobs:
            assert fetch_blob(http, "durable/before", blob.digest) == blob.data
        assert fetch_blob(http, "durable/before", chunked_digest) == chunked
        tags = http.get("/v2/durable/before/tags/list")
        assert tags.json() == {"name": "durable/before", "tags": ["v1"]}

        # And the registry takes the same blob afterwards.
        push_blob(http, "durable/killed", big)
        assert fetch_blob(http, "durable/killed", big_digest) == big


def test_a_push_that_does_not_fit_is_a_clear_507_for_skopeo(
    start_server: Callable[..., DockyardServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk skopeo reports 507 Insufficient Storage; the log has one line, no traceback."""
    tools = ContainerTools(tmp_path / "tools")
    with small_filesystem(tmp_path / "small", 4 * MiB, monkeypatch) as disk:
        server = start_server(
            data_dir=tmp_path / "data", env={"DOCKYARD_STORAGE_PATH": str(disk.path / "storage")}
        )
        tools.authorize(server.host)
        small = make_image("fits")
        with server.http(timeout=30) as http:
            push_image(http, "full/app", "small", small)
        layout = tmp_path / "layout"
        write_oci_layout(layout, {"big": make_image("too-big", layer_size=6 * MiB)})
        copied = tools.skopeo(
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout}:big",
            f"docker://{server.host}/full/app:big",
            check=False,
        )
        assert copied.returncode != 0
        assert "507 Insufficient Storage" in copied.stderr
        log = server.stderr()
        assert "refused a push to full/app: no space left on the blob store" in log
        assert "Traceback" not in log
        assert sum(f.stat().st_size for f in (disk.path / "storage" / "uploads").iterdir()) == 0
        with server.http(timeout=30) as http:
            assert fetch_manifest(http, "full/app", "small") == small.manifest
            for blob in small.blobs:
                assert fetch_blob(http, "full/app", blob.digest) == blob.data
        server.stop()
    tools.close()
