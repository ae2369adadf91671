"""Upload sessions' rows and the small helpers the upload paths share (split from uploads.py)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard import prepared
from dockyard.db import Database, as_utc, per_dialect, utcnow
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.resumable import ResumableHash
from dockyard.registry.models import uploads
from dockyard.registry.services.blobstate import Seen, link_committed, send_new_blob
from dockyard.registry.services.common import BlobInfo
from dockyard.registry.services.locks import LockPolicy

log = logging.getLogger(__name__)

#: Chunks up to this size are read into memory and appended in a single transaction.
SMALL_CHUNK = 1024 * 1024
#: ``uploads.size`` of a closed session (completed or cancelled). The row stays until the
#: id has expired, so the id keeps answering BLOB_UPLOAD_UNKNOWN instead of opening again.
CLOSED = -1
#: How far ahead of this process's clock another node may have issued an upload id.
CLOCK_SKEW = timedelta(minutes=5)
#: The statements every push runs, built once.
OPEN_UPLOAD = per_dialect(
    lambda insert: insert(uploads).on_conflict_do_nothing(index_elements=["id"]).returning(uploads.c.size)
)
CLOSE_UPLOAD = (
    uploads.update()
    .where(uploads.c.id == sa.bindparam("upload"))
    .values(
        size=CLOSED,
        store_state=None,
        hash_state=None,
        lease_token=None,
        lease_until=None,
        updated_at=sa.bindparam("now"),
    )
)
#: ``CLOSE_UPLOAD`` for the request whose lease is ``token``: a cancelled session's row holds none.
CLOSE_LEASED = CLOSE_UPLOAD.where(uploads.c.lease_token == sa.bindparam("token"))
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


def new_upload_id(repository: str, now: float | None = None) -> str:
    """A new session id for ``repository``: a UUIDv7 (RFC 9562) made of the time it was issued
    (ms), 42 random bits and 32 bits that tie it to ``repository`` (``_repository_check``).

    Starting a session writes nothing: its row is created by the first request that writes to
    it (``open_upload``), and the id alone says whether it may still be opened, and where.
    """
    issued = int((time.time() if now is None else now) * 1000)
    raw = bytearray(issued.to_bytes(6, "big") + os.urandom(6))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(raw) + _repository_check(repository, raw)))


def unopened_since(upload_id: str, repository: str, now: datetime, expiry: timedelta) -> datetime | None:
    """When ``upload_id`` was issued, if ``new_upload_id`` gave it for ``repository`` and it has
    not expired; None for any other string (ids of earlier versions need their row)."""
    try:
        parsed = uuid.UUID(upload_id)
    except ValueError:
        return None
    raw = parsed.bytes
    if parsed.version != 7 or str(parsed) != upload_id or raw[12:] != _repository_check(repository, raw[:12]):
        return None
    issued = datetime.fromtimestamp(int.from_bytes(raw[:6], "big") / 1000, UTC)
    if issued <= now - expiry or issued > now + CLOCK_SKEW:
        return None
    return issued


def _repository_check(repository: str, head: bytes | bytearray) -> bytes:
    """Four bytes of a hash of the id's first twelve and the repository's name. Not a secret:
    an id made up to match opens only an empty session, which a POST would give the same caller."""
    return hashlib.blake2b(bytes(head) + repository.encode(), digest_size=4).digest()


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
    #: The row was created by this transaction (the session's first write).
    opened: bool = False


class SessionLost(RegistryError):
    """The session was cancelled (or its lease taken over) while a request wrote to it."""

    def __init__(self, upload_id: str) -> None:
        super().__init__(
            ErrorCode.BLOB_UPLOAD_UNKNOWN,
            f"upload {upload_id[:80]!r} was cancelled, or another request took it over, while this one wrote",
        )


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


def open_upload(
    conn: Connection, repository: str, upload_id: str, now: datetime, expiry: timedelta, size: int = 0
) -> bool:
    """Create the row of a session no request has written to yet, locked for this transaction
    (``size`` CLOSED: created closed). False when the id is not one that may be opened, or its
    row exists (created meanwhile, closed, or another repository's)."""
    opening = send_open_upload(conn, repository, upload_id, now, expiry, size)
    return opening is not None and opening.first() is not None


def send_open_upload(
    conn: Connection, repository: str, upload_id: str, now: datetime, expiry: timedelta, size: int = 0
) -> prepared.Sent | None:
    """``open_upload`` without waiting: None when the id may not be opened, else the sent
    statement, whose one row says the session was opened."""
    issued = unopened_since(upload_id, repository, now, expiry)
    if issued is None:
        return None
    row = {"id": upload_id, "repository": repository, "size": size, "created_at": issued, "updated_at": now}
    return prepared.send(conn, OPEN_UPLOAD[conn.dialect.name], row)


def close_upload(conn: Connection, upload_id: str, now: datetime) -> None:
    """Close a session in this transaction: its row stays, CLOSED, its store and digest state gone."""
    prepared.execute(conn, CLOSE_UPLOAD, {"upload": upload_id, "now": now})


def close_leased(conn: Connection, upload_id: str, token: str, now: datetime) -> None:
    """``close_upload`` by the request holding lease ``token``: BLOB_UPLOAD_UNKNOWN if the session
    was cancelled (or taken over) while it wrote, so the caller's transaction links nothing."""
    if not conn.execute(CLOSE_LEASED, {"upload": upload_id, "token": token, "now": now}).rowcount:
        raise SessionLost(upload_id)


def close_uploads(conn: Connection, upload_ids: Iterable[str], now: datetime) -> None:
    """``close_upload`` for many sessions, in one round trip."""
    batch = [{"upload": upload_id, "now": now} for upload_id in upload_ids]
    if batch:
        prepared.execute_many(conn, CLOSE_UPLOAD, batch)


class GeneralPath(Exception):
    """The one-round-trip close met a case it does not take (a session that has a row, a
    repository to create): roll back what travelled with it and take ``link_in_any_session``."""


@dataclass(frozen=True, slots=True)
class Closing:
    """What ``close_stored``'s transaction needs: the session a closing PUT ends, and its blob."""

    locks: LockPolicy
    repository: str
    upload_id: str
    stored: StoredChunk
    now: datetime
    expiry: timedelta


def link_in_new_session(conn: Connection, closing: Closing) -> tuple[bool, str | None]:
    """``close_stored``'s usual case, a session nothing was written to in an existing repository:
    its row is created closed in the round trip that also locks the repository and records the
    blob. GeneralPath when the session has a row already, or the repository must be created
    first (every link creates the repository before it records the blob: one lock order)."""
    c = closing
    opening = send_open_upload(conn, c.repository, c.upload_id, c.now, c.expiry, size=CLOSED)
    if opening is None:
        return link_in_any_session(conn, closing)
    locking = c.locks.send_writable(conn, c.repository)
    size = len(c.stored.data)
    new_blob = send_new_blob(conn, c.stored.digest, size, None, c.stored.seen)
    if opening.first() is None or locking.first() is None:
        raise GeneralPath(c.upload_id)
    repo_id = c.locks.writable_from(conn, locking, c.repository, c.now).id
    link_committed(conn, repo_id, c.stored.digest, size, None, c.stored.seen, new_blob)
    return True, None


def link_in_any_session(conn: Connection, closing: Closing) -> tuple[bool, str | None]:
    """``close_stored``, one statement after another: (False, None) if the session holds bytes,
    else it is closed and the blob linked; (True, what the store still holds for it)."""
    c = closing
    session = _lock_unleased(conn, c.repository, c.upload_id, c.now, c.expiry)
    if session.size != 0:
        return False, None
    close_upload(conn, c.upload_id, c.now)
    repo_id = c.locks.writable_repository(conn, c.repository, c.now).id
    link_committed(conn, repo_id, c.stored.digest, len(c.stored.data), None, c.stored.seen)
    return True, session.store_state


def _update_leased(db: Database, upload_id: str, token: str, **values: object) -> int:
    """Set ``values`` on the session while ``token`` holds its lease; the rows changed (0 or 1)."""
    held = uploads.update().where(uploads.c.id == upload_id, uploads.c.lease_token == token)
    return db.run_write(lambda conn: conn.execute(held.values(**values)).rowcount, durable=False)


def renew_lease(db: Database, upload_id: str, token: str, lease: timedelta) -> None:
    """Extend the lease ``token`` holds on the session (while a long chunk streams); LeaseLost if
    it is no longer held (the session was cancelled, or another request took it over after the
    lease ran out): the caller must not write another byte."""
    if not _update_leased(db, upload_id, token, lease_until=utcnow() + lease):
        raise LeaseLost("the upload was cancelled, or another request took it over, while this one streamed")


def release_lease(db: Database, upload_id: str, token: str) -> None:
    """End the lease ``token`` holds (logged, not raised, if the database is away: it expires)."""
    try:
        _update_leased(db, upload_id, token, lease_token=None, lease_until=None)
    except sa.exc.SQLAlchemyError:
        log.exception("could not release the lease on upload %s; it expires by itself", upload_id)


def record_chunk(
    db: Database, upload_id: str, token: str, size: int, state: str | None, hash_state: bytes
) -> None:
    """Record a chunk: size, store state and digest state together, ending the lease."""
    recorded = _update_leased(
        db,
        upload_id,
        token,
        size=size,
        store_state=state,
        hash_state=hash_state,
        lease_token=None,
        lease_until=None,
        updated_at=utcnow(),
    )
    if not recorded:
        raise LeaseLost("the upload's lease expired while the chunk was streaming")


class LeaseLost(RegistryError):
    """A chunk arrived whole, but the session was cancelled or taken over meanwhile: not recorded."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BLOB_UPLOAD_INVALID, message)


def is_closed(db: Database, upload_id: str) -> bool:
    """Whether the session has ended (cancelled, completed, expired) or has no row."""
    size = db.run_lookup(
        lambda conn: conn.execute(sa.select(uploads.c.size).where(uploads.c.id == upload_id)).scalar()
    )
    return size is None or size == CLOSED


def _lock_unleased(
    conn: Connection, repository: str, upload_id: str, now: datetime, expiry: timedelta
) -> _Recorded:
    """Lock the upload's row for this transaction (creating it for a session not written to
    yet) and return what it records.

    Refused with a 416 (and ``Retry-After``) while another request's lease on it is live.
    """
    row = prepared.first(conn, LOCK_UPLOAD, {"id": upload_id, "repository": repository})
    if row is None:
        if open_upload(conn, repository, upload_id, now, expiry):
            return _Recorded(0, opened=True)
        row = prepared.first(conn, LOCK_UPLOAD, {"id": upload_id, "repository": repository})
    if row is None or row.size == CLOSED:
        raise _unknown(upload_id)
    if row.lease_token and row.lease_until and as_utc(row.lease_until) > now:
        busy = _out_of_order(row.size, "another request is writing to this upload")
        wait = (as_utc(row.lease_until) - now).total_seconds()
        busy.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        raise busy
    return _Recorded(row.size, row.store_state, row.hash_state)


def check_range(size: int, content_range: tuple[int, int] | None, content_length: int | None) -> int | None:
    """Check a chunk starts where the upload ends; return the chunk's expected length."""
    if content_range is None:
        return content_length
    start, end = content_range
    if start != size:
        raise _out_of_order(size, f"chunk starts at {start} but the upload holds {size} bytes")
    if end < start:
        raise _out_of_order(size, f"chunk range {start}-{end} is empty or reversed")
    length = end - start + 1
    if content_length is not None and content_length != length:
        raise _out_of_order(
            size, f"Content-Range {start}-{end} does not match Content-Length {content_length}"
        )
    return length


def verify_digest(digest: str, algorithm: str, hasher: ResumableHash) -> None:
    """Refuse an upload whose content is not ``digest`` (or was hashed with another algorithm)."""
    if hasher.name != algorithm:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            f"this upload was hashed with {hasher.name} as its chunks arrived; "
            f"push a {algorithm} blob in one request",
        )
    actual = f"{algorithm}:{hasher.hexdigest()}"
    if actual != digest:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            f"upload content has digest {actual}, not {digest}",
            detail={"expected": digest, "actual": actual},
        )


def end_idle_sessions(conn: Connection, now: datetime, expiry: timedelta) -> list[tuple[str, str | None]]:
    """Close the sessions idle past ``expiry`` and unleased, and delete closed rows whose ids can
    no longer open on any node. The (id, store state) of each session closed."""
    cutoff = now - expiry
    # An id opens until its issue time plus the expiry, by the clock of whichever node sees it.
    forgotten = cutoff - CLOCK_SKEW
    stale = conn.execute(
        sa.select(uploads.c.id, uploads.c.store_state).where(
            uploads.c.size != CLOSED,
            uploads.c.updated_at < cutoff,
            sa.or_(uploads.c.lease_until.is_(None), uploads.c.lease_until < now),
        )
    ).all()
    close_uploads(conn, [row.id for row in stale], now)
    # updated_at (indexed, never before created_at) finds them; a row kept a little longer is harmless
    closed_before = (uploads.c.updated_at < forgotten, uploads.c.created_at < forgotten)
    conn.execute(uploads.delete().where(uploads.c.size == CLOSED, *closed_before))
    return [(row.id, row.store_state) for row in stale]


def open_session_ids(conn: Connection) -> set[str]:
    """The ids of every session still open."""
    return set(conn.execute(sa.select(uploads.c.id).where(uploads.c.size != CLOSED)).scalars())
