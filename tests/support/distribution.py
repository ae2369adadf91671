"""CNCF Distribution (Debian's ``docker-registry``) as a plain-HTTP upstream for tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.postgres import free_port

BINARY = "/usr/bin/docker-registry"


class Distribution:
    """``docker-registry serve`` on 127.0.0.1, plain HTTP, no auth; stop() and start() again keep its
    port and storage (an upstream that goes down and comes back)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        if shutil.which(BINARY) is None:  # scripts/test installs it: never a silent skip
            raise RuntimeError("docker-registry is not installed: apt-get install -y docker-registry")
        self.root = root
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 20.0) -> Distribution:
        """Start the server and poll GET /v2/ until it answers (fails with its log otherwise)."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        log = (self.root / "registry.log").open("ab")
        # Distribution reads REGISTRY_* variables as configuration (REGISTRY_AUTH_FILE would be `auth`)
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE" and not k.startswith("REGISTRY_")}
        self.proc = subprocess.Popen(
            [BINARY, "serve", str(config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log()}")
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"docker-registry did not answer within {timeout:.0f}s: {self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        path = self.root / "registry.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@contextmanager
def distribution(root: Path) -> Iterator[Distribution]:
    """A started Distribution registry under ``root``; fails (never skips) when the binary is missing."""
    server = Distribution(root).start()
    try:
        yield server
    finally:
        server.stop()


def push_to(http: httpx.Client, repository: str, reference: str, image: object) -> str:
    """Push an Image (tests.support.images) with POST + PUT uploads, which Distribution supports."""
    for blob in image.blobs:  # type: ignore[attr-defined]
        started = http.post(f"/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        done = http.put(httpx.URL(location).copy_merge_params({"digest": blob.digest}), content=blob.data)
        assert done.status_code == 201, done.text
    return put_raw(http, repository, reference, image.manifest, image.media_type)  # type: ignore[attr-defined]


def put_raw(http: httpx.Client, repository: str, reference: str, payload: bytes, media_type: str) -> str:
    """PUT a manifest; returns the digest the registry answered."""
    response = http.put(
        f"/v2/{repository}/manifests/{reference}", content=payload, headers={"Content-Type": media_type}
    )
    assert response.status_code == 201, response.text
    return response.headers["Docker-Content-Digest"]
