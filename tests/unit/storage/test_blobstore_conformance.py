"""The BlobStore contract: every driver must pass this suite (add drivers in conftest.DRIVERS)."""

import time

import httpx
import pytest

from dockyard.storage import BlobStore, LocalFile, Redirect, StorageError, UploadWriter
from tests.support.images import sha256

MIB = 1024 * 1024
DATA = bytes(range(256)) * (12 * MIB // 256 + 17)  # 12 MiB and a bit: crosses part sizes


def _write(store: BlobStore, upload_id: str, state: str | None, size: int, data: bytes, **kw) -> str:
    """Append ``data`` in 1 MiB writes, as the HTTP layer does, and return the new state."""
    writer = store.open_upload(upload_id, state, size, **kw)
    assert isinstance(writer, UploadWriter)
    for start in range(0, len(data), MIB):
        writer.write(data[start : start + MIB])
    return writer.close()


def test_is_a_blob_store(store):
    assert isinstance(store, BlobStore)
    assert isinstance(store.local, bool)


def test_put_stat_read(store):
    data = DATA[: 3 * MIB]
    digest = sha256(data)
    assert store.stat(digest) is None
    store.put(digest, data)
    assert store.stat(digest) == len(data)
    assert b"".join(store.read(digest)) == data
    assert b"".join(store.read(digest, 5, 10)) == data[5:15]
    assert b"".join(store.read(digest, len(data) - 3)) == data[-3:]
    store.put(digest, data)  # idempotent
    assert store.stat(digest) == len(data)


def test_reading_a_missing_blob_fails(store):
    with pytest.raises(StorageError):
        b"".join(store.read(sha256(b"missing")))


def test_delete(store):
    digest = sha256(b"gone")
    store.put(digest, b"gone")
    assert store.delete(digest) is True
    assert store.stat(digest) is None
    assert store.delete(digest) is False


def test_upload_in_parts_then_commit(store):
    digest = sha256(DATA)
    state = _write(store, "u1", None, 0, DATA[:1000])  # a small part, then large ones
    state = _write(store, "u1", state, 1000, DATA[1000 : 7 * MIB])
    state = _write(store, "u1", state, 7 * MIB, DATA[7 * MIB :])
    assert store.stat(digest) is None  # nothing visible before commit
    location = store.commit_upload("u1", state, digest, len(DATA))
    assert store.stat(digest, location=location) == len(DATA)
    assert b"".join(store.read(digest, location=location)) == DATA
    assert b"".join(store.read(digest, 6 * MIB, 10, location=location)) == DATA[6 * MIB : 6 * MIB + 10]


def test_any_node_continues_an_upload(make_store):
    first, second = make_store(), make_store()
    digest = sha256(DATA)
    state = _write(first, "moving", None, 0, DATA[: 6 * MIB])
    state = _write(second, "moving", state, 6 * MIB, DATA[6 * MIB : 9 * MIB])
    state = _write(first, "moving", state, 9 * MIB, DATA[9 * MIB :])
    location = second.commit_upload("moving", state, digest, len(DATA))
    assert b"".join(first.read(digest, location=location)) == DATA


def test_abort_discards_only_the_current_part(store):
    state = _write(store, "u2", None, 0, b"keep")
    writer = store.open_upload("u2", state, 4)
    writer.write(b"discard me")
    writer.abort()
    state = _write(store, "u2", state, 4, b"!")
    location = store.commit_upload("u2", state, sha256(b"keep!"), 5)
    assert b"".join(store.read(sha256(b"keep!"), location=location)) == b"keep!"


def test_a_part_closed_but_never_recorded_is_not_in_the_blob(store):
    """A request that wrote and closed a part but died before recording it: the retry wins."""
    first = _write(store, "u3", None, 0, DATA[: 6 * MIB])
    _write(store, "u3", first, 6 * MIB, b"x" * (6 * MIB))  # closed, then the caller died
    state = _write(store, "u3", first, 6 * MIB, DATA[6 * MIB :])
    digest = sha256(DATA)
    location = store.commit_upload("u3", state, digest, len(DATA))
    assert b"".join(store.read(digest, location=location)) == DATA


def test_small_parts_then_a_commit(store):
    data = b"".join(bytes([n]) * 1000 for n in range(20))
    state, size = None, 0
    for start in range(0, len(data), 1000):
        state = _write(store, "small", state, size, data[start : start + 1000])
        size += 1000
    location = store.commit_upload("small", state, sha256(data), size)
    assert b"".join(store.read(sha256(data), location=location)) == data


def test_commit_refuses_a_size_the_upload_does_not_hold(store):
    state = _write(store, "u4", None, 0, b"abcdef")
    with pytest.raises(StorageError):
        store.commit_upload("u4", state, sha256(b"abcdefgh"), 8)
    with pytest.raises(StorageError):
        store.commit_upload("never-started", None, sha256(b"x"), 1)


def test_commit_of_an_existing_blob_keeps_it_and_drops_the_upload(store):
    digest = sha256(b"same")
    store.put(digest, b"same")
    state = _write(store, "u5", None, 0, b"same")
    assert store.commit_upload("u5", state, digest, 4) is None
    assert b"".join(store.read(digest)) == b"same"


def test_empty_blob(store):
    location = store.commit_upload("empty", None, sha256(b""), 0)
    assert store.stat(sha256(b""), location=location) == 0
    assert b"".join(store.read(sha256(b""), location=location)) == b""


def test_an_upload_whose_digest_is_known_lands_in_place(store):
    digest = sha256(DATA)
    state = _write(store, "known", None, 0, DATA, digest=digest)
    assert store.commit_upload("known", state, digest, len(DATA)) is None
    assert store.stat(digest) == len(DATA)
    assert b"".join(store.read(digest, 100, 5)) == DATA[100:105]


def test_abort_upload(store):
    state = _write(store, "dropped", None, 0, b"bytes")
    store.abort_upload("dropped", state)
    store.abort_upload("dropped", state)  # twice is fine
    store.abort_upload("never-started", None)
    with pytest.raises(StorageError):
        store.commit_upload("dropped", state, sha256(b"bytes"), 5)


def test_expire_uploads_drops_only_old_unclaimed_ones(store):
    live_state = _write(store, "live", None, 0, b"still going")
    dead_state = _write(store, "dead", None, 0, b"abandoned")
    assert store.expire_uploads(time.time() - 3600, lambda _: False) == 0  # nothing that old
    assert store.expire_uploads(time.time() + 60, lambda upload_id: upload_id == "live") >= 1
    with pytest.raises(StorageError):
        store.commit_upload("dead", dead_state, sha256(b"abandoned"), 9)
    location = store.commit_upload("live", live_state, sha256(b"still going"), 11)
    assert b"".join(store.read(sha256(b"still going"), location=location)) == b"still going"


def test_list_blobs_pages_through_everything(store):
    expected = {}
    for n in range(5):
        data = f"blob {n}".encode()
        store.put(sha256(data), data)
        expected[(sha256(data), None)] = len(data)
    state = _write(store, "listed", None, 0, b"committed upload")
    location = store.commit_upload("listed", state, sha256(b"committed upload"), 16)
    key = (None, location) if location else (sha256(b"committed upload"), None)
    expected[key] = 16
    seen: dict = {}
    cursor = None
    pages = 0
    while True:
        page = store.list_blobs(cursor, limit=2)
        pages += 1
        assert len(page.blobs) <= 2
        for blob in page.blobs:
            assert (blob.digest is None) != (blob.location is None)
            assert blob.modified > time.time() - 3600
            seen[(blob.digest, blob.location)] = blob.size
        if page.cursor is None:
            break
        cursor = page.cursor
    assert seen == expected
    assert pages >= 3


def test_source_serves_the_blob(store):
    data = DATA[: 2 * MIB]
    digest = sha256(data)
    store.put(digest, data)
    for redirect in (False, True):
        source = store.source(digest, redirect=redirect)
        if isinstance(source, LocalFile):
            assert source.path.read_bytes() == data
        elif isinstance(source, Redirect):
            assert redirect, "a redirect only when asked for"
            answer = httpx.get(source.url, headers={"Range": "bytes=10-19"})
            assert answer.status_code == 206
            assert answer.content == data[10:20]
            assert httpx.get(source.url).content == data
        else:
            assert source is None
            assert b"".join(store.read(digest)) == data


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", "x" * 200])
def test_upload_ids_cannot_escape(store, bad):
    with pytest.raises(StorageError):
        store.open_upload(bad, None, 0)


def test_digests_cannot_escape(store):
    with pytest.raises(StorageError):
        store.stat("sha256/../../etc")
