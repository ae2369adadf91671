"""Sending a local blob file: cached chunks read on the loop, the rest in a thread or by the server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.routes import local_file
from dockyard.registry.routes.local_file import (
    SEND_CHUNK,
    SLOW_CHUNK,
    FastStreams,
    LocalFileResponse,
    is_cached,
    read_cached,
    read_rest,
)
from tests.support.asgi_receive import after_the_request

PATHSEND = {"http.response.pathsend": {}}


async def _never() -> dict[str, Any]:
    """A receive that never reports anything, as granian while a body streams."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


def _as_sent(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` as the server keeps it: a body is copied when it is sent (the sender reuses its
    buffer for the next chunk)."""
    return {**message, "body": bytes(message["body"])} if "body" in message else message


def _call(response: LocalFileResponse, extensions: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The messages ``response`` sends for one GET."""
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": "GET", "extensions": extensions or {}}

    async def send(message: dict[str, Any]) -> None:
        sent.append(_as_sent(message))

    anyio.run(response, scope, _never, send)
    return sent


def _body(messages: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(2 * SEND_CHUNK + 12345)
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, data


def test_a_file_just_written_is_cached_and_read_on_the_loop(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    fd = os.open(path, os.O_RDONLY)
    try:
        assert is_cached(fd, len(data) - 1)
        assert read_cached(fd, 10, 100) == (bytearray(data[10:110]), 100)
    finally:
        os.close(fd)


def test_without_the_no_wait_flag_nothing_counts_as_cached(
    blob: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = blob
    monkeypatch.setattr(local_file, "NO_WAIT", None)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not is_cached(fd, 0)
        assert read_cached(fd, 0, 10) == (bytearray(10), 0)
        buffer = bytearray(b"abc") + bytearray(7)
        assert read_rest(fd, buffer, 3, 0) == 10
        assert buffer == b"abc" + data[3:10]
    finally:
        os.close(fd)


def test_a_whole_cached_file_is_sent_in_chunks_with_its_length(
    blob: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = blob

    async def no_thread(*_: Any) -> Any:
        raise AssertionError("a cached chunk went to a thread")

    monkeypatch.setattr(local_file, "run_sync", no_thread)
    response = LocalFileResponse(str(path), 0, len(data), headers={"ETag": '"x"'}, whole=True)
    messages = _call(response, PATHSEND)
    start = messages[0]
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    assert (b"content-length", str(len(data)).encode()) in start["headers"]
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert len(bodies) == 3
    assert all(len(m["body"]) <= SEND_CHUNK for m in bodies)
    assert [m["more_body"] for m in bodies] == [True, True, False]
    assert _body(messages) == data


def test_whole_chunks_are_read_into_one_buffer_the_short_last_one_apart(blob: tuple[Path, bytes]) -> None:
    """The server copies a body when it is sent: a response refills one buffer for its whole chunks
    rather than zeroing a new 1 MiB one for each."""
    path, data = blob
    bodies: list[Any] = []
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])  # kept alive: identities cannot be reused
        sent.append(_as_sent(message))

    anyio.run(LocalFileResponse(str(path), 0, len(data), headers={}), {"type": "http"}, _never, send)
    assert _body(sent) == data
    assert len(bodies) == 3
    assert bodies[0] is bodies[1]
    assert bodies[2] is not bodies[0]
    assert len(bodies[2]) == 12345


def test_a_range_is_sent_from_its_offset(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    start, length = SEND_CHUNK - 7, SEND_CHUNK + 20
    response = LocalFileResponse(str(path), start, length, status_code=206, headers={})
    messages = _call(response, PATHSEND)
    assert messages[0]["status"] == 206
    assert _body(messages) == data[start : start + length]
    assert all(m["type"] != "http.response.pathsend" for m in messages)


def test_a_small_file_is_one_message(tmp_path: Path) -> None:
    path = tmp_path / "small"
    path.write_bytes(b"config")
    messages = _call(LocalFileResponse(str(path), 0, 6, headers={}, whole=True), PATHSEND)
    assert [m["type"] for m in messages] == ["http.response.start", "http.response.body"]
    assert messages[1]["body"] == b"config"
    assert not messages[1].get("more_body", False)


def test_an_empty_blob_sends_an_empty_body(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    messages = _call(LocalFileResponse(str(path), 0, 0, headers={}, whole=True))
    assert _body(messages) == b""
    assert (b"content-length", b"0") in messages[0]["headers"]


def test_chunks_not_cached_are_read_in_a_thread(
    blob: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = blob
    monkeypatch.setattr(local_file, "NO_WAIT", None)  # nothing counts as cached
    threaded: list[int] = []

    async def in_thread(function: Any, *args: Any) -> Any:
        threaded.append(args[3])
        return function(*args)

    monkeypatch.setattr(local_file, "run_sync", in_thread)
    messages = _call(LocalFileResponse(str(path), 0, len(data), headers={}))
    assert _body(messages) == data
    assert threaded == [0, SEND_CHUNK, 2 * SEND_CHUNK]


def test_a_whole_file_not_cached_is_left_to_the_server(
    blob: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = blob
    monkeypatch.setattr(local_file, "NO_WAIT", None)
    messages = _call(LocalFileResponse(str(path), 0, len(data), headers={}, whole=True), PATHSEND)
    assert messages[1] == {"type": "http.response.pathsend", "path": str(path)}
    assert len(messages) == 2
    # a server without the extension gets the chunks, read in threads
    assert _body(_call(LocalFileResponse(str(path), 0, len(data), headers={}, whole=True))) == data


def test_a_file_removed_before_sending_is_blob_unknown(tmp_path: Path) -> None:
    response = LocalFileResponse(str(tmp_path / "gone"), 0, 10, headers={}, whole=True)
    with pytest.raises(RegistryError) as raised:
        _call(response)
    assert raised.value.code is ErrorCode.BLOB_UNKNOWN


def test_a_file_shorter_than_recorded_fails_the_response(tmp_path: Path) -> None:
    path = tmp_path / "cut"
    path.write_bytes(b"x" * 100)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(OSError, match="holds 100 bytes, 150 expected"):
        anyio.run(LocalFileResponse(str(path), 0, 150, headers={}), {"type": "http"}, _never, send)
    assert sent == []  # an error answer, not a 200 that breaks off


def test_a_chunk_partly_cached_is_finished_in_a_thread(
    blob: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = blob
    real = local_file.read_cached

    def half_cached(
        fd: int, offset: int, size: int, buffer: bytearray | None = None
    ) -> tuple[bytearray, int]:
        buffer, filled = real(fd, offset, size, buffer)
        assert filled == size
        return buffer, size // 2

    finished: list[tuple[int, int]] = []

    async def in_thread(function: Any, fd: int, buffer: bytearray, filled: int, offset: int) -> Any:
        finished.append((filled, offset))
        buffer[filled:] = bytes(len(buffer) - filled)  # what the loop read stays, the rest is read
        return function(fd, buffer, filled, offset)

    monkeypatch.setattr(local_file, "read_cached", half_cached)
    monkeypatch.setattr(local_file, "run_sync", in_thread)
    assert _body(_call(LocalFileResponse(str(path), 0, len(data), headers={}))) == data
    assert finished == [(SEND_CHUNK // 2, 0), (SEND_CHUNK // 2, SEND_CHUNK), (12345 // 2, 2 * SEND_CHUNK)]


def test_a_disconnect_reported_while_streaming_stops_the_reading(
    blob: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = blob
    sent: list[dict[str, Any]] = []
    first_body = anyio.Event()

    async def receive() -> dict[str, Any]:
        await first_body.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            first_body.set()
            await anyio.sleep_forever()  # a client that stopped reading

    response = LocalFileResponse(str(path), 0, len(data), headers={})
    anyio.run(response, {"type": "http", "method": "GET"}, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


def test_a_client_gone_is_noticed_even_when_sends_return_at_once(blob: tuple[Path, bytes]) -> None:
    """Granian's send to a client that left returns at once: the watcher must still get to run."""
    path, data = blob
    sent: list[dict[str, Any]] = []
    first_body = anyio.Event()

    async def gone_after_the_first_body() -> dict[str, Any]:
        await first_body.wait()
        return {"type": "http.disconnect"}

    receive = after_the_request(gone_after_the_first_body)

    async def send(message: dict[str, Any]) -> None:  # never suspends, as a dropped send
        sent.append(message)
        if message["type"] == "http.response.body":
            first_body.set()

    anyio.run(LocalFileResponse(str(path), 0, len(data), headers={}), {"type": "http"}, receive, send)
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert len(bodies) < 3  # of three chunks: the last is never read
    assert all(m["more_body"] for m in bodies)


def test_the_file_is_closed_after_sending(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    before = len(os.listdir("/proc/self/fd"))
    _call(LocalFileResponse(str(path), 0, len(data), headers={}))
    with pytest.raises(OSError, match="expected"):
        _call(LocalFileResponse(str(path), 0, len(data) + 1, headers={}))
    assert len(os.listdir("/proc/self/fd")) == before


def test_without_a_free_fast_slot_a_whole_file_is_left_to_the_server(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    busy = FastStreams(limit=1)
    assert busy.take()
    response = LocalFileResponse(str(path), 0, len(data), headers={}, whole=True, streams=busy)
    messages = _call(response, PATHSEND)
    assert messages[1] == {"type": "http.response.pathsend", "path": str(path)}
    assert busy.active == 1  # the slot it did not get is not given back either


def test_without_a_free_fast_slot_a_range_is_sent_in_small_chunks(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    full = FastStreams(limit=0)
    response = LocalFileResponse(str(path), 5, 3 * SLOW_CHUNK, status_code=206, headers={}, streams=full)
    messages = _call(response, PATHSEND)
    bodies = [m["body"] for m in messages if m["type"] == "http.response.body"]
    assert [len(b) for b in bodies] == [SLOW_CHUNK] * 3
    assert b"".join(bodies) == data[5 : 5 + 3 * SLOW_CHUNK]
    # a file no larger than a small chunk needs no slot: one message
    small = LocalFileResponse(str(path), 0, SLOW_CHUNK, headers={}, whole=True, streams=full)
    assert [m["type"] for m in _call(small, PATHSEND)] == ["http.response.start", "http.response.body"]


def test_fast_slots_are_given_back_after_sending_and_after_failing(
    blob: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, data = blob
    streams = FastStreams(limit=1)
    _call(LocalFileResponse(str(path), 0, len(data), headers={}, streams=streams))
    assert streams.active == 0
    cut = tmp_path / "cut"
    cut.write_bytes(data)

    async def cut_after_the_first_chunk(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            os.truncate(cut, SEND_CHUNK + 10)

    response = LocalFileResponse(str(cut), 0, len(data), headers={}, streams=streams)
    with pytest.raises(OSError, match="ended 1048566 bytes early at offset 1048586"):
        anyio.run(response, {"type": "http"}, _never, cut_after_the_first_chunk)
    assert streams.active == 0
    assert streams.take()
    assert not streams.take()


def test_fast_slots_count_every_stream_up_to_the_limit() -> None:
    streams = FastStreams(limit=3)
    assert [streams.take() for _ in range(4)] == [True, True, True, False]
    streams.give()
    assert streams.take()
    assert not streams.take()
