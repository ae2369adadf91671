"""The blob sender refills one buffer for each chunk of a response (local_file): the HTTP server must
copy a body before its ``send`` returns. Held here against the granian the registry runs on: a
server that kept a reference to the buffer would send a later chunk's bytes in place of an earlier
one's while a client is slower than the registry. Over plain HTTP and over TLS (rustls writes
through a path of its own)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.registry.routes.local_file import SEND_CHUNK
from dockyard.tls import ensure_self_signed
from tests.e2e.support import wait_for
from tests.support.postgres import free_port

pytestmark = pytest.mark.e2e

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

#: The registry's file sender, alone, under granian; it marks when its last ``send`` has returned.
APP = """
import os

from dockyard.registry.routes.local_file import LocalFileResponse


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = os.environ["BLOB_PATH"]
    await LocalFileResponse(path, 0, os.path.getsize(path), headers={})(scope, receive, send)
    open(os.environ["SENT_PATH"], "w").close()
"""

#: Five whole chunks, each of one byte value, and a short last one: granian holds them all for a
#: client that reads nothing yet (it buffers about eight 1 MiB messages per connection).
BLOB = b"".join(bytes([value]) * SEND_CHUNK for value in range(1, 6)) + b"the last chunk"


class FileServer:
    """granian serving ``BLOB`` with the registry's sender, over TLS when ``tls`` holds its CA."""

    def __init__(self, port: int, sent: Path, tls: ssl.SSLContext | None) -> None:
        self.port, self.sent, self.tls = port, sent, tls

    def connect(self) -> socket.socket:
        client = socket.socket()
        client.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024
        )  # the server cannot push it all here
        client.connect(("127.0.0.1", self.port))
        if self.tls is None:
            return client
        return self.tls.wrap_socket(client, server_hostname="127.0.0.1")


@pytest.fixture(params=["http", "https"])
def file_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileServer]:
    (tmp_path / "sender.py").write_text(APP)
    blob = tmp_path / "blob"
    blob.write_bytes(BLOB)  # just written: cached, so each chunk is read on the loop into the buffer
    sent = tmp_path / "sent"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPOSITORY_ROOT)]),
        "BLOB_PATH": str(blob),
        "SENT_PATH": str(sent),
    }
    command = [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1", "sender:app"]
    tls = None
    if request.param == "https":
        made = ensure_self_signed(tmp_path / "tls", ["127.0.0.1"])
        command += ["--ssl-certificate", str(made.cert), "--ssl-keyfile", str(made.key)]
        tls = ssl.create_default_context(cafile=str(made.ca_cert))
    log = (tmp_path / "granian.log").open("wb")
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _accepts(port), timeout=30, what="granian to listen")
        yield FileServer(port, sent, tls)
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_every_chunk_arrives_as_read_though_its_buffer_was_refilled(file_server: FileServer) -> None:
    with file_server.connect() as client:
        client.sendall(b"GET /blob HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        # Every chunk has been handed to the server, and the buffer refilled after each, before the
        # client reads a byte: most of the body waits in the server's own buffers.
        wait_for(file_server.sent.exists, timeout=30, what="the sender's last send to return")
        answer = bytearray()
        while piece := client.recv(1 << 20):
            answer += piece
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == len(BLOB)
    starts = range(0, len(BLOB), SEND_CHUNK)
    assert [i for i in starts if body[i : i + SEND_CHUNK] != BLOB[i : i + SEND_CHUNK]] == []
