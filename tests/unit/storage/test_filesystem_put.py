"""The filesystem store's ``put``: its temporary file, the bytes it installs, what it leaves."""

import array
import copy
import errno
import itertools
import os
import stat

import pytest

from dockyard.storage import filesystem
from dockyard.storage.filesystem import FilesystemBlobStore
from dockyard.storage.interfaces import StorageError
from tests.support.images import sha256


def test_put_never_opens_a_temporary_name_another_process_holds(tmp_path):
    store = FilesystemBlobStore(tmp_path)
    token = store._process_token
    store._serials = itertools.count(7)
    held = tmp_path / "uploads" / f"put-{token}-7"  # as a forked child that kept the token would
    held.write_bytes(b"another process's bytes")
    data = b"this blob"
    store.put(sha256(data), data)
    assert b"".join(store.read(sha256(data))) == data
    assert held.read_bytes() == b"another process's bytes"
    assert store._process_token != token
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == [held.name]


def test_put_installs_every_byte_and_leaves_no_temporary_file(tmp_path):
    store = FilesystemBlobStore(tmp_path)
    data = os.urandom(5 * 1024 * 1024 + 3)
    store.put(sha256(data), data)
    store.put(sha256(data), data)  # already there: nothing written
    assert b"".join(store.read(sha256(data))) == data
    assert list((tmp_path / "uploads").iterdir()) == []


def test_a_put_blob_has_the_mode_the_umask_gives(tmp_path):
    previous = os.umask(0o027)
    try:
        store = FilesystemBlobStore(tmp_path)
        store.put(sha256(b"mode"), b"mode")
    finally:
        os.umask(previous)
    encoded = sha256(b"mode").split(":")[1]
    mode = (tmp_path / "blobs" / "sha256" / encoded[:2] / encoded).stat().st_mode
    assert stat.S_IMODE(mode) == 0o640


def test_a_failure_after_the_rename_never_unlinks_a_name_another_process_took_since(tmp_path, monkeypatch):
    """A forked child keeps its parent's token and serial: once the parent's rename has freed
    ``put-<token>-0``, the child may create that name; the parent's cleanup must not remove it."""
    parent = FilesystemBlobStore(tmp_path)
    child = copy.copy(parent)
    child._serials = copy.copy(parent._serials)
    child._known_dirs = set()
    held: dict[str, tuple] = {}
    real = filesystem._fsync_dir
    name = tmp_path / "uploads" / f"put-{parent._process_token}-0"

    def failing_after_the_rename(path):
        if name.exists():  # the parent's own file, before its rename: _ensure_dir's syncs
            return real(path)
        held["child"] = child._new_temporary()  # the name is free again: the child takes it
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(filesystem, "_fsync_dir", failing_after_the_rename)
    with pytest.raises(OSError, match="I/O error"):
        parent.put(sha256(b"parent"), b"parent")
    monkeypatch.setattr(filesystem, "_fsync_dir", real)
    temporary, fd = held["child"]
    assert temporary == name
    filesystem._write_synced(fd, b"child", temporary)
    child._install(temporary, child._blob_path(sha256(b"child")))
    assert b"".join(child.read(sha256(b"child"))) == b"child"


def test_put_counts_bytes_not_items_of_a_wide_buffer(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr(filesystem.os, "write", lambda fd, buffer: real(fd, bytes(buffer[:1000])))
    store = FilesystemBlobStore(tmp_path)
    data = memoryview(array.array("I", range(1000)))
    store.put(sha256(data.tobytes()), data)
    assert b"".join(store.read(sha256(data.tobytes()))) == data.tobytes()


def test_a_write_that_writes_nothing_fails_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setattr(filesystem.os, "write", lambda fd, buffer: 0)
    store = FilesystemBlobStore(tmp_path)
    with pytest.raises(StorageError, match="short write"):
        store.put(sha256(b"nothing"), b"nothing")
    monkeypatch.undo()
    assert list((tmp_path / "uploads").iterdir()) == []
    assert store.stat(sha256(b"nothing")) is None
