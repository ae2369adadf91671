"""The blob state protocol shared by uploads, mounts, manifest pushes and garbage collection.

A ``blobs`` row is 'live', 'deleting' (garbage collection marked it and is deleting its bytes)
or 'gone' (a tombstone: the bytes were deleted). Garbage collection bumps ``generation`` each
time it marks a row. Only 'live' rows exist for readers.

A linker that commits bytes to the store (an upload) reads the row's (state, generation)
*before* its store commit (``seen``), and in its linking transaction locks the row and links
only if nothing changed since, or if the row was a tombstone already then (its bytes were
written after the old ones were deleted: the row comes back to life with them). Anything else
means the bytes it relied on may have been deleted under it: it fails with a retryable 503.

Garbage collection deletes bytes only after bumping a generation (marking a row, or claiming an
unrecorded object with a new row of generation 1), so a live row whose generation is the one
seen (0 when there was no row: a concurrent push recorded it) was never marked in between.

A linker may skip the read and assume there was no row (``assume_new``, a closing PUT's usual
case: a new blob). Its transaction then links only if its own insert creates the row; any row
found raises ``NotNew``, and the linker starts over with the read. That is as safe as reading:
collection deletes bytes only under a row ('deleting', then 'gone'), and the only way a row
disappears is the pruning of a tombstone a day old (``ASSUMED_FOR`` is far shorter), so a row that
is still absent means no collection ever took bytes under this digest since the linker wrote them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard import prepared
from dockyard.db import Database, per_dialect, utcnow
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.models import blobs
from dockyard.registry.services.common import LINK_BLOB

LIVE = "live"
DELETING = "deleting"
GONE = "gone"

#: Seconds a client is told to wait before pushing a blob garbage collection is deleting.
RETRY_AFTER = 5

#: How long after its store commit a linker may rely on ``assume_new``, in seconds: far less than
#: the day a tombstone is kept (``lifecycle.services.gc.TOMBSTONE_SECONDS``).
ASSUMED_FOR = 3600.0

_STATE = sa.select(blobs.c.state, blobs.c.generation).where(blobs.c.digest == sa.bindparam("digest"))
_LOCK = (
    sa.select(blobs.c.state, blobs.c.generation, blobs.c.location)
    .where(blobs.c.digest == sa.bindparam("digest"))
    .with_for_update()
)
_INSERT = per_dialect(
    lambda insert: insert(blobs).on_conflict_do_nothing(index_elements=["digest"]).returning(blobs.c.digest)
)


@dataclass(frozen=True, slots=True)
class Seen:
    """A blob row's state and generation as read before a store commit (state None: no row)."""

    state: str | None
    generation: int = 0
    #: Not read: ``assume_new`` took it for a blob with no row (``monotonic`` time it did).
    assumed_at: float | None = field(default=None, compare=False)


def assume_new() -> Seen:
    """A ``Seen`` taken without reading (no row assumed): the link raises ``NotNew`` if a row exists."""
    return Seen(None, assumed_at=time.monotonic())


class NotNew(Exception):
    """A link that assumed a new blob found its row, or assumed for too long: read, store, link again."""


class BlobBusy(RegistryError):
    """Garbage collection is deleting (or just deleted) this blob's bytes: push it again shortly."""

    def __init__(self, digest: str) -> None:
        super().__init__(
            ErrorCode.UNKNOWN,
            f"blob {digest} is being garbage collected; push it again",
            status=503,
            headers={"Retry-After": str(RETRY_AFTER)},
            detail={"digest": digest},
        )


def seen_before_commit(db: Database, digest: str) -> Seen:
    """The row's state before the caller commits bytes; BlobBusy while it is being deleted."""
    row = db.lookup_row(_STATE, {"digest": digest})
    seen = Seen(None) if row is None else Seen(row[0], row[1])
    if seen.state == DELETING:
        raise BlobBusy(digest)
    return seen


def send_new_blob(
    conn: Connection, digest: str, size: int, location: str | None, seen: Seen
) -> prepared.Sent | None:
    """The first statement of ``link_committed``, sent without waiting: the new row's insert
    (None when ``seen`` found a row, which is locked instead)."""
    if seen.state is not None:
        return None
    row = {"digest": digest, "size": size, "created_at": utcnow(), "location": location}
    return prepared.send(conn, _INSERT[conn.dialect.name], row)


def link_committed(
    conn: Connection,
    repo_id: int,
    digest: str,
    size: int,
    location: str | None,
    seen: Seen,
    new_blob: prepared.Sent | None = None,
) -> bool:
    """Record committed bytes and link them into repository ``repo_id``, inside the caller's transaction.

    Returns False when the row is live at another location: the caller's object at ``location``
    is surplus (delete it after the transaction). BlobBusy when the row changed since ``seen``.
    ``new_blob`` is what ``send_new_blob`` sent earlier in the transaction, if it did.
    """
    now = utcnow()
    row = None
    if seen.assumed_at is not None and time.monotonic() - seen.assumed_at > ASSUMED_FOR:
        raise NotNew(digest)
    if seen.state is None:  # a new blob, most likely: insert it first, which locks the new row
        inserting = new_blob or send_new_blob(conn, digest, size, location, seen)
        if inserting is None or inserting.first() is None:
            if seen.assumed_at is not None:
                raise NotNew(digest)
            # a concurrent push recorded it first (or collection claimed it)
            row = prepared.first(conn, _LOCK, {"digest": digest})
            if row is None:
                raise BlobBusy(digest)
    else:
        row = prepared.first(conn, _LOCK, {"digest": digest})
        if row is None:
            raise BlobBusy(digest)  # the tombstone was pruned meanwhile: start over, to be sure
    surplus = False
    if row is None:
        pass  # we recorded it
    elif row.generation != seen.generation or row.state == DELETING:
        raise BlobBusy(digest)  # marked since we looked: bytes we reused may be gone
    elif row.state == GONE:
        if seen.state != GONE:
            raise BlobBusy(digest)
        conn.execute(
            blobs.update()
            .where(blobs.c.digest == digest)
            .values(state=LIVE, size=size, location=location, created_at=now, state_at=now)
        )
    else:
        surplus = location is not None and row.location != location
    prepared.execute_later(
        conn, LINK_BLOB[conn.dialect.name], {"repository_id": repo_id, "digest": digest, "created_at": now}
    )
    return not surplus
