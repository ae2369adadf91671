"""A real Azurite (Azure Blob Storage emulator) for the test session.

``scripts/test`` installs it from npm into ``.tools/`` (git-ignored); a missing Azurite
fails the tests that need it, it never skips them. Point ``DOCKYARD_TEST_AZURITE`` at
another ``azurite-blob`` executable to use that one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from azure.storage.blob import BlobServiceClient

from tests.support.postgres import free_port

ROOT = Path(__file__).resolve().parents[2]
#: Azurite's well-known development account and key (public; Azurite accepts only these).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "dockyard-test"
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Azurite:
    """A running Azurite: its blob endpoint, a connection string, and the test container."""

    endpoint: str
    container: str
    pid: int

    def connection_string(self, key: str = KEY) -> str:
        return f"AccountName={ACCOUNT};AccountKey={key};BlobEndpoint={self.endpoint};"


def azurite_executable() -> Path:
    """The ``azurite-blob`` to run, or a RuntimeError saying how to install it."""
    given = os.environ.get("DOCKYARD_TEST_AZURITE")
    path = Path(given) if given else ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    if not path.is_file():
        raise RuntimeError(
            f"Azurite is not installed at {path}: run scripts/test, or "
            "`npm install --prefix .tools azurite` (or set DOCKYARD_TEST_AZURITE)"
        )
    return path


def _answers(endpoint: str) -> bool:
    try:
        httpx.get(f"{endpoint}?comp=list", timeout=2)
    except httpx.TransportError:
        return False
    return True  # any HTTP answer (even 403 without credentials) means it is up


@contextmanager
def azurite_server() -> Iterator[Azurite]:
    """Start Azurite (in memory) on a free loopback port with a container; stop it after."""
    executable = azurite_executable()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="dockyard-azurite-"))
    log = (workdir / "azurite.log").open("wb")
    process = subprocess.Popen(
        [
            str(executable),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--inMemoryPersistence",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(endpoint):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Azurite did not answer within {START_TIMEOUT:.0f} s: {_tail(workdir)}")
            try:  # wait a moment for the port, and notice if the server died instead
                process.wait(0.1)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"Azurite exited with {process.returncode}: {_tail(workdir)}")
        server = Azurite(endpoint, CONTAINER, process.pid)
        BlobServiceClient.from_connection_string(server.connection_string()).create_container(CONTAINER)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _tail(workdir: Path) -> str:
    return (workdir / "azurite.log").read_text(errors="replace")[-2000:]
