"""Red-team attacks on blob GETs served from the filesystem store (``LocalFileResponse``).

``test_closed_…`` tests reproduce attacks that worked when they were written (each failed until
its hole was closed, and guards the fix); ``test_refused_…`` tests are attacks that were
correctly refused and guard against regressions. Every test's docstring names the attack.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from dockyard.app import Dockyard
from dockyard.registry.routes.local_file import SEND_CHUNK
from dockyard.storage import LocalFile
from tests.support.asgi_receive import after_the_request
from tests.support.auth import ADMIN, access_token, bearer
from tests.support.images import sha256
from tests.support.registry import error_codes, push_blob

pytestmark = pytest.mark.filesystem_only  # LocalFileResponse serves the filesystem store only

REPO = "team/app"
#: Three full chunks and a short fourth: every 1 MiB boundary is inside the blob.
BIG = bytes(range(256)) * (3 * SEND_CHUNK // 256) + b"tail!"
SMALL = bytes(range(256)) * 8  # 2 KiB


def _blob_file(dockyard: Dockyard, digest: str) -> Path:
    source = dockyard.store.source(digest)
    assert isinstance(source, LocalFile)
    return source.path


@pytest.fixture
def big(client: TestClient) -> str:
    return push_blob(client, REPO, BIG)


@pytest.fixture
def lenient(app: Starlette) -> Iterator[TestClient]:
    """The admin client, answering a 500 for an app that raises instead of raising in the test."""
    with TestClient(app, headers=ADMIN, raise_server_exceptions=False) as test_client:
        yield test_client


async def _get(app: Starlette, path: str, on_body: Callable[[int], None]) -> list[dict[str, Any]]:
    """The ASGI messages of one GET, calling ``on_body(bytes so far)`` after each body message."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *((k.lower().encode(), v.encode()) for k, v in ADMIN.items())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "extensions": {},
    }
    sent: list[dict[str, Any]] = []

    async def stays_to_the_end() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    receive = after_the_request(stays_to_the_end)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            on_body(sum(len(m.get("body", b"")) for m in sent if m["type"] == "http.response.body"))

    await app(scope, receive, send)
    return sent


# =================================================================================================
# A. READS ON THE EVENT LOOP
# =================================================================================================


def _evict_all_but_chunk_ends(path: Path, size: int) -> None:
    """Drop the file from the page cache, then read one byte at each chunk's end (and the file's),
    as a client's 1-byte range requests would: each chunk's last page is then cached, its others
    are not. Memory pressure leaves the same pattern (the least recently read pages go first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: the 1-byte reads cache one page
        for end in [*range(SEND_CHUNK - 1, size, SEND_CHUNK), size - 1]:
            assert len(os.pread(fd, 1, end)) == 1
        try:
            os.preadv(fd, [bytearray(1)], SEND_CHUNK // 2, os.RWF_NOWAIT)
        except BlockingIOError:
            return  # the middle of the first chunk is not cached: the stage is set
        pytest.fail("this file system keeps the file cached (tmpfs?): the attack cannot be staged")
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="the page-cache probe needs preadv(RWF_NOWAIT)")
@pytest.mark.parametrize("range_header", [None, "bytes=0-"])
def test_closed_a_chunk_whose_last_byte_alone_is_cached_is_read_from_disk_on_the_event_loop(
    client: TestClient,
    dockyard: Dockyard,
    big: str,
    monkeypatch: pytest.MonkeyPatch,
    range_header: str | None,
) -> None:
    """HOLE (closed; medium: a worker's every request stalls behind one pull's disk reads).
    Attack: evict a blob from the page cache, then GET ``bytes=N-N`` at each 1 MiB chunk's last
    byte (or just let memory pressure evict the older front pages of each chunk), then GET the
    whole blob. ``is_cached`` probes only a chunk's last byte, so each 1 MiB ``pread`` runs on the
    event loop and waits on the disk. Seen on a real server (8 MB/s disk): a 64 MiB GET stalled
    every other request of the worker for 7.7 s (a 1-byte blob GET waited 7,965 ms), where the
    same cold GET without priming kept them at ~2 ms. Expected: a read on the event loop never
    waits on the disk (probe the whole chunk: ``preadv(RWF_NOWAIT)`` of the full chunk returns a
    short count when part of it is not cached; send what it returned and read the rest in a
    thread)."""
    path = _blob_file(dockyard, big)
    _evict_all_but_chunk_ends(path, len(BIG))
    real_pread, real_preadv = os.pread, os.preadv
    waiting: list[str] = []  # reads on the event loop that may wait on the disk
    loop_reads: list[int] = []  # bytes each read on the loop without waiting returned

    def on_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: waiting on the disk is its job
            return False
        return True

    def watched_pread(fd: int, size: int, offset: int) -> bytes:
        if on_loop():
            waiting.append(f"pread({size}, {offset})")
        return real_pread(fd, size, offset)

    def watched_preadv(fd: int, buffers: list[Any], offset: int, flags: int = 0) -> int:
        if not on_loop():
            return real_preadv(fd, buffers, offset, flags)
        if not flags & os.RWF_NOWAIT:
            waiting.append(f"preadv({offset}, flags={flags})")
            return real_preadv(fd, buffers, offset, flags)
        try:
            got = real_preadv(fd, buffers, offset, flags)
        except BlockingIOError:
            loop_reads.append(0)
            raise
        loop_reads.append(got)
        return got

    monkeypatch.setattr(os, "pread", watched_pread)
    monkeypatch.setattr(os, "preadv", watched_preadv)
    headers = {} if range_header is None else {"Range": range_header}
    response = client.get(f"/v2/{REPO}/blobs/{big}", headers=headers)
    assert response.content == BIG
    assert waiting == []
    assert loop_reads[0] < SEND_CHUNK  # the loop's read stopped at the first page not cached


# =================================================================================================
# B. A BLOB FILE THAT IS CUT SHORT, GONE, OR CHANGED WHILE IT IS SENT
# =================================================================================================


@pytest.mark.parametrize(
    ("data", "range_header"),
    [(SMALL, None), (SMALL, "bytes=0-1999"), (BIG, None), (BIG, "bytes=10-")],
    ids=["small", "small-range", "big", "big-range"],
)
def test_closed_a_blob_file_cut_short_before_the_get_is_answered_200(
    lenient: TestClient, dockyard: Dockyard, data: bytes, range_header: str | None
) -> None:
    """HOLE (closed; low: a corrupt store, but the answer and the access log say all is well).
    Attack: truncate a stored blob's file (a disk fault, an operator's mistake) to 100 bytes, then
    GET it. ``LocalFileResponse`` sends ``http.response.start`` (200 or 206, the recorded
    Content-Length) before it reads a byte, then raises OSError on the short read: granian turns
    that into a bare ``500 Internal Server Error`` while the access log records ``200 0`` (seen on
    a real server); an ASGI server that flushes the start at once sends a 200 with a cut body.
    Expected: the first chunk is read before the response starts, so a file that cannot supply it
    is an error answer (5xx) that the app logs as such."""
    digest = push_blob(lenient, REPO, data)
    os.truncate(_blob_file(dockyard, digest), 100)
    headers = {} if range_header is None else {"Range": range_header}
    response = lenient.get(f"/v2/{REPO}/blobs/{digest}", headers=headers)
    assert response.status_code >= 500, (response.status_code, len(response.content))


def test_closed_head_says_a_blob_whose_file_is_gone_exists(client: TestClient, dockyard: Dockyard) -> None:
    """HOLE (closed, older than LocalFileResponse; low-medium). Attack: remove a stored blob's file
    (a disk fault, a bad restore), then HEAD and GET it. GET answers ``404 BLOB_UNKNOWN`` but HEAD
    answers 200 with the recorded length (seen on a real server): docker and containerd HEAD a
    layer before pushing it and skip the upload on a 200, so the one push that would heal the
    store never sends the bytes. Expected: HEAD agrees with GET (404), as distribution's does (it
    stats the data file)."""
    digest = push_blob(client, REPO, SMALL)
    _blob_file(dockyard, digest).unlink()
    got = client.get(f"/v2/{REPO}/blobs/{digest}")
    assert got.status_code == 404
    assert error_codes(got) == ["BLOB_UNKNOWN"]
    assert client.head(f"/v2/{REPO}/blobs/{digest}").status_code == 404


@pytest.mark.parametrize("range_header", [None, "bytes=0-", "bytes=-1"])
def test_refused_a_blob_whose_file_is_gone_is_blob_unknown(
    client: TestClient, dockyard: Dockyard, big: str, range_header: str | None
) -> None:
    """REFUSED. Attack: remove a stored blob's file, then GET it whole and ranged. Expected (and
    seen): 404 BLOB_UNKNOWN, no 200/206 with a broken body."""
    _blob_file(dockyard, big).unlink()
    headers = {} if range_header is None else {"Range": range_header}
    response = client.get(f"/v2/{REPO}/blobs/{big}", headers=headers)
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UNKNOWN"]


def test_refused_a_blob_file_removed_while_it_streams_is_still_sent_whole(
    client: TestClient, app: Starlette, dockyard: Dockyard, big: str
) -> None:
    """REFUSED. Attack: remove the blob's file (garbage collection, an operator) after the first
    chunk is sent. Expected (and seen, on a real server too): the open descriptor keeps the bytes,
    the client gets the whole blob."""
    path = _blob_file(dockyard, big)

    def remove_once(sent: int) -> None:
        if path.exists():
            path.unlink()

    assert client.portal is not None
    messages = client.portal.call(_get, app, f"/v2/{REPO}/blobs/{big}", remove_once)
    assert not path.exists()
    assert messages[0]["status"] == 200
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert len(bodies) > 1  # removed while it streamed, not after
    assert b"".join(m["body"] for m in bodies) == BIG
    assert not bodies[-1].get("more_body", False)


def test_refused_a_blob_file_cut_while_it_streams_never_ends_as_complete(
    client: TestClient, app: Starlette, dockyard: Dockyard, big: str
) -> None:
    """REFUSED. Attack: truncate the blob's file after the first chunk is sent. Expected (and
    seen; on a real server curl reports ``(18) transfer closed with N bytes remaining``): the
    response fails, it never sends a last body message as if the blob were whole."""
    path = _blob_file(dockyard, big)
    messages: list[dict[str, Any]] = []

    def cut_once(sent: int) -> None:
        if path.stat().st_size == len(BIG):
            os.truncate(path, SEND_CHUNK + 10)

    async def get() -> None:
        messages.extend(await _get(app, f"/v2/{REPO}/blobs/{big}", cut_once))

    assert client.portal is not None
    with pytest.raises(OSError, match="early"):
        client.portal.call(get)
    assert path.stat().st_size == SEND_CHUNK + 10


# =================================================================================================
# C. RANGES AT THE CHUNK BOUNDARIES, AND MALFORMED RANGES
# =================================================================================================


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-1048575", 0, SEND_CHUNK - 1),
        ("bytes=0-1048576", 0, SEND_CHUNK),
        ("bytes=1048575-1048576", SEND_CHUNK - 1, SEND_CHUNK),
        ("bytes=1048576-", SEND_CHUNK, len(BIG) - 1),
        ("bytes=1048577-2097153", SEND_CHUNK + 1, 2 * SEND_CHUNK + 1),
        ("bytes=1048575-1048575", SEND_CHUNK - 1, SEND_CHUNK - 1),
        ("bytes=-1048577", len(BIG) - SEND_CHUNK - 1, len(BIG) - 1),
        ("bytes=3145727-", 3 * SEND_CHUNK - 1, len(BIG) - 1),
        ("bytes=-1", len(BIG) - 1, len(BIG) - 1),
        ("bytes=0-999999999999999999", 0, len(BIG) - 1),
        ("bytes=-999999999999999999", 0, len(BIG) - 1),
    ],
)
def test_refused_ranges_across_chunk_boundaries_get_exactly_their_bytes(
    client: TestClient, big: str, header: str, start: int, end: int
) -> None:
    """REFUSED. Attack: ranges that start, end or straddle 1 MiB chunk boundaries (and 18-digit
    ends) on a 3 MiB + 5 byte blob. Expected (and seen): 206 with exactly those bytes."""
    response = client.get(f"/v2/{REPO}/blobs/{big}", headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(BIG)}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.content == BIG[start : end + 1]


def test_refused_a_whole_blob_of_chunk_sizes_is_sent_exactly(client: TestClient) -> None:
    """REFUSED. Attack: blobs of 1 MiB - 1, 1 MiB and 1 MiB + 1 bytes, whole and from byte 1.
    Expected (and seen): every byte once, the right Content-Length."""
    for size in (SEND_CHUNK - 1, SEND_CHUNK, SEND_CHUNK + 1):
        data = os.urandom(size)
        digest = push_blob(client, REPO, data)
        whole = client.get(f"/v2/{REPO}/blobs/{digest}")
        assert (whole.status_code, whole.headers["content-length"]) == (200, str(size))
        assert whole.content == data
        tail = client.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=1-"})
        assert tail.status_code == 206
        assert tail.content == data[1:]


@pytest.mark.parametrize(
    "header",
    [
        "bytes=" + "9" * 3000 + "-",
        "bytes=0-" + "9" * 3000,
        "bytes=-" + "9" * 3000,
        "bytes=0-9999999999999999999",
        "bytes=-1-5",
        "bytes=1_0-20",
        "bytes=+1-2",
        "bytes=0x1-2",
        "bytes=\u0661-2",
        "bytes=0-1,2-3",
        "bytes=",
        "bytes=-",
        "BYTES=0-1",
        "items=0-1",
        "bytes = 0-1",
    ],
)
def test_refused_a_malformed_or_huge_range_gets_the_whole_blob_or_416(
    client: TestClient, big: str, header: str
) -> None:
    """REFUSED. Attack: numbers of thousands of digits, signs, underscores, hex, non-ASCII digits,
    several ranges, other units. Expected (and seen): the whole blob (RFC 9110 lets a server ignore
    a Range it will not serve) or 416 with ``bytes */size``; never a 500 or a part without
    Content-Range."""
    response = client.get(f"/v2/{REPO}/blobs/{big}", headers={"Range": header.encode("utf-8")})
    if response.status_code == 416:
        assert response.headers["content-range"] == f"bytes */{len(BIG)}"
        return
    assert response.status_code == 200
    assert "content-range" not in response.headers
    assert response.content == BIG


@pytest.mark.parametrize("header", ["bytes=0-0", "bytes=-1", "bytes=0-", "bytes=1-"])
def test_refused_every_range_of_a_one_byte_blob_is_exact(client: TestClient, header: str) -> None:
    """REFUSED. Attack: ranges on a 1-byte blob. Expected (and seen): 206 ``bytes 0-0/1`` with
    the byte, or 416 for a start past it."""
    digest = push_blob(client, REPO, b"x")
    response = client.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": header})
    if header == "bytes=1-":
        assert response.status_code == 416
        assert response.headers["content-range"] == "bytes */1"
        return
    assert response.status_code == 206
    assert response.headers["content-range"] == "bytes 0-0/1"
    assert response.content == b"x"


# =================================================================================================
# D. WHO MAY READ
# =================================================================================================


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("range_header", [None, "bytes=0-10"])
def test_refused_blob_reads_without_a_fitting_credential_get_no_bytes(
    client: TestClient, anonymous: TestClient, big: str, method: str, range_header: str | None
) -> None:
    """REFUSED. Attack: GET/HEAD a blob (whole or ranged) with no credential, a forged bearer
    token, a token whose signature is altered, and a real token for another repository.
    Expected (and seen): 401/403 and no blob byte."""
    other = access_token(client, ADMIN, "repository:other/app:pull")
    mine = access_token(client, ADMIN, f"repository:{REPO}:pull")
    head, payload, signature = mine.split(".")
    flipped = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
    attempts: list[dict[str, str]] = [
        {},
        bearer(f"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."),  # alg: none
        bearer(f"{head}.{payload}.{flipped}"),
        bearer(other),
    ]
    for credential in attempts:
        headers = dict(credential)
        if range_header is not None:
            headers["Range"] = range_header
        response = anonymous.request(method, f"/v2/{REPO}/blobs/{big}", headers=headers)
        assert response.status_code in (401, 403), (credential, response.status_code)
        assert BIG[:11] not in response.content
    allowed = anonymous.request(method, f"/v2/{REPO}/blobs/{big}", headers=bearer(mine))
    assert allowed.status_code == 200


def test_refused_a_recorded_blob_of_another_repository_is_not_read_by_digest(
    client: TestClient, big: str
) -> None:
    """REFUSED. Attack: GET (and ranged GET) a blob by digest through a repository that never
    received it (the file exists, shared by content). Expected (and seen): 404, no bytes."""
    push_blob(client, "other/app", SMALL)
    for headers in ({}, {"Range": "bytes=0-10"}):
        response = client.get(f"/v2/other/app/blobs/{big}", headers=headers)
        assert response.status_code == 404
        assert BIG[:11] not in response.content
    assert client.get(f"/v2/other/app/blobs/{sha256(SMALL)}").content == SMALL
