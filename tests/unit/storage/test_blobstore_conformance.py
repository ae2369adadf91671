"""The BlobStore contract: every driver must pass this suite (parametrise new drivers into `store`)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.storage import BlobStore, StorageError, UploadWriter
from dockyard.storage.filesystem import FilesystemBlobStore
from tests.support.images import sha256

DRIVERS = ["filesystem"]


@pytest.fixture(params=DRIVERS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "filesystem":
        yield FilesystemBlobStore(tmp_path / "store")


DATA = b"0123456789" * 300_000  # 3 MB, more than one read chunk


def test_is_a_blob_store(store):
    assert isinstance(store, BlobStore)


def test_put_stat_read(store):
    digest = sha256(DATA)
    assert store.stat(digest) is None
    store.put(digest, DATA)
    assert store.stat(digest) == len(DATA)
    assert b"".join(store.read(digest)) == DATA
    assert b"".join(store.read(digest, 5, 10)) == DATA[5:15]
    assert b"".join(store.read(digest, len(DATA) - 3)) == DATA[-3:]
    store.put(digest, DATA)  # idempotent
    assert store.stat(digest) == len(DATA)


def test_reading_a_missing_blob_fails(store):
    with pytest.raises(StorageError):
        b"".join(store.read(sha256(b"missing")))


def test_delete(store):
    digest = sha256(b"gone")
    store.put(digest, b"gone")
    assert store.delete(digest) is True
    assert store.stat(digest) is None
    assert store.delete(digest) is False


def test_upload_append_commit(store):
    digest = sha256(DATA)
    assert store.upload_size("u1") is None
    writer = store.open_upload("u1", 0)
    assert isinstance(writer, UploadWriter)
    writer.write(DATA[:1000])
    assert writer.close() == 1000
    writer = store.open_upload("u1", 1000)
    writer.write(DATA[1000:])
    assert writer.close() == len(DATA)
    assert store.upload_size("u1") == len(DATA)
    assert b"".join(store.read_upload("u1", 1000)) == DATA[:1000]
    assert store.stat(digest) is None  # nothing visible before commit
    store.commit_upload("u1", digest, len(DATA))
    assert b"".join(store.read(digest)) == DATA
    assert store.upload_size("u1") is None


def test_abort_discards_only_the_current_chunk(store):
    writer = store.open_upload("u2", 0)
    writer.write(b"keep")
    writer.close()
    writer = store.open_upload("u2", 4)
    writer.write(b"discard me")
    writer.abort()
    assert store.upload_size("u2") == 4
    assert b"".join(store.read_upload("u2", 4)) == b"keep"


def test_reopening_discards_bytes_past_the_offset(store):
    writer = store.open_upload("u3", 0)
    writer.write(b"abcdef")
    writer.close()
    writer = store.open_upload("u3", 3)
    writer.write(b"XY")
    assert writer.close() == 5
    store.commit_upload("u3", sha256(b"abcXY"), 5)
    assert b"".join(store.read(sha256(b"abcXY"))) == b"abcXY"


def test_commit_takes_a_prefix_and_refuses_short_uploads(store):
    writer = store.open_upload("u4", 0)
    writer.write(b"abcdef")
    writer.close()
    with pytest.raises(StorageError):
        store.commit_upload("u4", sha256(b"abcdefgh"), 8)
    store.commit_upload("u4", sha256(b"abc"), 3)
    assert b"".join(store.read(sha256(b"abc"))) == b"abc"
    with pytest.raises(StorageError):
        store.commit_upload("never-started", sha256(b"x"), 1)


def test_commit_of_existing_blob_keeps_it_and_drops_the_upload(store):
    digest = sha256(b"same")
    store.put(digest, b"same")
    writer = store.open_upload("u5", 0)
    writer.write(b"same")
    writer.close()
    store.commit_upload("u5", digest, 4)
    assert store.upload_size("u5") is None
    assert b"".join(store.read(digest)) == b"same"


def test_empty_blob(store):
    store.commit_upload("empty", sha256(b""), 0)
    assert store.stat(sha256(b"")) == 0
    assert b"".join(store.read(sha256(b""))) == b""


def test_list_and_delete_uploads(store):
    for name in ("a1", "b2"):
        writer = store.open_upload(name, 0)
        writer.write(b"x")
        writer.close()
    assert sorted(upload for upload, _ in store.list_uploads()) == ["a1", "b2"]
    store.delete_upload("a1")
    store.delete_upload("a1")
    assert [upload for upload, _ in store.list_uploads()] == ["b2"]


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", "x" * 200])
def test_upload_ids_cannot_escape(store, bad):
    with pytest.raises(StorageError):
        store.open_upload(bad, 0)


def test_digests_cannot_escape(store):
    with pytest.raises(StorageError):
        store.stat("sha256/../../etc")
