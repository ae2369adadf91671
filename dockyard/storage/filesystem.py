"""Filesystem BlobStore: blobs under ``blobs/<alg>/<2 hex>/<hex>``, uploads under ``uploads/``.

Commit is fsync of the data, an atomic rename into place, and an fsync of the
directory: three syncs where CNCF Distribution needs eleven, and a crash at any
point leaves either no blob or a complete one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from dockyard.storage.interfaces import StorageError, StorageFull

READ_CHUNK = 1024 * 1024
UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")


@contextlib.contextmanager
def _space(what: str) -> Iterator[None]:
    """Turn "no space left" and "quota exceeded" into StorageFull."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"no space left on the blob store for {what}") from exc
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemUploadWriter:
    """Appends to an upload file; ``abort`` truncates back to where it started."""

    def __init__(self, path: Path, offset: int) -> None:
        self._path = path
        self._start = offset
        with _space(f"upload {path.name}"):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._file.truncate(offset)
        self._file.seek(offset)
        self._offset = offset

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        with _space(f"upload {self._path.name}"):
            while view:
                written = self._file.write(view)
                if not written:
                    raise StorageError(f"short write to {self._path}")
                view = view[written:]
        self._offset += len(data)

    def close(self) -> int:
        self._file.close()
        return self._offset

    def abort(self) -> None:
        if not self._file.closed:
            self._file.truncate(self._start)
            self._file.close()
        self._offset = self._start


class FilesystemBlobStore:
    """A BlobStore on a local (or network) filesystem."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._uploads = self.root / "uploads"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._uploads.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()

    def __repr__(self) -> str:
        return f"FilesystemBlobStore({str(self.root)!r})"

    def _blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        if not encoded or "/" in digest or ".." in digest:
            raise StorageError(f"not a digest: {digest!r}")
        return self._blobs / algorithm / encoded[:2] / encoded

    def _upload_path(self, upload_id: str) -> Path:
        if not UPLOAD_ID.match(upload_id):
            raise StorageError(f"not an upload id: {upload_id!r}")
        return self._uploads / upload_id

    def stat(self, digest: str) -> int | None:
        try:
            return self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
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

    def local_path(self, digest: str) -> Path | None:
        return self._blob_path(digest)

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
        self._ensure_dir(target.parent)
        os.replace(source, target)
        _fsync_dir(target.parent)

    def put(self, digest: str, data: bytes) -> None:
        target = self._blob_path(digest)
        if target.exists():
            return
        temporary = self._uploads / f"put-{os.getpid()}-{id(data)}-{os.urandom(6).hex()}"
        try:
            with _space(f"blob {digest}"):
                with temporary.open("wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                self._install(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise

    def delete(self, digest: str) -> bool:
        try:
            self._blob_path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def upload_size(self, upload_id: str) -> int | None:
        try:
            return self._upload_path(upload_id).stat().st_size
        except FileNotFoundError:
            return None

    def open_upload(self, upload_id: str, offset: int) -> FilesystemUploadWriter:
        return FilesystemUploadWriter(self._upload_path(upload_id), offset)

    def read_upload(self, upload_id: str, length: int) -> Iterator[bytes]:
        return self._read_file(self._upload_path(upload_id), 0, length)

    def commit_upload(self, upload_id: str, digest: str, size: int) -> None:
        source = self._upload_path(upload_id)
        target = self._blob_path(digest)
        if size == 0 and not source.exists():
            source.touch()
        try:
            fd = os.open(source, os.O_RDWR)
        except FileNotFoundError:
            raise StorageError(f"upload {upload_id} holds no data") from None
        try:
            held = os.fstat(fd).st_size
            if held < size:
                raise StorageError(f"upload {upload_id} holds {held} bytes, expected {size}")
            if held > size:
                os.ftruncate(fd, size)
            if target.exists():
                source.unlink()
                return
            with _space(f"blob {digest}"):
                os.fsync(fd)
        finally:
            os.close(fd)
        with _space(f"blob {digest}"):
            self._install(source, target)

    def delete_upload(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._upload_path(upload_id).unlink()

    def list_uploads(self) -> Iterator[tuple[str, float]]:
        for entry in os.scandir(self._uploads):
            if entry.is_file():
                try:
                    yield entry.name, entry.stat().st_mtime
                except FileNotFoundError:
                    continue
