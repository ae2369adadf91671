"""Blobs as repositories see them: lookup, cross-repository mount, delete."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.changes import ContentCache
from dockyard.db import Database
from dockyard.oci.digest import compute_digest, parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.models import blobs, manifest_blobs, manifests, repositories, repository_blobs
from dockyard.registry.services.blobstate import LIVE
from dockyard.registry.services.common import BlobInfo, link_blob, require_repository
from dockyard.registry.services.digests import RecentBlobs
from dockyard.registry.services.locks import LockPolicy, denied
from dockyard.storage import BlobSource, BlobStore, Redirect, StorageError

log = logging.getLogger(__name__)

#: The hot lookup, built once: a blob's size and location if the repository has it.
BLOB_SIZE = (
    sa.select(blobs.c.size, blobs.c.location, repositories.c.read_enabled)
    .select_from(repository_blobs.join(repositories).join(blobs))
    .where(
        repositories.c.name == sa.bindparam("repository"),
        repository_blobs.c.digest == sa.bindparam("digest"),
        # a blob garbage collection is deleting exists no more (inline: lookup_row binds by name)
        blobs.c.state == sa.literal_column(f"'{LIVE}'"),
    )
)
#: The same, locking the link and blob rows against garbage collection until a mount commits.
BLOB_SIZE_SHARED = BLOB_SIZE.with_for_update(read=True, of=[repository_blobs, blobs])


#: How long a presigned redirect is handed out again: a quarter of the 20 minutes a store signs
#: it for, so every client gets at least 15 minutes of it. Signing costs ~0.7 ms of CPU.
REDIRECT_REUSE_SECONDS = 300.0
#: At most this many redirects are kept (least recently used first out).
REDIRECTS_KEPT = 10_000


class RecentRedirects:
    """Presigned store URLs by blob (digest, location), each reused for ``reuse_seconds``.

    A URL grants reading one immutable object and nothing else; whether the caller may pull
    the blob, and whether its repository still holds it, is asked on every request before.
    """

    def __init__(
        self,
        reuse_seconds: float = REDIRECT_REUSE_SECONDS,
        size: int = REDIRECTS_KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reuse_seconds = reuse_seconds
        self.size = size
        self._clock = clock
        self._kept: OrderedDict[tuple[str, str | None], tuple[float, Redirect]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str, location: str | None) -> Redirect | None:
        """The URL made for this blob less than ``reuse_seconds`` ago, if any."""
        key = (digest, location)
        with self._lock:
            held = self._kept.get(key)
            if held is None:
                return None
            if self._clock() - held[0] >= self.reuse_seconds:
                del self._kept[key]
                return None
            self._kept.move_to_end(key)
            return held[1]

    def keep(self, digest: str, location: str | None, redirect: Redirect) -> None:
        """Remember a URL just made."""
        with self._lock:
            self._kept[(digest, location)] = (self._clock(), redirect)
            self._kept.move_to_end((digest, location))
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)


def _blob_unknown(digest: str) -> RegistryError:
    return RegistryError(
        ErrorCode.BLOB_UNKNOWN, f"blob {digest} unknown to repository", detail={"digest": digest}
    )


class BlobService:
    """Read, mount and delete blobs within repositories."""

    def __init__(
        self,
        db: Database,
        store: BlobStore,
        cache: ContentCache | None = None,
        *,
        redirect: bool = False,
        locks: LockPolicy | None = None,
        recent: RecentBlobs | None = None,
    ) -> None:
        self._db = db
        self._recent = recent
        self._locks = locks or LockPolicy()
        self._store = store
        self._cache = cache if cache is not None else ContentCache(0)
        self._redirect = redirect
        self._redirects = RecentRedirects()
        #: Whether ``stat`` may run on the event loop (one cheap local lookup, SQLite only).
        self.reads_inline = db.is_sqlite

    def cached(self, repository: str, digest: str) -> BlobInfo | None:
        """The blob from this process's cache, if it is there (no I/O)."""
        row = self._cache.get(repository, ("b", digest))
        return None if row is None else BlobInfo(digest, row[0], row[1])

    @staticmethod
    def _lookup(conn: Connection, repository: str, digest: str) -> int | None:
        return conn.execute(BLOB_SIZE, {"repository": repository, "digest": digest}).scalar()

    def stat(self, repository: str, digest: str) -> BlobInfo:
        """The blob if ``repository`` has it, else BLOB_UNKNOWN."""
        parse_digest(digest)
        generation = self._cache.generation()
        row = self._db.lookup_row(BLOB_SIZE, {"repository": repository, "digest": digest})
        if row is None:
            raise _blob_unknown(digest)
        if not row[2]:
            raise denied(f"repository {repository!r}", "readEnabled", "pulling from it")
        self._cache.put(repository, ("b", digest), tuple(row), generation)
        return BlobInfo(digest, row[0], row[1])

    def read(
        self, digest: str, offset: int = 0, length: int | None = None, *, location: str | None = None
    ) -> Iterator[bytes]:
        """The bytes of a blob ``stat`` found (at the ``location`` it reported), from ``offset``."""
        return self._store.read(digest, offset, length, location=location)

    def open(self, blob: BlobInfo, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The bytes of a blob ``stat`` found, its first chunk already read (call it in a thread).

        A blob the database records but the store no longer holds is BLOB_UNKNOWN here,
        before an answer has started; other store failures stay StorageErrors.
        """
        chunks = self._store.read(blob.digest, offset, length, location=blob.location)
        try:
            first = next(chunks, None)
        except StorageError:
            if self._store.stat(blob.digest, location=blob.location) is not None:
                raise
            log.error("blob %s is recorded but missing from storage", blob.digest)
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, "blob data is missing from storage") from None
        return chunks if first is None else itertools.chain([first], chunks)

    def kept_in_memory(self, blob: BlobInfo) -> bool:
        """Whether a streamed read of ``blob`` goes through the small-blob memory (``RecentBlobs``)."""
        return self._recent is not None and blob.size <= self._recent.max_bytes

    def remembered(self, blob: BlobInfo) -> bytes | None:
        """A small blob's bytes from this process's memory (no I/O), or None."""
        return None if self._recent is None else self._recent.get(blob.digest)

    def read_small(self, blob: BlobInfo) -> bytes:
        """A small blob's bytes read whole from the store (call it in a thread) and kept in memory.

        StorageError, before any answer starts, if the store's bytes are not the blob's (a damaged
        copy): they are never kept, and never served under a digest they do not have.
        """
        data = b"".join(self.open(blob, 0, blob.size))  # never more than the database says
        if len(data) != blob.size or compute_digest(data, parse_digest(blob.digest)[0]) != blob.digest:
            log.error("blob %s in storage does not match its digest", blob.digest)
            raise StorageError(f"blob {blob.digest} in storage does not match its digest")
        if self._recent is not None:
            self._recent.keep(blob.digest, data)
        return data

    def source(self, blob: BlobInfo) -> BlobSource:
        """How to serve a blob ``stat`` found: a local file, a redirect (if enabled) or None to stream."""
        if self._redirect and (recent := self._redirects.get(blob.digest, blob.location)) is not None:
            return recent
        source = self._store.source(blob.digest, location=blob.location, redirect=self._redirect)
        if isinstance(source, Redirect):
            self._redirects.keep(blob.digest, blob.location, source)
        return source

    def recent_source(self, blob: BlobInfo) -> Redirect | None:
        """A redirect for the blob made moments ago (no I/O, no signing), if redirects are on."""
        return self._redirects.get(blob.digest, blob.location) if self._redirect else None

    @property
    def local(self) -> bool:
        """True when the store answers without network I/O (safe to call on the event loop)."""
        return self._store.local

    def mount(
        self, repository: str, digest: str, source: str | None, can_read: Callable[[str], bool]
    ) -> BlobInfo | None:
        """Link a blob another repository has into ``repository``; None if it cannot be mounted.

        Without ``source`` (automatic mount) any repository the caller may read is a source.
        """
        parse_digest(digest)

        def work(conn: Connection) -> BlobInfo | None:
            existing = self._lookup(conn, repository, digest)
            if existing is not None:
                return BlobInfo(digest, existing)
            candidates = [source] if source else self._holders(conn, digest)
            for candidate in candidates:
                if candidate == repository or not can_read(candidate):
                    continue
                found = conn.execute(BLOB_SIZE_SHARED, {"repository": candidate, "digest": digest}).first()
                if found is not None and found.read_enabled:  # a read-locked repository is no source
                    size = found.size
                    repo_id = self._locks.writable_repository(conn, repository).id
                    link_blob(conn, repo_id, digest, size)
                    return BlobInfo(digest, size)
            return None

        return self._db.run_write(work)

    @staticmethod
    def _holders(conn: Connection, digest: str, limit: int = 50) -> list[str]:
        return list(
            conn.execute(
                sa.select(repositories.c.name)
                .select_from(repository_blobs.join(repositories))
                .where(repository_blobs.c.digest == digest)
                .order_by(repositories.c.name)
                .limit(limit)
            ).scalars()
        )

    def delete(self, repository: str, digest: str) -> None:
        """Unlink a blob from ``repository``; refused while a manifest there still needs it.

        The bytes stay in the store until garbage collection finds no repository using them.
        """
        parse_digest(digest)

        def work(conn: Connection) -> None:
            repo_id = require_repository(conn, repository)
            self._locks.check_blob_delete(conn, repo_id, digest)
            in_use = conn.execute(
                sa.select(manifests.c.digest)
                .select_from(manifest_blobs.join(manifests))
                .where(manifests.c.repository_id == repo_id, manifest_blobs.c.digest == digest)
                .limit(1)
            ).scalar()
            if in_use is not None:
                raise RegistryError(
                    ErrorCode.DENIED,
                    f"blob {digest} is referenced by manifest {in_use}; delete the manifest first",
                    status=409,
                    detail={"digest": digest, "manifest": in_use},
                )
            deleted = conn.execute(
                repository_blobs.delete().where(
                    repository_blobs.c.repository_id == repo_id, repository_blobs.c.digest == digest
                )
            ).rowcount
            if not deleted:
                raise _blob_unknown(digest)

        self._db.run_write(work)
        self._cache.invalidate_content(repository)
