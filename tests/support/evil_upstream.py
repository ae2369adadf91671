"""A scripted registry for attacks on the upstream client: every answer is a Python function.

``EvilUpstream(host)`` serves on ``host`` (any 127.x address), answers ``/v2/`` with 200 and every
other request with the first matching entry of ``routes`` (``(method, path) → handler(request)``;
a GET handler also serves HEAD), else 404. A handler writes whatever it likes to ``request.wfile``
(lying headers, endless or dripping bodies). ``requests`` records (method, path, headers).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Handler = Callable[[BaseHTTPRequestHandler], None]


def answer(
    request: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    """A plain answer with a true Content-Length (no body on HEAD)."""
    request.send_response(status)
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(body)


def manifest(payload: bytes, media_type: str, digest: str | None = None) -> Handler:
    """Serve a manifest (with Docker-Content-Digest when given)."""
    headers = {"Content-Type": media_type, **({"Docker-Content-Digest": digest} if digest else {})}
    return lambda request: answer(request, 200, payload, headers)


def blob(data: bytes) -> Handler:
    return lambda request: answer(request, 200, data, {"Content-Type": "application/octet-stream"})


class EvilUpstream:
    """A ThreadingHTTPServer on ``host`` answering from ``routes``; stop it with ``close()``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.stopping = threading.Event()
        upstream = self

        class Request(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                return

            def _handle(self) -> None:
                path = self.path.split("?", 1)[0]
                upstream.requests.append((self.command, self.path, dict(self.headers.items())))
                if path == "/v2/":
                    answer(self, 200, b"{}", {"Content-Type": "application/json"})
                    return
                found = upstream.routes.get((self.command, path))
                if found is None and self.command == "HEAD":
                    found = upstream.routes.get(("GET", path))
                if found is None:
                    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no"}]}).encode()
                    answer(self, 404, body, {"Content-Type": "application/json"})
                    return
                try:
                    found(self)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = _handle

        self.server = ThreadingHTTPServer((host, 0), Request)
        self.server.daemon_threads = True
        self.host = f"{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def paths(self, method: str | None = None) -> list[str]:
        return [path for m, path, _ in self.requests if method is None or m == method]

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
