"""Blob uploads: sessions in the database, bytes in the BlobStore, digests verified before commit.

Invariants that keep a failed or interrupted push from damaging anything:

* The first ``uploads.size`` bytes of an upload never change once recorded; a chunk
  is appended after them and recorded only when it arrived complete.
* One request at a time writes to a session: it holds a lease row-lock in the database
  (renewed while it streams), so any process can continue any upload.
* A blob becomes visible only after its bytes are durable in the store under a verified
  digest, in the same transaction that ends the session.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.db import Database, as_utc, utcnow
from dockyard.oci.digest import Hasher, new_hasher, parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.models import uploads
from dockyard.registry.services.common import BlobInfo, UploadState, ensure_repository, link_blob
from dockyard.storage import BlobStore

log = logging.getLogger(__name__)


#: Chunks up to this size are read into memory and appended in a single transaction.
SMALL_CHUNK = 1024 * 1024
#: The statements every push runs, built once.
INSERT_UPLOAD = uploads.insert()
LOCK_UPLOAD = (
    sa.select(uploads.c.size, uploads.c.lease_token, uploads.c.lease_until)
    .where(uploads.c.id == sa.bindparam("id"), uploads.c.repository == sa.bindparam("repository"))
    .with_for_update()
)
DELETE_UPLOAD = uploads.delete().where(uploads.c.id == sa.bindparam("id"))


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


def _lock_unleased(conn: Connection, repository: str, upload_id: str, now: datetime) -> int:
    """Lock the upload's row for this transaction and return its size.

    Refused with a 416 (and ``Retry-After``) while another request's lease on it is live.
    """
    row = conn.execute(LOCK_UPLOAD, {"id": upload_id, "repository": repository}).first()
    if row is None:
        raise _unknown(upload_id)
    if row.lease_token and row.lease_until and as_utc(row.lease_until) > now:
        busy = _out_of_order(row.size, "another request is writing to this upload")
        wait = (as_utc(row.lease_until) - now).total_seconds()
        busy.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        raise busy
    return row.size


class UploadService:
    """Starts, appends to, completes and cancels blob uploads."""

    def __init__(
        self,
        db: Database,
        store: BlobStore,
        *,
        lease_seconds: int = 60,
        expiry_seconds: int = 24 * 3600,
        hasher_cache_size: int = 512,
    ) -> None:
        self._db = db
        self._store = store
        self._lease = timedelta(seconds=lease_seconds)
        self._expiry = timedelta(seconds=expiry_seconds)
        self._hasher_cache_size = hasher_cache_size
        self._hashers: OrderedDict[str, tuple[int, Hasher]] = OrderedDict()
        self._hashers_lock = threading.Lock()

    # -- sessions ---------------------------------------------------------------------------

    def start(self, repository: str) -> UploadState:
        """Open an upload session for ``repository``."""
        upload_id = str(uuid.uuid4())
        now = utcnow()

        def work(conn: Connection) -> None:
            conn.execute(
                INSERT_UPLOAD,
                {"id": upload_id, "repository": repository, "size": 0, "created_at": now, "updated_at": now},
            )

        self._db.run_write(work, durable=False)
        return UploadState(upload_id, repository, 0)

    def status(self, repository: str, upload_id: str) -> UploadState:
        """Where the session stands, or BLOB_UPLOAD_UNKNOWN."""
        with self._db.read() as conn:
            size = conn.execute(
                sa.select(uploads.c.size).where(uploads.c.id == upload_id, uploads.c.repository == repository)
            ).scalar()
        if size is None:
            raise _unknown(upload_id)
        return UploadState(upload_id, repository, size)

    def cancel(self, repository: str, upload_id: str) -> None:
        """Cancel a session and drop its data."""

        def work(conn: Connection) -> int:
            return conn.execute(
                uploads.delete().where(uploads.c.id == upload_id, uploads.c.repository == repository)
            ).rowcount

        if not self._db.run_write(work, durable=False):
            raise _unknown(upload_id)
        self._forget_hasher(upload_id)
        self._store.delete_upload(upload_id)

    # -- writing ----------------------------------------------------------------------------

    def append(
        self,
        repository: str,
        upload_id: str,
        body: Iterable[bytes],
        *,
        content_range: tuple[int, int] | None = None,
        content_length: int | None = None,
    ) -> UploadState:
        """Append one chunk (a PATCH). The chunk is recorded only if it arrived whole."""
        if content_length is not None and content_length <= SMALL_CHUNK:
            return self._append_small(
                repository, upload_id, _read_exactly(body, content_length), content_range
            )
        token, size = self._acquire(repository, upload_id)
        try:
            expected = self._check_range(size, content_range, content_length)
            hasher = self._take_hasher(upload_id, size)
            new_size = self._write(upload_id, token, size, hasher, body, expected=expected)
            self._record(upload_id, token, new_size)
        except BaseException:
            self._release(upload_id, token)
            raise
        if hasher is not None:
            self._keep_hasher(upload_id, new_size, hasher)
        return UploadState(upload_id, repository, new_size)

    def _append_small(
        self, repository: str, upload_id: str, data: bytes, content_range: tuple[int, int] | None
    ) -> UploadState:
        """A chunk already in memory: check, write and record it in one transaction, without a lease.

        The transaction's row lock orders it against other writers; a request holding a lease
        (streaming a large chunk) makes it wait its turn with a 416, as a lease would.
        """
        now = utcnow()

        def work(conn: Connection) -> tuple[int, Hasher | None]:
            size = _lock_unleased(conn, repository, upload_id, now)
            self._check_range(size, content_range, len(data))
            hasher = self._take_hasher(upload_id, size)
            writer = self._store.open_upload(upload_id, size)
            try:
                writer.write(data)
                new_size = writer.close()
            except BaseException:
                writer.abort()
                raise
            conn.execute(
                uploads.update().where(uploads.c.id == upload_id).values(size=new_size, updated_at=now)
            )
            return new_size, hasher

        new_size, hasher = self._db.run_write(work, durable=False)
        if hasher is not None:
            hasher.update(data)
            self._keep_hasher(upload_id, new_size, hasher)
        return UploadState(upload_id, repository, new_size)

    def complete(
        self,
        repository: str,
        upload_id: str,
        digest: str,
        body: Iterable[bytes],
        *,
        content_range: tuple[int, int] | None = None,
        content_length: int | None = None,
    ) -> BlobInfo:
        """Finish a session (the closing PUT), with an optional last chunk, and verify ``digest``."""
        algorithm, _ = parse_digest(digest)
        small = content_length is not None and 0 < content_length <= SMALL_CHUNK
        if small and (content_range is None or content_range[0] == 0):
            assert content_length is not None
            data = _read_exactly(body, content_length)
            done = self._complete_in_one(repository, upload_id, digest, algorithm, data, content_range)
            if done is not None:
                return done
            body = iter((data,))
        token, size = self._acquire(repository, upload_id)
        try:
            expected = self._check_range(size, content_range, content_length)
            hasher = self._take_hasher(upload_id, size)
            size = self._write(upload_id, token, size, hasher, body, expected=expected)
        except BaseException:
            self._release(upload_id, token)
            raise
        try:
            self._verify(upload_id, size, digest, algorithm, hasher)
            self._store.commit_upload(upload_id, digest, size)
        except RegistryError:
            self._drop_session(upload_id)
            raise
        except BaseException:
            self._release(upload_id, token)
            raise

        def work(conn: Connection) -> None:
            repo_id = ensure_repository(conn, repository)
            link_blob(conn, repo_id, digest, size)
            conn.execute(DELETE_UPLOAD, {"id": upload_id})

        self._db.run_write(work)
        return BlobInfo(digest, size)

    def _complete_in_one(
        self,
        repository: str,
        upload_id: str,
        digest: str,
        algorithm: str,
        data: bytes,
        content_range: tuple[int, int] | None,
    ) -> BlobInfo | None:
        """The usual monolithic push (POST, then a PUT carrying the whole blob) in one transaction.

        When ``data`` alone has ``digest``, it is stored as a blob first (durable, content
        addressed, visible to no one yet); one transaction then checks that the session is
        still empty and unleased, links the blob and ends the session. None when the session
        holds bytes already or ``data`` alone has another digest: the caller takes the
        general path, which appends to the session and verifies the whole.
        """
        self._check_range(0, content_range, len(data))
        hasher = new_hasher(algorithm)
        hasher.update(data)
        if f"{algorithm}:{hasher.hexdigest()}" != digest:
            return None
        self._store.put(digest, data)
        now = utcnow()

        def work(conn: Connection) -> bool:
            if _lock_unleased(conn, repository, upload_id, now) != 0:
                return False
            repo_id = ensure_repository(conn, repository, now)
            link_blob(conn, repo_id, digest, len(data))
            conn.execute(DELETE_UPLOAD, {"id": upload_id})
            return True

        if not self._db.run_write(work):
            return None  # the blob stored above is unlinked data, as after any failed push
        self._forget_hasher(upload_id)
        self._store.delete_upload(upload_id)
        return BlobInfo(digest, len(data))

    def upload_whole(
        self, repository: str, digest: str, body: Iterable[bytes], *, content_length: int | None = None
    ) -> BlobInfo:
        """A single-request monolithic upload (POST ?digest=): no session row is needed."""
        algorithm, _ = parse_digest(digest)
        upload_id = f"whole-{uuid.uuid4()}"
        hasher = new_hasher(algorithm)
        try:
            size = self._write(upload_id, None, 0, hasher, body, expected=content_length)
            self._verify(upload_id, size, digest, algorithm, hasher)
            self._store.commit_upload(upload_id, digest, size)
        except BaseException:
            self._store.delete_upload(upload_id)
            raise

        def work(conn: Connection) -> None:
            repo_id = ensure_repository(conn, repository)
            link_blob(conn, repo_id, digest, size)

        self._db.run_write(work)
        return BlobInfo(digest, size)

    # -- housekeeping -----------------------------------------------------------------------

    def expire(self, now: datetime | None = None) -> int:
        """Cancel sessions idle past the expiry and drop store uploads no session owns."""
        now = now or utcnow()
        cutoff = now - self._expiry

        def work(conn: Connection) -> list[str]:
            stale = (
                conn.execute(
                    sa.select(uploads.c.id).where(
                        uploads.c.updated_at < cutoff,
                        sa.or_(uploads.c.lease_until.is_(None), uploads.c.lease_until < now),
                    )
                )
                .scalars()
                .all()
            )
            if stale:
                conn.execute(uploads.delete().where(uploads.c.id.in_(stale)))
            return list(stale)

        stale = self._db.run_write(work, durable=False)
        for upload_id in stale:
            self._forget_hasher(upload_id)
            self._store.delete_upload(upload_id)
        with self._db.read() as conn:
            live = set(conn.execute(sa.select(uploads.c.id)).scalars())
        orphans = 0
        for upload_id, modified in self._store.list_uploads():
            if upload_id not in live and modified < cutoff.timestamp():
                self._store.delete_upload(upload_id)
                orphans += 1
        return len(stale) + orphans

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _check_range(
        size: int, content_range: tuple[int, int] | None, content_length: int | None
    ) -> int | None:
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

    def _acquire(self, repository: str, upload_id: str) -> tuple[str, int]:
        token = uuid.uuid4().hex
        now = utcnow()

        def work(conn: Connection) -> int:
            size = _lock_unleased(conn, repository, upload_id, now)
            conn.execute(
                uploads.update()
                .where(uploads.c.id == upload_id)
                .values(lease_token=token, lease_until=now + self._lease)
            )
            return size

        return token, self._db.run_write(work, durable=False)

    def _renew(self, upload_id: str, token: str) -> None:
        def work(conn: Connection) -> None:
            conn.execute(
                uploads.update()
                .where(uploads.c.id == upload_id, uploads.c.lease_token == token)
                .values(lease_until=utcnow() + self._lease)
            )

        self._db.run_write(work, durable=False)

    def _release(self, upload_id: str, token: str) -> None:
        self._forget_hasher(upload_id)

        def work(conn: Connection) -> None:
            conn.execute(
                uploads.update()
                .where(uploads.c.id == upload_id, uploads.c.lease_token == token)
                .values(lease_token=None, lease_until=None)
            )

        try:
            self._db.run_write(work, durable=False)
        except sa.exc.SQLAlchemyError:
            log.exception("could not release the lease on upload %s; it expires by itself", upload_id)

    def _record(self, upload_id: str, token: str, size: int) -> None:
        def work(conn: Connection) -> int:
            return conn.execute(
                uploads.update()
                .where(uploads.c.id == upload_id, uploads.c.lease_token == token)
                .values(size=size, lease_token=None, lease_until=None, updated_at=utcnow())
            ).rowcount

        if not self._db.run_write(work, durable=False):
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_INVALID, "the upload's lease expired while the chunk was streaming"
            )

    def _drop_session(self, upload_id: str) -> None:
        def work(conn: Connection) -> None:
            conn.execute(DELETE_UPLOAD, {"id": upload_id})

        self._db.run_write(work, durable=False)
        self._forget_hasher(upload_id)
        self._store.delete_upload(upload_id)

    def _write(
        self,
        upload_id: str,
        token: str | None,
        offset: int,
        hasher: Hasher | None,
        body: Iterable[bytes],
        *,
        expected: int | None,
    ) -> int:
        """Stream ``body`` into the upload after ``offset``; all of it or nothing."""
        writer = self._store.open_upload(upload_id, offset)
        received = 0
        renew_every = self._lease.total_seconds() / 3
        next_renewal = time.monotonic() + renew_every
        try:
            for chunk in body:
                received += len(chunk)
                if expected is not None and received > expected:
                    raise RegistryError(
                        ErrorCode.SIZE_INVALID, f"chunk is longer than the declared {expected} bytes"
                    )
                writer.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                if token is not None and time.monotonic() > next_renewal:
                    self._renew(upload_id, token)
                    next_renewal = time.monotonic() + renew_every
            if expected is not None and received != expected:
                raise RegistryError(
                    ErrorCode.SIZE_INVALID, f"received {received} bytes but {expected} were declared"
                )
            return writer.close()
        except BaseException:
            writer.abort()
            raise

    def _verify(self, upload_id: str, size: int, digest: str, algorithm: str, hasher: Hasher | None) -> None:
        if hasher is None or algorithm != "sha256":
            hasher = new_hasher(algorithm)
            for chunk in self._store.read_upload(upload_id, size):
                hasher.update(chunk)
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != digest:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"upload content has digest {actual}, not {digest}",
                detail={"expected": digest, "actual": actual},
            )

    def _take_hasher(self, upload_id: str, size: int) -> Hasher | None:
        """This process's running hash of the upload if it covers exactly ``size`` bytes."""
        with self._hashers_lock:
            cached = self._hashers.pop(upload_id, None)
        if cached is not None and cached[0] == size:
            return cached[1]
        return new_hasher() if size == 0 else None

    def _keep_hasher(self, upload_id: str, size: int, hasher: Hasher) -> None:
        with self._hashers_lock:
            self._hashers[upload_id] = (size, hasher)
            while len(self._hashers) > self._hasher_cache_size:
                self._hashers.popitem(last=False)

    def _forget_hasher(self, upload_id: str) -> None:
        with self._hashers_lock:
            self._hashers.pop(upload_id, None)
