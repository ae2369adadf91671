"""Upstream registries for the pull-through cache tests: CNCF Distribution (restartable, with a clean
environment), and a proxy that can throttle.

``Distribution`` runs Debian's ``docker-registry`` (plain HTTP, no auth) on a port of its own; it can
be stopped and started again on the same port and storage. ``UpstreamProxy`` forwards to it and can
be switched to answer every request with 429 or 503, as an overloaded upstream does.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support.images import Image

DOCKER_REGISTRY = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        connection.request("GET", "/v2/")
        return connection.getresponse().status == 200
    except OSError:
        return False


class Distribution:
    """``docker-registry serve`` on 127.0.0.1 (a missing binary fails the test: scripts/test installs it)."""

    def __init__(self, folder: Path) -> None:
        if shutil.which(DOCKER_REGISTRY) is None:
            pytest.fail("docker-registry is not installed (apt-get install docker-registry)")
        self.folder = folder
        self.port = free_port()
        self.config = folder / "config.yml"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> Distribution:
        log = (self.folder / "registry.log").open("ab")
        # Distribution reads REGISTRY_* variables as configuration (REGISTRY_AUTH_FILE would be `auth`)
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE" and not k.startswith("REGISTRY_")}
        self.process = subprocess.Popen(
            [DOCKER_REGISTRY, "serve", str(self.config)], stdout=log, stderr=log, env=env
        )
        deadline = time.monotonic() + 20
        while not _answers(self.port):
            if self.process.poll() is not None:
                pytest.fail(f"docker-registry exited: {(self.folder / 'registry.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("docker-registry did not answer within 20 s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class UpstreamProxy:
    """Forwards every request to ``target`` unless ``mode`` is 429 or 503, which it answers itself."""

    def __init__(self, target_port: int) -> None:
        self.mode = "pass"
        self.requests: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                return

            def _handle(self) -> None:
                proxy.requests.append((self.command, self.path))
                if proxy.mode != "pass":
                    status = int(proxy.mode)
                    body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
                    self.send_response(status)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data) if self.command != "HEAD" else
                                 answer.getheader("content-length") or 0))  # fmt: skip
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> UpstreamProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def push_upstream(http: httpx.Client, repository: str, image: Image, reference: str | None = None) -> str:
    """Push ``image`` to an upstream (POST, then one PUT per blob); its manifest digest."""
    for blob in image.blobs:
        started = http.post(f"/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        separator = "&" if "?" in location else "?"
        stored = http.put(f"{location}{separator}digest={blob.digest}", content=blob.data)
        assert stored.status_code == 201, stored.text
    put_upstream_manifest(http, repository, reference or image.digest, image.manifest, image.media_type)
    return image.digest


def put_upstream_manifest(
    http: httpx.Client, repository: str, reference: str, payload: bytes, media_type: str
) -> None:
    stored = http.put(
        f"/v2/{repository}/manifests/{reference}", content=payload, headers={"Content-Type": media_type}
    )
    assert stored.status_code == 201, stored.text
