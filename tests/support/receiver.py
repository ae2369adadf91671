"""A real HTTP server that receives webhook deliveries, with scripted answers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    time: float

    def json(self) -> Any:
        return json.loads(self.body)


#: An answer: (status, headers, body), or a callable that gets the request and returns one.
Answer = tuple[int, dict[str, str], bytes]


class Receiver:
    """Records every POST; answers from a script (default 200) — fail N times, hang, redirect, …"""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[Answer | Callable[[], Answer]] = []
        self.lock = threading.Condition()
        self.release = threading.Event()
        self.hung_up = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.received.append(
                        Received(self.path, dict(self.headers.items()), body, time.time())
                    )
                    answer = receiver.script.pop(0) if receiver.script else (200, {}, b"ok")
                    receiver.lock.notify_all()
                if callable(answer):
                    answer = answer()
                status, headers, payload = answer
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    receiver.hung_up += 1  # the sender gave up first (a timeout under test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def hang(self) -> Answer:
        """An answer that only comes when the test ends (``release``)."""
        self.release.wait(30)
        return (200, {}, b"late")

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until ``count`` deliveries arrived (a condition, not a sleep); fail after ``timeout``."""
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"expected {count} deliveries, got {len(self.received)}")
            return list(self.received)
