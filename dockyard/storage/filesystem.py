"""Filesystem BlobStore: blobs under ``blobs/<alg>/<2 hex>/<hex>``, uploads under ``uploads/<id>``.

An upload is one file appended to; its state is a constant (the recorded size says how
much of the file counts), and opening it truncates to that size, so bytes a failed
request wrote past it are dropped. Commit is fsync of the data, an atomic rename into
place, and an fsync of the directory: three syncs where CNCF Distribution needs eleven,
and a crash at any point leaves either no blob or a complete one.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from dockyard.storage.interfaces import (
    BlobPage,
    BlobSource,
    LocalFile,
    StorageError,
    StorageFull,
    StoredBlob,
    UploadLost,
)

READ_CHUNK = 1024 * 1024
UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
ENCODED = re.compile(r"^[a-zA-Z0-9=_-]+\Z")
ALGORITHM = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*\Z")
#: The state of every filesystem upload: the file is the upload, the recorded size its length.
UPLOAD_STATE = "file"


@contextlib.contextmanager
def _space(what: str) -> Iterator[None]:
    """Turn "no space left" and "quota exceeded" into StorageFull."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"no space left on the blob store for {what}") from exc
        raise


def _process_token() -> str:
    return f"{os.getpid()}-{os.urandom(6).hex()}"


def _write_all(write: Callable[[memoryview], int | None], data: bytes, path: Path) -> None:
    """Call ``write`` until every byte of ``data`` is written (``path`` names the file)."""
    view = memoryview(data).cast("B")
    while view:
        written = write(view)
        if not written:
            raise StorageError(f"short write to {path}")
        view = view[written:]


def _write_synced(fd: int, data: bytes, path: Path) -> None:
    """Write ``data`` to the new file ``fd`` (at ``path``), sync it and close it: a few system
    calls and no buffered file object, as each call hands the interpreter lock to another thread
    and back."""
    try:
        _write_all(functools.partial(os.write, fd), data, path)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sorted_entries(directory: Path, after: str | None) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` named after ``after`` (all if None), sorted by name."""
    try:
        with os.scandir(directory) as entries:
            found = [entry for entry in entries if after is None or entry.name > after]
    except FileNotFoundError:
        return []
    return sorted(found, key=lambda entry: entry.name)


class FilesystemUploadWriter:
    """Appends to an upload file after its recorded size; ``abort`` truncates back to it.

    Only while the file is still the upload's: once another request has committed it (moved it
    into place as a blob) or cancelled it, a write raises UploadLost and ``abort`` leaves it be.
    """

    def __init__(self, path: Path, state: str | None, offset: int) -> None:
        self._path = path
        self._start = offset
        if state is None and offset:
            raise StorageError(f"upload {path.name}: no state for {offset} recorded bytes")
        flags = os.O_WRONLY | (os.O_CREAT if state is None else 0)
        try:
            with _space(f"upload {path.name}"):
                fd = os.open(path, flags, 0o640)
        except FileNotFoundError:
            raise UploadLost(f"upload {path.name} holds no data") from None
        self._file = os.fdopen(fd, "wb", buffering=0)
        if os.fstat(fd).st_size < offset:
            self._file.close()
            raise UploadLost(f"upload {path.name} holds fewer than its {offset} recorded bytes")
        self._file.truncate(offset)
        self._file.seek(offset)

    def write(self, data: bytes) -> None:
        if not self._still_the_upload():
            self._file.close()
            raise UploadLost(f"upload {self._path.name} was completed or cancelled by another request")
        with _space(f"upload {self._path.name}"):
            _write_all(self._file.write, data, self._path)

    def close(self) -> str:
        self._file.close()
        return UPLOAD_STATE

    def abort(self) -> None:
        if not self._file.closed:
            if self._still_the_upload():
                self._file.truncate(self._start)
            self._file.close()

    def _still_the_upload(self) -> bool:
        """Whether the upload's path still names the file this writer holds open."""
        try:
            named = os.stat(self._path)
        except FileNotFoundError:
            return False
        held = os.fstat(self._file.fileno())
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


class FilesystemBlobStore:
    """A BlobStore on a local (or network) filesystem."""

    local = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._uploads = self.root / "uploads"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._uploads.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()
        self._process_token = _process_token()  # with the serial, names put's temporary files
        self._serials = itertools.count()

    def __repr__(self) -> str:
        return f"FilesystemBlobStore({str(self.root)!r})"

    def _blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        if not ALGORITHM.match(algorithm) or not ENCODED.match(encoded):
            raise StorageError(f"not a digest: {digest[:80]!r}")
        return self._blobs / algorithm / encoded[:2] / encoded

    def _upload_path(self, upload_id: str) -> Path:
        if not UPLOAD_ID.match(upload_id):
            raise StorageError(f"not an upload id: {upload_id[:80]!r}")
        return self._uploads / upload_id

    # -- blobs ----------------------------------------------------------------------------------

    def stat(self, digest: str, *, location: str | None = None) -> int | None:
        try:
            return self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def read(
        self, digest: str, offset: int = 0, length: int | None = None, *, location: str | None = None
    ) -> Iterator[bytes]:
        return self._read_file(self._blob_path(digest), offset, length)

    @staticmethod
    def _read_file(path: Path, offset: int, length: int | None) -> Iterator[bytes]:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise StorageError(f"{path.name} is not in the store") from None
        with handle:
            handle.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                chunk = handle.read(READ_CHUNK if remaining is None else min(READ_CHUNK, remaining))
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        if remaining:
            raise StorageError(f"{path.name} ended {remaining} bytes early")

    def source(
        self, digest: str, *, location: str | None = None, redirect: bool = False, expires: int = 1200
    ) -> BlobSource:
        return LocalFile(self._blob_path(digest))

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        missing = []
        current = directory
        while not current.exists():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
            _fsync_dir(path.parent)
        self._known_dirs.add(directory)

    def _install(self, source: Path, target: Path) -> None:
        """Atomically move a synced file into place and make the rename durable."""
        self._move_into_place(source, target)
        _fsync_dir(target.parent)

    def _move_into_place(self, source: Path, target: Path) -> None:
        """``_install``'s rename, not yet durable (its directory not synced)."""
        self._ensure_dir(target.parent)
        os.replace(source, target)

    def put(self, digest: str, data: bytes) -> None:
        target = self._blob_path(digest)
        if target.exists():
            return
        with _space(f"blob {digest}"):
            temporary, fd = self._new_temporary()
            try:
                _write_synced(fd, data, temporary)
                self._move_into_place(temporary, target)
            except BaseException:
                # Only before the rename: after it the name is free, and may be another process's.
                with contextlib.suppress(FileNotFoundError):
                    temporary.unlink()
                raise
            _fsync_dir(target.parent)

    def _new_temporary(self) -> tuple[Path, int]:
        """A new file under uploads/ for ``put``, open for writing (created with O_EXCL: a name
        another process holds, as a forked child that kept its parent's token would, is never
        opened; the token is renewed and the next name tried)."""
        while True:
            path = self._uploads / f"put-{self._process_token}-{next(self._serials)}"
            try:
                return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                self._process_token = _process_token()

    def delete(self, digest: str, *, location: str | None = None) -> bool:
        try:
            self._blob_path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def list_blobs(self, cursor: str | None = None, limit: int = 1000) -> BlobPage:
        """Blobs in digest order (algorithm, then encoded); one prefix folder is read at a time."""
        after_algorithm, _, after_encoded = cursor.partition(":") if cursor else ("", "", "")
        blobs: list[StoredBlob] = []
        for algorithm in _sorted_entries(self._blobs, None):
            if algorithm.name < after_algorithm or not algorithm.is_dir():
                continue
            resume = after_encoded if algorithm.name == after_algorithm else None
            prefixes = _sorted_entries(Path(algorithm.path), None)
            for prefix in prefixes:
                if resume is not None and prefix.name < resume[:2]:
                    continue
                for entry in _sorted_entries(Path(prefix.path), resume):
                    if not ENCODED.match(entry.name):
                        continue
                    try:
                        info = entry.stat()
                    except FileNotFoundError:
                        continue
                    blobs.append(
                        StoredBlob(f"{algorithm.name}:{entry.name}", None, info.st_size, info.st_mtime)
                    )
                    if len(blobs) == limit:
                        return BlobPage(blobs, blobs[-1].digest)
        return BlobPage(blobs, None)

    # -- uploads --------------------------------------------------------------------------------

    def open_upload(
        self, upload_id: str, state: str | None, size: int, *, digest: str | None = None
    ) -> FilesystemUploadWriter:
        return FilesystemUploadWriter(self._upload_path(upload_id), state, size)

    def commit_upload(self, upload_id: str, state: str | None, digest: str, size: int) -> str | None:
        source = self._upload_path(upload_id)
        target = self._blob_path(digest)
        if size == 0 and state is None:
            with _space(f"blob {digest}"):
                source.touch()
        try:
            fd = os.open(source, os.O_RDWR)
        except FileNotFoundError:
            raise UploadLost(f"upload {upload_id} holds no data") from None
        try:
            held = os.fstat(fd).st_size
            if held < size:
                raise UploadLost(f"upload {upload_id} holds {held} bytes, expected {size}")
            if held > size:
                os.ftruncate(fd, size)
            if target.exists():
                source.unlink()
                return None
            with _space(f"blob {digest}"):
                os.fsync(fd)
        finally:
            os.close(fd)
        with _space(f"blob {digest}"):
            self._install(source, target)
        return None

    def abort_upload(self, upload_id: str, state: str | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._upload_path(upload_id).unlink()

    def expire_uploads(self, older_than: float, is_live: Callable[[str], bool]) -> int:
        removed = 0
        with os.scandir(self._uploads) as entries:
            for entry in entries:
                try:
                    if not entry.is_file() or entry.stat().st_mtime >= older_than or is_live(entry.name):
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                removed += 1
        return removed
