"""How a request streams into an upload session while it holds the session's lease.

A request that lost the session (another request took it over after the lease ran out, or a
DELETE cancelled it) never writes another byte: the lease is renewed before a write once a third
of it has passed, and again just before the store's commit; the filesystem store also checks
that its file is still the upload's. Otherwise a stalled request could write into, or truncate,
the file another request completed into a blob that every repository holding it shares.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import timedelta

from dockyard.db import Database
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.resumable import ResumableHash
from dockyard.registry.services.upload_sessions import (
    LeaseLost,
    SessionLost,
    _LostDigest,
    _Recorded,
    is_closed,
    renew_lease,
)
from dockyard.storage import BlobStore, UploadLost, UploadWriter

log = logging.getLogger(__name__)


class SessionStreams:
    """Writes a request's bytes into an upload session of ``store`` under its lease."""

    def __init__(self, db: Database, store: BlobStore, lease: timedelta) -> None:
        self._db = db
        self._store = store
        self._lease = lease

    def write(
        self,
        upload_id: str,
        token: str | None,
        recorded: _Recorded,
        hasher: ResumableHash,
        body: Iterable[bytes],
        *,
        expected: int | None,
        digest: str | None = None,
    ) -> tuple[int, str | None]:
        """Stream ``body`` into the upload after the recorded bytes; all of it or nothing.

        The store's writer is opened at the first byte (an empty body touches nothing).
        Returns the new size and store state, which the caller records.
        """
        writer = None
        received = 0
        renew_every = self._lease.total_seconds() / 3
        next_renewal = time.monotonic() + renew_every
        try:
            for chunk in body:
                if not chunk:
                    continue
                received += len(chunk)
                if expected is not None and received > expected:
                    raise RegistryError(
                        ErrorCode.SIZE_INVALID, f"chunk is longer than the declared {expected} bytes"
                    )
                if token is not None and time.monotonic() > next_renewal:
                    # before the write: after a stall as long as the lease, another request may
                    # have taken the session over and completed it (its file is then a blob)
                    renew_lease(self._db, upload_id, token, self._lease)
                    next_renewal = time.monotonic() + renew_every
                if writer is None:
                    writer = self.open(upload_id, recorded, digest)
                try:
                    writer.write(chunk)
                except UploadLost:  # the store's own check: the file is no longer this upload's
                    if is_closed(self._db, upload_id):
                        raise SessionLost(upload_id) from None
                    raise LeaseLost("another request took the upload over while this one streamed") from None
                hasher.update(chunk)
            if expected is not None and received != expected:
                raise RegistryError(
                    ErrorCode.SIZE_INVALID, f"received {received} bytes but {expected} were declared"
                )
            state = writer.close() if writer is not None else recorded.store_state
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        return recorded.size + received, state

    def hold_before_commit(self, upload_id: str, token: str, state: str | None) -> None:
        """Renew the lease just before the store's commit: a session cancelled meanwhile commits
        nothing (SessionLost; what this request wrote is dropped), nor one another request took
        over (LeaseLost; the upload is that request's now)."""
        try:
            renew_lease(self._db, upload_id, token, self._lease)
        except LeaseLost:
            if self.drop_if_ended(upload_id, state):
                raise SessionLost(upload_id) from None
            raise

    def drop_if_ended(self, upload_id: str, state: str | None) -> bool:
        """After LeaseLost: if the session ended (cancelled), drop what this request wrote; False
        if another request took it over (the upload is that request's now)."""
        if not is_closed(self._db, upload_id):
            return False
        self._store.abort_upload(upload_id, state)
        return True

    def open(self, upload_id: str, recorded: _Recorded, digest: str | None = None) -> UploadWriter:
        """The store's writer after the recorded bytes; _LostDigest when the store lost them.

        That happens after a crash between the store's commit and its record (the bytes moved
        to the blob's place): the session is dropped, never completed from what the store has.
        """
        try:
            return self._store.open_upload(upload_id, recorded.store_state, recorded.size, digest=digest)
        except UploadLost:
            log.warning("upload %s lost its recorded bytes in the store; dropping it", upload_id)
            raise _LostDigest(upload_id, recorded.store_state) from None
