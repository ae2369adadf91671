"""HTTP plumbing every room's routes share: thread hand-off, body streaming, errors, access log."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TextIO, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dockyard.db import Database, WouldBlock, WriterBusy
from dockyard.observability.logs import access_json
from dockyard.oci.errors import ErrorCode, RegistryError

T = TypeVar("T")
log = logging.getLogger(__name__)

BODY_BATCH = 1024 * 1024
BODY_PREFETCH = 4

#: What is left of a request body the app answered without reading is read and discarded
#: up to this many bytes and for at most this long; past either the connection is closed.
DRAIN_LIMIT = 64 * 1024 * 1024
DRAIN_SECONDS = 10.0
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})

#: What the access log writes as \xNN: anything but printable ASCII, and the quote and backslash.
_UNSAFE_IN_LOG = re.compile(r'[^\x20-\x7e]|["\\]')

_END = object()


async def run_sync(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking service call in a worker thread."""
    return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


#: How often the event loop attempts a call again after another thread's write before it hands
#: the call to a worker thread.
INLINE_ATTEMPTS = 3


async def run_soon(db: Database, function: Callable[..., T], *args: Any) -> T:
    """Call ``function`` on the event loop if its database work can be done at once there (a
    SQLite write while no one else writes: cheaper than a thread hop), else in a worker thread.

    While another thread of this process writes, the loop awaits the end of that write and
    attempts again. A durable write committed on the loop is answered once a WAL flush covers it
    (shared with every other waiter). ``function`` must be safe to call again after a
    ``WouldBlock``: nothing it did before is kept (its transaction was never begun or is rolled
    back).
    """
    if db.writes_inline:
        for _ in range(INLINE_ATTEMPTS):
            try:
                with db.attempt_inline() as attempt:
                    result = function(*args)
            except WriterBusy:
                await db.writer_released()
                continue
            except WouldBlock:
                break
            await db.durable(attempt.ticket)
            for callback in attempt.after:
                callback()
            return result
    return await run_sync(function, *args)


async def run_local(inline: bool, function: Callable[..., T], *args: Any) -> T:
    """Call ``function`` on the event loop when ``inline`` (a cheap local lookup: cheaper than a
    thread hop), else in a worker thread (it may wait on the network)."""
    return function(*args) if inline else await run_sync(function, *args)


async def run_with_body(request: Request, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``function(*args, body=<iterator of bytes>, **kwargs)`` in a thread, streaming the request.

    The request body is read on the event loop in 1 MiB batches, up to four batches
    ahead of the thread, so receiving, hashing and writing overlap. A client that
    disconnects makes the iterator raise ClientDisconnect in the thread.
    """
    send_stream, receive_stream = anyio.create_memory_object_stream[object](BODY_PREFETCH)

    async def pump() -> None:
        async with send_stream:
            try:
                batch: list[bytes] = []
                held = 0
                async for chunk in request.stream():
                    if not chunk:
                        continue
                    batch.append(chunk)
                    held += len(chunk)
                    if held >= BODY_BATCH:
                        await send_stream.send(b"".join(batch))
                        batch, held = [], 0
                if batch:
                    await send_stream.send(b"".join(batch))
                await send_stream.send(_END)
            except Exception as exc:  # forwarded to the consuming thread, which re-raises it
                await send_stream.send(exc)

    def body() -> Iterator[bytes]:
        while True:
            item = anyio.from_thread.run(receive_stream.receive)
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    failure: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(pump)
        try:
            result = await run_sync(function, *args, body=body(), **kwargs)
        except Exception as exc:  # re-raised below, outside the task group, unwrapped
            failure = exc
        finally:
            group.cancel_scope.cancel()
            receive_stream.close()
    if failure is not None:
        raise failure
    return result


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes (413)."""
    declared = content_length(request)
    too_large = RegistryError(
        ErrorCode.SIZE_INVALID, f"request body is larger than {limit} bytes", status=413
    )
    if declared is not None and declared > limit:
        raise too_large
    parts: list[bytes] = []
    held = 0
    async for chunk in request.stream():
        held += len(chunk)
        if held > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


def content_length(request: Request) -> int | None:
    """The Content-Length header as an int; a malformed value is a 400."""
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise RegistryError(ErrorCode.SIZE_INVALID, "Content-Length must be a non-negative integer")
    if len(value) > 18:  # beyond any body anyone stores (and int() refuses 4,300 digits)
        raise RegistryError(ErrorCode.SIZE_INVALID, "Content-Length is too large", status=413)
    return int(value)


def error_response(
    exc: RegistryError, *, head: bool = False, headers: dict[str, str] | None = None
) -> Response:
    """The spec's JSON error body (no body for HEAD) with the error's status and headers."""
    body = exc.body()
    all_headers = {"Docker-Distribution-API-Version": "registry/2.0", **exc.headers, **(headers or {})}
    if head:
        all_headers["content-length"] = str(len(body))
        body = b""
    return Response(body, status_code=exc.status, headers=all_headers, media_type="application/json")


async def registry_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for RegistryError."""
    assert isinstance(exc, RegistryError)
    return error_response(exc, head=request.method == "HEAD")


async def server_error_handler(request: Request, exc: Exception) -> Response:
    """A bug or an unavailable dependency: a JSON 500 (Starlette logs the traceback)."""
    return error_response(
        RegistryError(ErrorCode.UNKNOWN, "internal server error; see the registry's log"),
        head=request.method == "HEAD",
    )


def disk_full(exc: BaseException) -> bool:
    """Whether a database error says its disk is full (SQLite's message, PostgreSQL's SQLSTATE 53100)."""
    cause = getattr(exc, "orig", None) or exc
    return getattr(cause, "sqlstate", None) == "53100" or "database or disk is full" in str(cause)


def _storage_full(request: Request, why: object) -> Response:
    """507 with one log line: the request can be retried once space is freed."""
    name = request.path_params.get("name")
    what = f"a push to {name}" if name else f"{request.method} {log_safe(request.url.path)}"
    log.error("refused %s: %s", what, why)
    error = RegistryError(
        ErrorCode.UNKNOWN, "the registry's storage is full; try again once space is freed", status=507
    )
    return error_response(error, head=request.method == "HEAD")


async def storage_full_handler(request: Request, exc: Exception) -> Response:
    """The blob store is full (``StorageFull``): 507."""
    return _storage_full(request, exc)


async def database_error_handler(request: Request, exc: Exception) -> Response:
    """A database error: 507 when its disk is full, else a 500 with the traceback in the log."""
    if disk_full(exc):
        return _storage_full(request, "the database's disk is full")
    log.error("%s %s failed", request.method, log_safe(request.url.path), exc_info=exc)
    error = RegistryError(ErrorCode.UNKNOWN, "internal server error; see the registry's log")
    return error_response(error, head=request.method == "HEAD")


async def disconnect_handler(request: Request, exc: Exception) -> Response:
    """The client went away mid-request; nobody will read this answer."""
    return Response(status_code=400)


def _escape_bytes(match: re.Match[str]) -> str:
    return "".join(f"\\x{byte:02x}" for byte in match.group().encode("utf-8", "surrogatepass"))


def log_safe(text: str) -> str:
    """``text`` with control characters, non-ASCII, quotes and backslashes escaped as ``\\xNN``.

    A request path is the client's to choose: written raw, a newline in it would forge a log line.
    """
    return _UNSAFE_IN_LOG.sub(_escape_bytes, text)


class RequestObserver(Protocol):
    """Told about every answered request (the metrics): must be cheap and must not raise."""

    def record(self, scope: Scope, status: int, received: int, sent: int, seconds: float) -> None: ...


class AccessLogMiddleware:
    """Times each request; writes one access-log line and tells the ``observer`` (metrics) about it.

    The line holds time, client, method, path, status, bytes sent and milliseconds, as text or
    (``log_format="json"``) as a JSON object. It is written directly instead of through
    ``logging``: per request that machinery cost about a third of a manifest GET. With
    ``log=False`` only the observer is told.
    """

    def __init__(
        self,
        app: ASGIApp,
        stream: TextIO | None = None,
        *,
        log: bool = True,
        log_format: str = "text",
        observer: RequestObserver | None = None,
    ) -> None:
        self.app = app
        self.stream = stream or sys.stderr
        self.log = log
        self.json = log_format == "json"
        self.observer = observer
        self._second = -1
        self._stamp = ""

    def _timestamp(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            if self.json:
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
            else:
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        return self._stamp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        sent = 0
        received = 0
        observer = self.observer

        async def send_and_count(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == "http.response.pathsend":
                sent += os.path.getsize(message["path"])
            await send(message)

        async def receive_and_count() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, receive if observer is None else receive_and_count, send_and_count)
        finally:
            seconds = time.perf_counter() - started
            if observer is not None:
                observer.record(scope, status or 500, received, sent, seconds)
            if self.log:
                self._write(scope, status or 500, sent, seconds * 1000)

    def _write(self, scope: Scope, status: int, sent: int, elapsed: float) -> None:
        client = scope.get("client")
        address = client[0] if client else "-"
        if self.json:
            line = access_json(
                self._timestamp(), address, scope["method"], scope["path"], status, sent, elapsed
            )
        else:
            request_line = f"{log_safe(scope['method'])} {log_safe(scope['path'])}"
            line = f'{self._timestamp()} access {address} "{request_line}" {status} {sent} {elapsed:.1f}ms\n'
        self.stream.write(line)


class DrainBodyMiddleware:
    """Reads and discards the rest of a request body the app answered without reading.

    Many clients send a whole body before they read the answer: the azure-containerregistry
    SDK sends each PATCH without a token first and expects a 401, and a client pushing an
    oversized manifest expects the 413. If the app returns without consuming the body, the
    server stops reading it and closes the connection, and such a client sees the connection
    reset (over TLS "EOF occurred in violation of protocol") instead of the answer. Reading
    the rest (at most DRAIN_LIMIT bytes, for at most DRAIN_SECONDS) keeps the connection
    open until the client has sent everything and reads the answer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared == 0 or (declared is None and scope["method"] in _BODYLESS_METHODS):
            await self.app(scope, receive, send)
            return
        received = 0
        finished = False

        async def tracking_receive() -> Message:
            nonlocal received, finished
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                finished = not message.get("more_body", False)
            else:
                finished = True
            return message

        try:
            await self.app(scope, tracking_receive, send)
        except Exception:
            if not finished:  # the error handler outside answers once the body is read
                await _drain(scope, receive, received, declared)
            raise
        if not finished:
            await _drain(scope, receive, received, declared)


def _declared_length(scope: Scope) -> int | None:
    """The request's Content-Length if it is a plain integer, else None."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() and len(value) <= 18 else None
    return None


async def _drain(scope: Scope, receive: Receive, received: int, declared: int | None) -> None:
    """Read and discard the rest of the body, within DRAIN_LIMIT bytes and DRAIN_SECONDS."""
    if declared is not None and declared - received > DRAIN_LIMIT:
        return
    if received == 0 and (b"expect", b"100-continue") in scope["headers"]:
        return  # the client waits for the answer before it sends the body
    drained = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        while drained <= DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
