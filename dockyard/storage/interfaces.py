"""The BlobStore protocol every storage driver implements.

A BlobStore keeps bytes by digest and nothing else: which repository has which blob,
and where an upload stands, is the database's business. The protocol is shaped by what
object stores can do, so that a filesystem, S3 and Azure Blob are equally natural:

* An upload is a series of parts. Each request that appends to an upload opens a
  writer with the *state* the database recorded after the previous part, writes, and
  closes it; ``close`` returns the new state, which the caller records with the new
  size. Any process can continue an upload from its recorded state; bytes a failed
  request wrote past the recorded state are never part of the blob.
* ``commit_upload`` makes the upload the durable blob without a server-side copy and
  without listing parts (the state names them). A driver that cannot rename (S3,
  Azure) leaves the bytes where the upload put them and returns that *location*; the
  caller records it with the blob and passes it back to every later call. ``None``
  means the blob sits at its digest's own place.
* A route serves a blob the way the driver chooses (``source``): a local file the
  server sends without copying, a short-lived URL for a ``307``, or ``None`` to stream
  ``read``.

All methods are synchronous and thread-safe; the HTTP layer calls them from worker
threads. A driver whose ``local`` is false does network I/O, and callers never call it
inside a database transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


class StorageError(Exception):
    """The store could not do what was asked (missing upload, short data, I/O failure)."""


class UploadLost(StorageError):
    """The store no longer holds an upload's recorded bytes (a commit that crashed before it was
    recorded took them, or they were removed): the session can neither continue nor complete."""


class StorageFull(StorageError):
    """The store has no space (or quota) left for what it was asked to write.

    Whatever the failed call wrote is gone again or unreferenced: an upload's recorded
    state stays valid, and no blob appears. The same call can succeed once space is freed.
    """


@dataclass(frozen=True, slots=True)
class LocalFile:
    """Serve the blob by sending this local file (the route reads it; see ``LocalFileResponse``)."""

    path: Path


@dataclass(frozen=True, slots=True)
class Redirect:
    """Serve the blob with a ``307`` to this short-lived URL (it honours ``Range``)."""

    url: str


#: How a route serves a blob; ``None`` means: stream ``BlobStore.read``.
BlobSource = LocalFile | Redirect | None


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """One blob object as ``list_blobs`` reports it.

    Exactly one of ``digest`` (the object sits at the digest's own place) and
    ``location`` (what ``commit_upload`` returned for it) is set.
    """

    digest: str | None
    location: str | None
    size: int
    modified: float


@dataclass(frozen=True, slots=True)
class BlobPage:
    """A page of ``list_blobs``; ``cursor`` continues it, None at the end."""

    blobs: list[StoredBlob]
    cursor: str | None


@runtime_checkable
class UploadWriter(Protocol):
    """Appends one part's bytes to an upload."""

    def write(self, data: bytes) -> None:
        """Append ``data`` after what was written so far; StorageFull if there is no space."""

    def close(self) -> str:
        """Finish the part: its bytes are in the store, and the returned state names them.

        The upload now holds the recorded size plus everything written; the caller
        records the state with that size. Until it does, the previous state stays valid.
        """

    def abort(self) -> None:
        """Forget everything written through this writer; the previous state stays valid."""


@runtime_checkable
class BlobStore(Protocol):
    """Content-addressed blob storage."""

    #: True when calls are local and cheap (no network round trip to a store).
    local: bool

    # -- blobs --------------------------------------------------------------------------------

    def stat(self, digest: str, *, location: str | None = None) -> int | None:
        """The blob's size, or None if the store does not hold it."""

    def read(
        self, digest: str, offset: int = 0, length: int | None = None, *, location: str | None = None
    ) -> Iterator[bytes]:
        """Yield the blob's bytes from ``offset``, ``length`` bytes or to the end.

        StorageError (raised by the first ``next``) if the blob is missing or ends early.
        """

    def source(
        self, digest: str, *, location: str | None = None, redirect: bool = False, expires: int = 1200
    ) -> BlobSource:
        """How to serve the blob: a local file, a URL valid ``expires`` seconds (only when
        ``redirect`` is asked and the driver can), or None to stream ``read``."""

    def put(self, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest`` durably and atomically (the caller verified it)."""

    def delete(self, digest: str, *, location: str | None = None) -> bool:
        """Remove a blob; True if it existed."""

    def list_blobs(self, cursor: str | None = None, limit: int = 1000) -> BlobPage:
        """One page of the blobs held (committed uploads included), in a stable order."""

    # -- uploads ------------------------------------------------------------------------------

    def open_upload(
        self, upload_id: str, state: str | None, size: int, *, digest: str | None = None
    ) -> UploadWriter:
        """A writer appending after the ``size`` bytes that ``state`` holds.

        ``state`` is None for an upload nothing was written to yet. ``digest``, when the
        final digest is known before the first byte, lets the driver write straight to
        the blob's own place.
        """

    def commit_upload(self, upload_id: str, state: str | None, digest: str, size: int) -> str | None:
        """Make the ``size`` bytes ``state`` holds the durable blob ``digest``; return its location.

        No server-side copy. If the blob already exists the upload is dropped and None
        returned. StorageError if the state holds other than ``size`` bytes; StorageFull
        (the upload kept) if there is no space.
        """

    def abort_upload(self, upload_id: str, state: str | None) -> None:
        """Drop an upload's data; no error if there is none."""

    def expire_uploads(self, older_than: float, is_live: Callable[[str], bool]) -> int:
        """Drop upload data last written before ``older_than`` (epoch seconds) whose id
        ``is_live`` does not claim (abandoned uploads, S3 multipart uploads); return how many."""
