"""Upload sessions' rows and the small helpers the upload paths share (split from uploads.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard import prepared
from dockyard.db import as_utc
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.models import uploads
from dockyard.registry.services.blobstate import Seen
from dockyard.registry.services.common import BlobInfo

#: Chunks up to this size are read into memory and appended in a single transaction.
SMALL_CHUNK = 1024 * 1024
#: The statements every push runs, built once.
INSERT_UPLOAD = uploads.insert()
LOCK_UPLOAD = (
    sa.select(
        uploads.c.size,
        uploads.c.store_state,
        uploads.c.hash_state,
        uploads.c.lease_token,
        uploads.c.lease_until,
    )
    .where(uploads.c.id == sa.bindparam("id"), uploads.c.repository == sa.bindparam("repository"))
    .with_for_update()
)
DELETE_UPLOAD = uploads.delete().where(uploads.c.id == sa.bindparam("id"))


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A closing PUT's whole blob, stored under its digest before the session is closed."""

    digest: str
    data: bytes
    seen: Seen


@dataclass(frozen=True, slots=True)
class ClosedSession:
    """A session closed on its stored blob; ``leftover`` is the store state a remote store still
    holds for it (``UploadService.discard`` it in a worker thread), None when nothing is left."""

    blob: BlobInfo
    leftover: str | None


@dataclass(frozen=True, slots=True)
class _Recorded:
    """What the session row records: the size, the store's state for it, the digest's state."""

    size: int
    store_state: str | None = None
    hash_state: bytes | None = None


class _LostDigest(RegistryError):
    """The session holds bytes whose running digest cannot be resumed (a session from before
    hash states were recorded, or a corrupt state): it is dropped and the client starts over."""

    def __init__(self, upload_id: str, store_state: str | None) -> None:
        super().__init__(
            ErrorCode.BLOB_UPLOAD_UNKNOWN,
            f"upload {upload_id[:80]!r} cannot be resumed; start the upload again",
        )
        self.store_state = store_state


def _read_exactly(body: Iterable[bytes], length: int) -> bytes:
    """The whole body, which must be exactly ``length`` bytes (else SIZE_INVALID)."""
    data = bytearray()
    for chunk in body:
        data += chunk
        if len(data) > length:
            raise RegistryError(ErrorCode.SIZE_INVALID, f"chunk is longer than the declared {length} bytes")
    if len(data) != length:
        raise RegistryError(ErrorCode.SIZE_INVALID, f"received {len(data)} bytes but {length} were declared")
    return bytes(data)


def range_header(size: int) -> str:
    """The ``Range`` header value for an upload holding ``size`` bytes (Distribution's convention)."""
    return f"0-{max(size - 1, 0)}"


def _unknown(upload_id: str) -> RegistryError:
    return RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id[:80]!r} not known to registry")


def _out_of_order(size: int, why: str) -> RegistryError:
    return RegistryError(
        ErrorCode.BLOB_UPLOAD_INVALID, why, status=416, headers={"Range": range_header(size)}
    )


def _lock_unleased(conn: Connection, repository: str, upload_id: str, now: datetime) -> _Recorded:
    """Lock the upload's row for this transaction and return what it records.

    Refused with a 416 (and ``Retry-After``) while another request's lease on it is live.
    """
    row = prepared.first(conn, LOCK_UPLOAD, {"id": upload_id, "repository": repository})
    if row is None:
        raise _unknown(upload_id)
    if row.lease_token and row.lease_until and as_utc(row.lease_until) > now:
        busy = _out_of_order(row.size, "another request is writing to this upload")
        wait = (as_utc(row.lease_until) - now).total_seconds()
        busy.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        raise busy
    return _Recorded(row.size, row.store_state, row.hash_state)
