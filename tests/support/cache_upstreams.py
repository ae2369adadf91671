"""For the pull-through cache tests: a proxy in front of an upstream that can throttle.

``UpstreamProxy`` forwards to an upstream (``tests.support.distribution.Distribution``) and can be
switched to answer every request with 429 or 503, as an overloaded upstream does.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from tests.support.distribution import push_to
from tests.support.distribution import put_raw as put_upstream_manifest
from tests.support.images import Image

__all__ = ["UpstreamProxy", "push_upstream", "put_upstream_manifest"]


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
    """Push ``image`` to an upstream, by ``reference`` (default: its digest); its manifest digest."""
    push_to(http, repository, reference or image.digest, image)
    return image.digest
