"""Blob uploads: sessions in the database, bytes in the BlobStore, digests verified before commit.

Invariants that keep a failed or interrupted push from damaging anything:

* The first ``uploads.size`` bytes of an upload never change once recorded; a chunk
  is appended after them and recorded only when it arrived whole, together with the
  store's state for those bytes and the running digest's state (``hash_state``), so any
  process continues the upload and its digest without reading the bytes back.
* One request at a time writes to a session: it holds a lease row-lock in the database
  (renewed while it streams), so any process can continue any upload.
* No network I/O to the store inside a database transaction: only a ``local`` store is
  written inside the one-transaction small-chunk path.
* A blob becomes visible only after its bytes are durable in the store under a verified
  digest, in the same transaction that ends the session.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.changes import SETTINGS, ContentCache
from dockyard.db import Database, utcnow
from dockyard.oci.digest import new_hasher, parse_digest
from dockyard.oci.errors import RegistryError
from dockyard.oci.resumable import HashStateError, ResumableHash
from dockyard.registry.models import uploads
from dockyard.registry.services.blobstate import (
    LIVE,
    BlobBusy,
    NotNew,
    Seen,
    assume_new,
    link_committed,
    seen_before_commit,
)
from dockyard.registry.services.common import BlobInfo, BlobQuota, UploadState
from dockyard.registry.services.digests import HasherCache, RecentBlobs
from dockyard.registry.services.locks import LockPolicy
from dockyard.registry.services.upload_sessions import (
    CLOSED,
    SMALL_CHUNK,
    ClosedSession,
    Closing,
    GeneralPath,
    LeaseLost,
    SessionLost,
    StoredChunk,
    _lock_unleased,
    _LostDigest,
    _read_exactly,
    _Recorded,
    _unknown,
    check_range,
    close_leased,
    close_upload,
    end_idle_sessions,
    link_in_any_session,
    link_in_new_session,
    new_upload_id,
    open_session_ids,
    open_upload,
    record_chunk,
    release_lease,
    unopened_since,
    verify_digest,
)
from dockyard.registry.services.upload_streams import SessionStreams
from dockyard.storage import BlobStore, UploadLost

log = logging.getLogger(__name__)

#: The content cache's memo that a repository is not write-locked (kept across pushes into it).
WRITABLE = (SETTINGS, "writable")


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
        locks: LockPolicy | None = None,
        quota: BlobQuota | None = None,
        recent: RecentBlobs | None = None,
        cache: ContentCache | None = None,
    ) -> None:
        self._db = db
        #: ``start`` only reads: on SQLite, cheaper on the event loop than in a thread.
        self.reads_inline = db.is_sqlite
        self._cache = cache if cache is not None else ContentCache(0)
        self._recent = recent
        self._store = store
        self._quota = quota
        self._locks = locks or LockPolicy()
        self._lease = timedelta(seconds=lease_seconds)
        self._streams = SessionStreams(db, store, self._lease)
        self._expiry = timedelta(seconds=expiry_seconds)
        self._hashers = HasherCache(hasher_cache_size)

    @property
    def db(self) -> Database:
        return self._db

    # -- sessions ---------------------------------------------------------------------------

    def start(self, repository: str) -> UploadState:
        """Start an upload session for ``repository``: an id, and nothing written (the session's
        row is created by the first request that writes to it)."""
        self._db.run_lookup(lambda conn: self._refuse_start(conn, repository))
        return UploadState(new_upload_id(repository), repository, 0)

    def start_known(self, repository: str) -> UploadState | None:
        """``start`` from what this process knows (safe on the event loop: no database round trip):
        None unless it has seen lately that ``repository`` is not write-locked and it has the quota's
        figures in memory (then call ``start``). A lock set since is then refused by the closing
        PUT's transaction, as one set between a ``POST`` and its ``PUT`` always was."""
        if self._cache.get(repository, WRITABLE) is not True:
            return None
        if self._quota is not None and not self._quota.check_start_known():
            return None
        return UploadState(new_upload_id(repository), repository, 0)

    def _refuse_start(self, conn: Connection, repository: str) -> None:
        """What a session must pass to start (its ``POST``, or its first write: the id alone,
        which anyone can make, does not): the storage quota allows, the repository is writable."""
        if self._quota is not None:
            self._quota.check_start()
        generation = self._cache.generation()
        self._locks.refuse_if_write_locked(conn, repository)
        self._cache.put(repository, WRITABLE, True, generation)

    def status(self, repository: str, upload_id: str) -> UploadState:
        """Where the session stands, or BLOB_UPLOAD_UNKNOWN."""
        with self._db.read() as conn:
            size = conn.execute(
                sa.select(uploads.c.size).where(uploads.c.id == upload_id, uploads.c.repository == repository)
            ).scalar()
        if size is None and unopened_since(upload_id, repository, utcnow(), self._expiry) is not None:
            size = 0
        if size is None or size == CLOSED:
            raise _unknown(upload_id)
        return UploadState(upload_id, repository, size)

    def cancel(self, repository: str, upload_id: str) -> None:
        """Cancel a session and drop its data."""
        now = utcnow()

        def work(conn: Connection) -> tuple[str | None] | None:
            if open_upload(conn, repository, upload_id, now, self._expiry, size=CLOSED):
                return (None,)  # nothing was written to it
            where = (uploads.c.id == upload_id, uploads.c.repository == repository)
            row = conn.execute(sa.select(uploads.c.store_state, uploads.c.size).where(*where)).first()
            if row is None or row.size == CLOSED:
                return None
            close_upload(conn, upload_id, now)
            return (row.store_state,)

        found = self._db.run_write(work, durable=False)
        if found is None:
            raise _unknown(upload_id)
        self._hashers.forget(upload_id)
        self._store.abort_upload(upload_id, found[0])

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
        if content_length is not None and content_length <= SMALL_CHUNK and self._store.local:
            return self._append_small(
                repository, upload_id, _read_exactly(body, content_length), content_range
            )
        token, recorded = self._acquire(repository, upload_id)
        try:
            expected = check_range(recorded.size, content_range, content_length)
            hasher = self._hasher_at(upload_id, recorded)
            size, state = self._streams.write(upload_id, token, recorded, hasher, body, expected=expected)
            try:
                record_chunk(self._db, upload_id, token, size, state, hasher.export())
            except LeaseLost:
                self._streams.drop_if_ended(upload_id, state)
                raise
        except _LostDigest as lost:
            self._drop_session(upload_id, lost.store_state)
            raise
        except BaseException:
            self._release(upload_id, token)
            raise
        self._hashers.keep(upload_id, size, hasher)
        return UploadState(upload_id, repository, size)

    def _append_small(
        self, repository: str, upload_id: str, data: bytes, content_range: tuple[int, int] | None
    ) -> UploadState:
        """A chunk in memory, on a local store: check, write and record it in one transaction, no lease.

        The transaction's row lock orders it against other writers; a request holding a lease
        (streaming a large chunk) makes it wait its turn with a 416, as a lease would. The
        digest is advanced outside the transaction when this process's cached hash is current.
        """
        now = utcnow()
        ahead = self._hashers.get(upload_id)
        if ahead is not None:
            ahead[1].update(data)

        def work(conn: Connection) -> tuple[int, ResumableHash]:
            recorded = self._lock_or_open(conn, repository, upload_id, now)
            check_range(recorded.size, content_range, len(data))
            if ahead is not None and ahead[0] == recorded.size:
                hasher = ahead[1]
            else:
                hasher = self._hasher_at(upload_id, recorded)
                hasher.update(data)
            writer = self._streams.open(upload_id, recorded)
            try:
                writer.write(data)
                state = writer.close()
            except BaseException:
                writer.abort()
                raise
            size = recorded.size + len(data)
            conn.execute(
                uploads.update()
                .where(uploads.c.id == upload_id)
                .values(size=size, store_state=state, hash_state=hasher.export(), updated_at=now)
            )
            return size, hasher

        try:
            size, hasher = self._db.run_write(work, durable=False)
        except _LostDigest as lost:
            self._drop_session(upload_id, lost.store_state)
            raise
        self._hashers.keep(upload_id, size, hasher)
        return UploadState(upload_id, repository, size)

    def complete(
        self,
        repository: str,
        upload_id: str,
        digest: str,
        body: Iterable[bytes],
        *,
        content_range: tuple[int, int] | None = None,
        content_length: int | None = None,
        whole_tried: bool = False,
    ) -> BlobInfo:
        """Finish a session (the closing PUT), with an optional last chunk, and verify ``digest``.

        ``whole_tried``: the caller has already tried this body as the whole blob
        (``store_closing``, ``close_stored``) and it was not, so that is not tried again."""
        algorithm, _ = parse_digest(digest)
        small = content_length is not None and 0 < content_length <= SMALL_CHUNK
        if small and (content_range is None or content_range[0] == 0):
            assert content_length is not None
            data = _read_exactly(body, content_length)
            if not whole_tried:
                done = self._complete_in_one(repository, upload_id, digest, data, content_range)
                if done is not None:
                    return done
            body = iter((data,))
        token, recorded = self._acquire(repository, upload_id)
        state = recorded.store_state
        try:
            expected = check_range(recorded.size, content_range, content_length)
            hasher = self._hasher_at(upload_id, recorded, algorithm)
            in_place = digest if recorded.size == 0 else None  # the whole blob comes in this request
            size, state = self._streams.write(
                upload_id, token, recorded, hasher, body, expected=expected, digest=in_place
            )
        except _LostDigest as lost:
            self._drop_session(upload_id, lost.store_state)
            raise
        except BaseException:
            self._release(upload_id, token)
            raise
        try:
            seen = seen_before_commit(self._db, digest)
            self._check_quota(seen, size)  # refused: the session stays, to be closed again later
        except BaseException:
            self._release(upload_id, token)
            raise
        self._streams.hold_before_commit(upload_id, token, state)
        try:
            verify_digest(digest, algorithm, hasher)
            try:
                location = self._store.commit_upload(upload_id, state, digest, size)
            except UploadLost:
                raise _LostDigest(upload_id, state) from None
        except RegistryError:
            self._drop_session(upload_id, state)
            raise
        except BaseException:
            self._release(upload_id, token)
            raise
        self._link(repository, digest, size, location, seen, session=(upload_id, token))
        return BlobInfo(digest, size, location)

    def _complete_in_one(
        self,
        repository: str,
        upload_id: str,
        digest: str,
        data: bytes,
        content_range: tuple[int, int] | None,
    ) -> BlobInfo | None:
        """The usual monolithic push (POST, then a PUT carrying the whole blob) in one transaction:
        ``store_closing`` then ``close_stored``, both in this thread. None: take the general path."""
        stored = self.store_closing(digest, data, content_range)
        closed = None if stored is None else self.close_stored(repository, upload_id, stored)
        if closed is None:
            return None
        if closed.leftover is not None:
            self.discard(upload_id, closed.leftover)
        return closed.blob

    def store_closing(
        self, digest: str, data: bytes, content_range: tuple[int, int] | None = None
    ) -> StoredChunk | None:
        """Store a closing PUT's body as a blob when it alone has ``digest`` (durable, content
        addressed, visible to no one yet, outside any transaction). None when it has another digest:
        the session holds bytes already or the digest is wrong, and the general path tells which."""
        algorithm, _ = parse_digest(digest)
        check_range(0, content_range, len(data))
        hasher = new_hasher(algorithm)
        hasher.update(data)
        if f"{algorithm}:{hasher.hexdigest()}" != digest:
            return None
        seen = assume_new()  # read only if the link finds a row (``NotNew``)
        try:
            self._check_quota(seen, len(data))
        except RegistryError:  # unless the blob is stored already
            seen = seen_before_commit(self._db, digest)
            self._check_quota(seen, len(data))
        self._store.put(digest, data)
        return StoredChunk(digest, data, seen)

    def store_and_close(
        self,
        repository: str,
        upload_id: str,
        digest: str,
        data: bytes,
        content_range: tuple[int, int] | None = None,
    ) -> ClosedSession | None:
        """``store_closing``, then ``close_stored``: one worker thread for both (None as either)."""
        stored = self.store_closing(digest, data, content_range)
        return None if stored is None else self.close_stored(repository, upload_id, stored)

    def close_stored(self, repository: str, upload_id: str, stored: StoredChunk) -> ClosedSession | None:
        """One transaction (small enough for the event loop: ``run_soon``) checks that the session is
        still empty and unleased, links the stored blob and ends the session. None when the session
        holds bytes already: the blob stored is then unlinked data, as after any failed push."""
        digest, size = stored.digest, len(stored.data)
        try:
            done, state = self._close_session(repository, upload_id, stored)
        except NotNew:  # rolled back: the blob has a row, so read it before the store commit, as usual
            self._db.refuse_inline("a store commit")
            seen = seen_before_commit(self._db, digest)
            # No quota check: ``store_closing`` checked this blob as a new one before its bytes were
            # stored, and a refusal now would leave them in the store, recorded nowhere.
            self._store.put(digest, stored.data)
            stored = StoredChunk(digest, stored.data, seen)
            done, state = self._close_session(repository, upload_id, stored)
        if not done:
            return None
        self._count_quota(stored.seen, size)
        if self._recent is not None:
            self._recent.keep(digest, stored.data)
        self._hashers.forget(upload_id)
        if self._store.local:  # a file at most: no network
            self._store.abort_upload(upload_id, state)
            state = None
        return ClosedSession(BlobInfo(digest, size), state)

    def _close_session(self, repository: str, upload_id: str, stored: StoredChunk) -> tuple[bool, str | None]:
        closing = Closing(self._locks, repository, upload_id, stored, utcnow(), self._expiry)
        try:
            return self._db.run_write(lambda conn: link_in_new_session(conn, closing), pipelined=True)
        except GeneralPath:  # rolled back; one statement after another, in a transaction of its own
            return self._db.run_write(lambda conn: link_in_any_session(conn, closing), pipelined=True)

    def discard(self, upload_id: str, state: str) -> None:
        """Drop what the store still holds for a closed session (``ClosedSession.leftover``)."""
        self._store.abort_upload(upload_id, state)

    def upload_whole(
        self, repository: str, digest: str, body: Iterable[bytes], *, content_length: int | None = None
    ) -> BlobInfo:
        """A single-request monolithic upload (POST ?digest=): no session row is needed."""
        algorithm, _ = parse_digest(digest)
        if self._quota is not None:  # refused before the body is read, unless the blob is stored already
            self._check_quota(seen_before_commit(self._db, digest), content_length or 0)
        upload_id = f"whole-{uuid.uuid4()}"
        hasher = ResumableHash(algorithm)
        state = None
        try:
            size, state = self._streams.write(
                upload_id, None, _Recorded(0), hasher, body, expected=content_length, digest=digest
            )
            verify_digest(digest, algorithm, hasher)
            seen = seen_before_commit(self._db, digest)
            self._check_quota(seen, size)
            location = self._store.commit_upload(upload_id, state, digest, size)
        except BaseException:
            self._store.abort_upload(upload_id, state)
            raise
        self._link(repository, digest, size, location, seen)
        return BlobInfo(digest, size, location)

    def _link(
        self,
        repository: str,
        digest: str,
        size: int,
        location: str | None,
        seen: Seen,
        *,
        session: tuple[str, str] | None = None,
    ) -> None:
        """Make a committed blob visible in ``repository`` (ending ``session``: its id and the lease
        the caller holds), in one transaction.

        If the blob was already recorded at another location, the existing record wins and the
        object just committed at ``location`` is deleted once the transaction is over. If garbage
        collection marked the blob since ``seen`` (BlobBusy), the session ends and the client
        pushes again. If the session was cancelled while the caller wrote (SessionLost), nothing
        is linked.
        """

        def work(conn: Connection) -> bool:
            if session is not None:  # the session's row first, as every closing transaction locks it
                close_leased(conn, *session, utcnow())
            repo_id = self._locks.writable_repository(conn, repository).id
            return link_committed(conn, repo_id, digest, size, location, seen)

        try:
            kept = self._db.run_write(work)
        except (BlobBusy, SessionLost) as refused:
            if session is not None:
                if isinstance(refused, BlobBusy):
                    self._db.run_write(lambda conn: close_upload(conn, session[0], utcnow()), durable=False)
                self._hashers.forget(session[0])
            if location is not None:
                self._store.delete(digest, location=location)  # our own object, never linked
            raise
        if not kept:
            self._store.delete(digest, location=location)
        else:
            self._count_quota(seen, size)
        if session is not None:
            self._hashers.forget(session[0])

    def _check_quota(self, seen: Seen, size: int) -> None:
        """A blob not stored yet must fit the storage quota (one already stored adds nothing)."""
        if self._quota is not None and seen.state != LIVE:
            self._quota.check_new_blob(size)

    def _count_quota(self, seen: Seen, size: int) -> None:
        if self._quota is not None and seen.state != LIVE:
            self._quota.added(size)

    # -- housekeeping -----------------------------------------------------------------------

    def expire(self, now: datetime | None = None) -> int:
        """End sessions idle past the expiry (their data dropped, their row kept CLOSED), forget
        closed sessions whose ids can no longer open on any node, and drop store uploads no open
        session owns. Returns how many sessions ended plus how many orphans were dropped."""
        now = now or utcnow()
        cutoff = now - self._expiry
        stale = self._db.run_write(lambda conn: end_idle_sessions(conn, now, self._expiry), durable=False)
        for upload_id, state in stale:
            self._hashers.forget(upload_id)
            self._store.abort_upload(upload_id, state)
        with self._db.read() as conn:
            live = open_session_ids(conn)
        orphans = self._store.expire_uploads(cutoff.timestamp(), live.__contains__)
        return len(stale) + orphans

    # -- internals --------------------------------------------------------------------------

    def _acquire(self, repository: str, upload_id: str) -> tuple[str, _Recorded]:
        token = uuid.uuid4().hex
        now = utcnow()

        def work(conn: Connection) -> _Recorded:
            recorded = self._lock_or_open(conn, repository, upload_id, now)
            conn.execute(
                uploads.update()
                .where(uploads.c.id == upload_id)
                .values(lease_token=token, lease_until=now + self._lease)
            )
            return recorded

        return token, self._db.run_write(work, durable=False)

    def _lock_or_open(self, conn: Connection, repository: str, upload_id: str, now: datetime) -> _Recorded:
        """``_lock_unleased``; a session's first write passes ``_refuse_start`` as its ``POST`` did."""
        recorded = _lock_unleased(conn, repository, upload_id, now, self._expiry)
        if recorded.opened:
            self._refuse_start(conn, repository)
        return recorded

    def _release(self, upload_id: str, token: str) -> None:
        self._hashers.forget(upload_id)
        release_lease(self._db, upload_id, token)

    def _drop_session(self, upload_id: str, state: str | None) -> None:
        def work(conn: Connection) -> None:
            close_upload(conn, upload_id, utcnow())

        self._db.run_write(work, durable=False)
        self._hashers.forget(upload_id)
        self._store.abort_upload(upload_id, state)

    def _hasher_at(self, upload_id: str, recorded: _Recorded, algorithm: str = "sha256") -> ResumableHash:
        """The running digest of the recorded bytes, for this request to advance.

        This process's cached hash when it covers exactly the recorded size, else the state the
        database recorded (another process wrote the last chunk), else a fresh one for an empty
        upload. _LostDigest when bytes are recorded without a usable state.
        """
        if recorded.size == 0:
            return ResumableHash(algorithm)
        cached = self._hashers.get(upload_id)
        if cached is not None and cached[0] == recorded.size:
            return cached[1]
        if recorded.hash_state is None:
            raise _LostDigest(upload_id, recorded.store_state)
        try:
            hasher = ResumableHash.resume(recorded.hash_state)
        except HashStateError:
            log.warning("upload %s has an unusable hash state; dropping it", upload_id, exc_info=True)
            raise _LostDigest(upload_id, recorded.store_state) from None
        if hasher.length != recorded.size:
            raise _LostDigest(upload_id, recorded.store_state)
        return hasher
