"""The ASGI plumbing: draining unread request bodies and the access log's escaping."""

from __future__ import annotations

import io
import time
from typing import Any

import anyio
import pytest
from starlette.types import Message, Receive, Scope, Send

from dockyard import asgi
from dockyard.asgi import AccessLogMiddleware, DrainBodyMiddleware, log_safe

CHUNK = b"x" * 65536


def _scope(method: str = "PATCH", path: str = "/v2/a/blobs/uploads/1", **headers: str) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
    }


class Body:
    """An ASGI receive() handing out ``chunks`` pieces of a body, counting what was read."""

    def __init__(self, chunks: int, *, hang: bool = False) -> None:
        self.left = chunks
        self.read = 0
        self.hang = hang

    async def __call__(self) -> Message:
        if self.hang and self.left == 0:
            await anyio.sleep_forever()
        if self.left <= 0:
            raise AssertionError("receive() called after the whole body was read")
        self.left -= 1
        self.read += 1
        return {"type": "http.request", "body": CHUNK, "more_body": self.left > 0 or self.hang}


async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
    """What the policy guard does: answer 401 without reading the body."""
    await send({"type": "http.response.start", "status": 401, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def read_one_then_fail(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    raise RuntimeError("storage broke")


async def read_all(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body"):
        pass
    await refuse(scope, receive, send)


def _run(app: Any, scope: Scope, body: Body) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    anyio.run(DrainBodyMiddleware(app), scope, body, send)
    return sent


def test_an_unread_body_is_drained_after_the_answer() -> None:
    body = Body(80)
    sent = _run(refuse, _scope(content_length=str(80 * len(CHUNK))), body)
    assert sent[0]["status"] == 401
    assert (body.read, body.left) == (80, 0)


def test_a_chunked_body_without_length_is_drained() -> None:
    body = Body(5)
    _run(refuse, _scope(transfer_encoding="chunked"), body)
    assert body.left == 0


def test_a_body_read_in_part_is_drained_before_the_error_propagates() -> None:
    body = Body(10)
    with pytest.raises(RuntimeError):
        _run(read_one_then_fail, _scope(content_length=str(10 * len(CHUNK))), body)
    assert body.left == 0


def test_a_body_the_app_read_is_not_read_again() -> None:
    body = Body(3)
    _run(read_all, _scope(content_length=str(3 * len(CHUNK))), body)
    assert body.read == 3


def test_requests_without_a_body_are_not_touched() -> None:
    body = Body(0)  # any receive() fails the test
    assert _run(refuse, _scope("GET"), body)[0]["status"] == 401
    _run(refuse, _scope("PUT", content_length="0"), body)


def test_a_body_larger_than_the_limit_is_not_drained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asgi, "DRAIN_LIMIT", 4 * len(CHUNK))
    body = Body(10)
    _run(refuse, _scope(content_length=str(10 * len(CHUNK))), body)
    assert body.read == 0
    unknown_length = Body(10)
    _run(refuse, _scope(transfer_encoding="chunked"), unknown_length)
    assert unknown_length.read == 5  # the limit, then one chunk past it, then it gives up


def test_a_client_waiting_for_100_continue_is_not_drained() -> None:
    body = Body(10)
    _run(refuse, _scope(content_length=str(10 * len(CHUNK)), expect="100-continue"), body)
    assert body.read == 0


def test_draining_gives_up_after_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asgi, "DRAIN_SECONDS", 0.2)
    body = Body(2, hang=True)  # a client that stops sending mid-body
    started = time.monotonic()
    _run(refuse, _scope(transfer_encoding="chunked"), body)
    assert body.read == 2
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/v2/a/manifests/v1", "/v2/a/manifests/v1"),
        (
            '/v2/x\n2026-01-01 00:00:00 access 10.0.0.1 "GET /v2/" 200',
            "/v2/x\\x0a2026-01-01 00:00:00 access 10.0.0.1 \\x22GET /v2/\\x22 200",
        ),
        ("/a\r\x1b[2J\x00\x7f\\", "/a\\x0d\\x1b[2J\\x00\\x7f\\x5c"),
        ("/caf\u00e9\u2028", "/caf\\xc3\\xa9\\xe2\\x80\\xa8"),
        ("/\ud800", "/\\xed\\xa0\\x80"),
    ],
)
def test_the_access_log_escapes_what_the_client_chose(path: str, logged: str) -> None:
    assert log_safe(path) == logged
    stream = io.StringIO()
    _run_logged(AccessLogMiddleware(refuse, stream), _scope("GET", path))
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert line.endswith("\n")
    assert f'"GET {logged}" 401 2 ' in line


def _run_logged(app: AccessLogMiddleware, scope: Scope) -> None:
    async def send(message: Message) -> None:
        pass

    anyio.run(app, scope, Body(0), send)
