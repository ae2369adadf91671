"""Uploaded build contexts: streamed into the blob store (a ``blobs`` row, no repository), kept until
they expire; garbage collection keeps them meanwhile through the lifecycle room's ``kept_blobs``."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.builds.models import build_sources
from dockyard.db import Database, utcnow
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.models import blobs
from dockyard.registry.services.blobstate import DELETING, GONE, LIVE, BlobBusy, seen_before_commit
from dockyard.storage import BlobStore


@dataclass(frozen=True)
class StoredSource:
    digest: str
    size: int


class SourceService:
    """Stores uploaded contexts and streams them back to runs."""

    def __init__(self, db: Database, store: BlobStore, max_bytes: int, retention_hours: int) -> None:
        self._db = db
        self._store = store
        self._max = max_bytes
        self._retention = timedelta(hours=retention_hours)

    def upload(self, body: Iterable[bytes], content_length: int | None = None) -> StoredSource:
        """Stream ``body`` to the store (413 past ``builds_source_max_bytes``: nothing kept); record it."""
        too_large = RegistryError(
            ErrorCode.SIZE_INVALID, f"a build context is at most {self._max} bytes", status=413
        )
        if content_length is not None and content_length > self._max:
            raise too_large
        upload_id = f"source-{uuid.uuid4()}"
        hasher = hashlib.sha256()
        size = 0
        state = None
        writer = self._store.open_upload(upload_id, None, 0)
        try:
            try:
                for chunk in body:
                    size += len(chunk)
                    if size > self._max:
                        raise too_large
                    hasher.update(chunk)
                    writer.write(chunk)
            except BaseException:
                writer.abort()
                raise
            state = writer.close()
            digest = f"sha256:{hasher.hexdigest()}"
            seen = seen_before_commit(self._db, digest)
            location = self._store.commit_upload(upload_id, state, digest, size)
        except BaseException:
            self._store.abort_upload(upload_id, state)
            raise
        now = utcnow()

        def work(conn: Connection) -> bool:
            row = conn.execute(sa.select(blobs).where(blobs.c.digest == digest).with_for_update()).first()
            surplus = False
            if row is None:
                conn.execute(
                    blobs.insert().values(digest=digest, size=size, created_at=now, location=location)
                )
            elif row.state == DELETING or row.generation != seen.generation:
                raise BlobBusy(digest)
            elif row.state == GONE:
                conn.execute(
                    blobs.update()
                    .where(blobs.c.digest == digest)
                    .values(state=LIVE, size=size, location=location, created_at=now, state_at=now)
                )
            else:
                surplus = location is not None and row.location != location
            values = {"size": size, "created_at": now, "expires_at": now + self._retention}
            updated = conn.execute(
                build_sources.update().where(build_sources.c.digest == digest).values(**values)
            ).rowcount
            if not updated:
                conn.execute(build_sources.insert().values(digest=digest, location=None, **values))
            return surplus

        if self._db.run_write(work) and location is not None:
            self._store.delete(digest, location=location)
        return StoredSource(digest, size)

    def exists(self, conn: Connection, digest: str) -> bool:
        """Whether ``digest`` is an unexpired uploaded source."""
        return (
            conn.execute(
                sa.select(build_sources.c.digest).where(
                    build_sources.c.digest == digest, build_sources.c.expires_at > utcnow()
                )
            ).first()
            is not None
        )

    def read(self, digest: str) -> Iterator[bytes]:
        """An uploaded source's bytes (the ``read_source`` of ``prepare_context``)."""
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(blobs.c.location)
                .select_from(build_sources.join(blobs, blobs.c.digest == build_sources.c.digest))
                .where(build_sources.c.digest == digest, blobs.c.state == LIVE)
            ).first()
        if row is None:
            raise FileNotFoundError(f"the uploaded context {digest} is gone (expired?)")
        return self._store.read(digest, location=row.location)

    def kept_blobs(self) -> sa.Select:
        """Blobs garbage collection keeps: every recorded source (expired ones are pruned first)."""
        return sa.select(build_sources.c.digest)

    def prune(self) -> int:
        """Forget expired sources (their blobs then fall to garbage collection)."""
        return self._db.run_write(
            lambda conn: (
                conn.execute(build_sources.delete().where(build_sources.c.expires_at <= utcnow())).rowcount
            )
        )
