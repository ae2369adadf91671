"""The BlobStore protocol every storage driver implements.

A BlobStore keeps bytes by digest and nothing else: which repository has which
blob is the database's business. Upload data lives in the store under an upload
id until ``commit_upload`` makes it durable under its digest in one atomic step.
All methods are synchronous; the HTTP layer calls them from worker threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable


class StorageError(Exception):
    """The store could not do what was asked (missing upload, short data, I/O failure)."""


class StorageFull(StorageError):
    """The store has no space (or quota) left for what it was asked to write.

    Whatever the failed call wrote is gone again: an upload keeps the bytes it held
    before the call, and no blob appears. The same call can succeed once space is freed.
    """


@runtime_checkable
class UploadWriter(Protocol):
    """Appends one chunk's bytes to an upload, all or nothing."""

    def write(self, data: bytes) -> None:
        """Append ``data`` after what was written so far; StorageFull if there is no space."""

    def close(self) -> int:
        """Finish the chunk and return the upload's size; not yet durable."""

    def abort(self) -> None:
        """Forget everything written through this writer."""


@runtime_checkable
class BlobStore(Protocol):
    """Content-addressed blob storage."""

    def stat(self, digest: str) -> int | None:
        """The blob's size, or None if the store does not hold it."""

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Yield the blob's bytes from ``offset``, ``length`` bytes or to the end."""

    def local_path(self, digest: str) -> Path | None:
        """A filesystem path the server may send directly, or None."""

    def put(self, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest`` durably and atomically (the caller verified it)."""

    def delete(self, digest: str) -> bool:
        """Remove a blob; True if it existed."""

    def upload_size(self, upload_id: str) -> int | None:
        """Bytes currently held for an upload, or None if there is none."""

    def open_upload(self, upload_id: str, offset: int) -> UploadWriter:
        """A writer appending at ``offset``; bytes past ``offset`` are discarded first."""

    def read_upload(self, upload_id: str, length: int) -> Iterator[bytes]:
        """Yield the first ``length`` bytes of an upload."""

    def commit_upload(self, upload_id: str, digest: str, size: int) -> None:
        """Make the first ``size`` bytes of an upload the durable blob ``digest``, atomically.

        If the blob already exists the upload is simply dropped. Raises StorageError if
        the upload holds fewer than ``size`` bytes, StorageFull (the upload kept) if there is no space.
        """

    def delete_upload(self, upload_id: str) -> None:
        """Drop an upload's data; no error if there is none."""

    def list_uploads(self) -> Iterator[tuple[str, float]]:
        """Yield (upload_id, last-modified epoch seconds) for every upload held."""
