"""The filesystem store on a full disk: StorageFull, and nothing of the failed write left behind."""

import os

import pytest

from dockyard.storage import StorageFull
from dockyard.storage.filesystem import FilesystemBlobStore
from tests.support.images import sha256
from tests.support.small_filesystem import SmallFilesystem, small_filesystem

MiB = 1024 * 1024


@pytest.fixture
def disk(tmp_path, monkeypatch):
    with small_filesystem(tmp_path / "small", 4 * MiB, monkeypatch) as space:
        yield space


def test_an_upload_that_does_not_fit_raises_storage_full_and_keeps_what_it_had(disk: SmallFilesystem):
    store = FilesystemBlobStore(disk.path / "store")
    first = os.urandom(MiB)
    writer = store.open_upload("u1", None, 0)
    writer.write(first)
    state = writer.close()
    disk.fill(leave=256 * 1024)
    writer = store.open_upload("u1", state, MiB)
    with pytest.raises(StorageFull, match="no space left on the blob store"):
        writer.write(os.urandom(MiB))
    writer.abort()
    assert (disk.path / "store" / "uploads" / "u1").stat().st_size == MiB
    disk.release()
    writer = store.open_upload("u1", state, MiB)
    writer.write(first)
    state = writer.close()
    assert store.commit_upload("u1", state, sha256(first + first), 2 * MiB) is None
    assert b"".join(store.read(sha256(first + first))) == first + first


def test_put_that_does_not_fit_leaves_no_temporary_file(disk: SmallFilesystem):
    store = FilesystemBlobStore(disk.path / "store")
    disk.fill(leave=256 * 1024)
    data = os.urandom(MiB)
    with pytest.raises(StorageFull):
        store.put(sha256(data), data)
    assert store.stat(sha256(data)) is None
    assert list((disk.path / "store" / "uploads").iterdir()) == []
