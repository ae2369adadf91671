"""The filesystem store's ``put``: its temporary file, the bytes it installs, what it leaves."""

import itertools
import os
import stat

from dockyard.storage.filesystem import FilesystemBlobStore
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
