"""Online garbage collection: what no manifest needs is unlinked, then its bytes deleted.

Phases, each in batches (one short transaction per batch, never store I/O inside one):

1. (``untagged`` only) manifests with no tag, in no index and with no live subject, older than
   the grace period, are deleted through the registry's delete (locks, recycle bin, events);
2. ``repository_blobs`` links older than the grace period that no manifest of their repository
   references are removed;
3. ``blobs`` rows with no link, no manifest reference and no ``kept_blobs`` claim, older than
   the grace period, are marked 'deleting' (generation + 1) after a re-check under a row lock;
   then their bytes are deleted; then they become 'gone' if the generation is unchanged;
4. store objects with no live row (a crash between a store commit and its record), older than
   the grace period, are claimed the same way (a 'deleting' row) and deleted;
5. tombstones ('gone') older than a day are removed.

Uploads, mounts and manifest pushes cooperate through ``registry/services/blobstate.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.db import Database, per_dialect, utcnow
from dockyard.lifecycle.interfaces import KeptBlobs
from dockyard.oci.errors import RegistryError
from dockyard.registry.models import (
    blobs,
    manifest_blobs,
    manifest_children,
    manifests,
    repositories,
    repository_blobs,
    tags,
    uploads,
)
from dockyard.registry.services.blobstate import DELETING, GONE, LIVE
from dockyard.registry.services.manifests import ManifestService
from dockyard.storage import BlobStore

log = logging.getLogger(__name__)

KINDS = ("manifests", "links", "blobs", "orphans", "tombstones")
#: Tombstones are kept this long, so a push that saw one can tell the bytes are gone.
TOMBSTONE_SECONDS = 24 * 3600
#: A row left 'deleting' this long (a collector died, or the store refused the delete) is finished
#: by the next run.
STALE_DELETING_SECONDS = 900
#: Index → untagged child → ... chains are followed this many levels per run.
MAX_MANIFEST_PASSES = 8

#: What ``BlobStore.delete`` is given for an object listed by location only: drivers address it by
#: the location and merely check that the digest is well formed.
UNKNOWN_DIGEST = "sha256:" + "0" * 64

_CLAIM = per_dialect(
    lambda insert: insert(blobs).on_conflict_do_nothing(index_elements=["digest"]).returning(blobs.c.digest)
)


@dataclass
class Freed:
    """How much one kind of garbage a run freed (or, dry, would free)."""

    items: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.items += 1
        self.bytes += size


@dataclass(frozen=True)
class Options:
    """What a run collects."""

    grace_seconds: int
    dry_run: bool = False
    untagged: bool = False


@dataclass(frozen=True)
class Marked:
    """A blob row this collector set to 'deleting' (``generation`` is the one it set)."""

    digest: str
    generation: int
    size: int
    location: str | None


@dataclass
class Report:
    freed: dict[str, Freed] = field(default_factory=lambda: {kind: Freed() for kind in KINDS})
    #: Objects the store failed to delete (left 'deleting' for the next run).
    failures: int = 0

    def as_json(self) -> dict[str, dict[str, int]]:
        return {kind: {"items": f.items, "bytes": f.bytes} for kind, f in self.freed.items()}


def _no_link() -> sa.ColumnElement[bool]:
    return ~sa.exists().where(repository_blobs.c.digest == blobs.c.digest)


def _no_reference() -> sa.ColumnElement[bool]:
    return ~sa.exists().where(manifest_blobs.c.digest == blobs.c.digest)


def _unreferenced_link() -> sa.ColumnElement[bool]:
    """A link no manifest of its own repository references."""
    return ~sa.exists(
        sa.select(manifest_blobs.c.manifest_id)
        .select_from(manifest_blobs.join(manifests))
        .where(
            manifests.c.repository_id == repository_blobs.c.repository_id,
            manifest_blobs.c.digest == repository_blobs.c.digest,
        )
    )


def _collectable_manifest() -> sa.ColumnElement[bool]:
    """No tag, listed by no index of its repository, and no subject still present (referrers)."""
    parent = manifests.alias("parent")
    subject = manifests.alias("subject")
    return sa.and_(
        ~sa.exists().where(tags.c.manifest_id == manifests.c.id),
        ~sa.exists(
            sa.select(manifest_children.c.manifest_id)
            .select_from(manifest_children.join(parent, parent.c.id == manifest_children.c.manifest_id))
            .where(
                parent.c.repository_id == manifests.c.repository_id,
                manifest_children.c.child_digest == manifests.c.digest,
            )
        ),
        sa.or_(
            manifests.c.subject_digest.is_(None),
            ~sa.exists().where(
                subject.c.repository_id == manifests.c.repository_id,
                subject.c.digest == manifests.c.subject_digest,
            ),
        ),
    )


class _Kept(Exception):
    """A manifest that stopped being collectable (or is locked) before its delete."""


class GarbageCollector:
    """Finds and frees garbage; each phase is a public method so tests can interleave them."""

    def __init__(
        self,
        db: Database,
        store: BlobStore,
        manifests: ManifestService,
        kept: list[KeptBlobs],
        *,
        batch: int = 500,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._store = store
        self._manifests = manifests
        self._kept = kept
        self._batch = batch
        self._clock = clock

    def collect(self, options: Options) -> Report:
        """One whole run."""
        now = self._clock()
        cutoff = now - timedelta(seconds=options.grace_seconds)
        report = Report()
        if not options.dry_run:
            self.finish_stale(now, report)
        if options.untagged:
            self.collect_manifests(cutoff, options.dry_run, report)
        self.collect_links(cutoff, options.dry_run, report)
        self.collect_blobs(cutoff, options.dry_run, report)
        self.collect_orphans(cutoff, options.dry_run, report)
        if not options.dry_run:
            self.prune_tombstones(now, report)
        return report

    # -- manifests ------------------------------------------------------------------------------

    def collect_manifests(self, cutoff: datetime, dry_run: bool, report: Report) -> None:
        """Delete untagged manifests (repeated, so an index's children follow it).

        Each goes through the registry's delete (locks, the recycle bin, events), which re-checks
        inside its transaction that the manifest is still collectable and not locked.
        """
        for _ in range(MAX_MANIFEST_PASSES):
            found = 0
            after = 0
            while True:
                rows = self._rows(
                    sa.select(manifests.c.id, manifests.c.digest, manifests.c.size, repositories.c.name)
                    .select_from(manifests.join(repositories))
                    .where(manifests.c.id > after, manifests.c.created_at < cutoff, _collectable_manifest())
                    .order_by(manifests.c.id)
                    .limit(self._batch)
                )
                if not rows:
                    break
                after = rows[-1].id
                for row in rows:
                    if dry_run:
                        report.freed["manifests"].add(row.size)
                    elif self._delete_manifest(row.name, row.digest, cutoff):
                        report.freed["manifests"].add(row.size)
                        found += 1
            if dry_run or not found:
                return

    def _delete_manifest(self, repository: str, digest: str, cutoff: datetime) -> bool:
        def still_collectable(conn: Connection, manifest_id: int) -> None:
            conn.execute(sa.select(manifests.c.id).where(manifests.c.id == manifest_id).with_for_update())
            collectable = conn.execute(
                sa.select(manifests.c.id).where(
                    manifests.c.id == manifest_id, manifests.c.created_at < cutoff, _collectable_manifest()
                )
            ).first()
            if collectable is None:  # ManifestService.delete has refused a locked one already
                raise _Kept(digest)

        try:
            self._manifests.delete(repository, digest, check=still_collectable)
        except (_Kept, RegistryError):
            return False  # tagged, listed, locked or deleted meanwhile
        return True

    # -- links ----------------------------------------------------------------------------------

    def collect_links(self, cutoff: datetime, dry_run: bool, report: Report) -> None:
        """Remove repository links no manifest of the repository references."""
        key = sa.tuple_(repository_blobs.c.repository_id, repository_blobs.c.digest)
        after: tuple[int, str] = (-1, "")
        while True:
            rows = [
                (row.repository_id, row.digest)
                for row in self._rows(
                    sa.select(repository_blobs.c.repository_id, repository_blobs.c.digest)
                    .where(
                        key > sa.tuple_(*after), repository_blobs.c.created_at < cutoff, _unreferenced_link()
                    )
                    .order_by(repository_blobs.c.repository_id, repository_blobs.c.digest)
                    .limit(self._batch)
                )
            ]
            if not rows:
                return
            after = rows[-1]
            if dry_run:
                report.freed["links"].items += len(rows)
                continue
            report.freed["links"].items += self._db.run_write(
                lambda conn, rows=rows: self.unlink(conn, rows, cutoff)
            )

    @staticmethod
    def unlink(conn: Connection, rows: list[tuple[int, str]], cutoff: datetime) -> int:
        """Lock the candidate links, then delete those still unreferenced (a fresh re-check)."""
        key = sa.tuple_(repository_blobs.c.repository_id, repository_blobs.c.digest)
        conn.execute(sa.select(repository_blobs.c.digest).where(key.in_(rows)).with_for_update())
        return conn.execute(
            repository_blobs.delete().where(
                key.in_(rows), repository_blobs.c.created_at < cutoff, _unreferenced_link()
            )
        ).rowcount

    # -- blobs ----------------------------------------------------------------------------------

    def _eligible(self, cutoff: datetime) -> list[sa.ColumnElement[bool]]:
        kept = [~blobs.c.digest.in_(source()) for source in self._kept]
        return [blobs.c.state == LIVE, blobs.c.created_at < cutoff, _no_link(), _no_reference(), *kept]

    def collect_blobs(self, cutoff: datetime, dry_run: bool, report: Report) -> None:
        """Mark, delete and finish unreferenced blobs, a batch at a time."""
        after = ""
        while True:
            rows = self._rows(
                sa.select(blobs.c.digest, blobs.c.size)
                .where(blobs.c.digest > after, *self._eligible(cutoff))
                .order_by(blobs.c.digest)
                .limit(self._batch)
            )
            if not rows:
                return
            after = rows[-1].digest
            if dry_run:
                for row in rows:
                    report.freed["blobs"].add(row.size)
                continue
            marked = self.mark([row.digest for row in rows], cutoff)
            self._delete_and_finish(marked, "blobs", report)

    def mark(self, digests: list[str], cutoff: datetime) -> list[Marked]:
        """Transaction 1: lock the rows, re-check them, set 'deleting' and bump the generation."""
        now = self._clock()

        def work(conn: Connection) -> list[Marked]:
            conn.execute(
                sa.select(blobs.c.digest)
                .where(blobs.c.digest.in_(digests))
                .order_by(blobs.c.digest)
                .with_for_update()
            )
            result = conn.execute(
                blobs.update()
                .where(blobs.c.digest.in_(digests), *self._eligible(cutoff))
                .values(state=DELETING, generation=blobs.c.generation + 1, state_at=now)
                .returning(blobs.c.digest, blobs.c.generation, blobs.c.size, blobs.c.location)
            )
            return [Marked(row.digest, row.generation, row.size, row.location) for row in result]

        return self._db.run_write(work)

    def delete_bytes(self, marked: list[Marked]) -> tuple[list[Marked], int]:
        """Delete the marked rows' bytes (no transaction); the ones deleted, and how many failed."""
        done: list[Marked] = []
        failed = 0
        for blob in marked:
            try:
                self._store.delete(blob.digest, location=blob.location)
            except Exception:
                log.exception("could not delete blob %s; the next collection retries", blob.digest)
                failed += 1
                continue
            done.append(blob)
        return done, failed

    def finish(self, marked: list[Marked]) -> int:
        """Transaction 2: 'deleting' → 'gone' where nobody marked the row again since."""
        if not marked:
            return 0
        now = self._clock()

        def work(conn: Connection) -> int:
            finished = 0
            for blob in marked:
                finished += conn.execute(
                    blobs.update()
                    .where(
                        blobs.c.digest == blob.digest,
                        blobs.c.state == DELETING,
                        blobs.c.generation == blob.generation,
                    )
                    .values(state=GONE, state_at=now)
                ).rowcount
            return finished

        return self._db.run_write(work)

    def _delete_and_finish(self, marked: list[Marked], kind: str, report: Report) -> None:
        done, failed = self.delete_bytes(marked)
        report.failures += failed
        self.finish(done)
        for blob in done:
            report.freed[kind].add(blob.size)

    def finish_stale(self, now: datetime, report: Report) -> None:
        """Finish rows another collector left 'deleting' (it died, or the store refused)."""
        stale = now - timedelta(seconds=STALE_DELETING_SECONDS)
        rows = self._rows(
            sa.select(blobs.c.digest, blobs.c.generation, blobs.c.size, blobs.c.location).where(
                blobs.c.state == DELETING, blobs.c.state_at < stale
            )
        )
        marked = [Marked(row.digest, row.generation, row.size, row.location) for row in rows]
        for start in range(0, len(marked), self._batch):
            self._delete_and_finish(marked[start : start + self._batch], "blobs", report)

    # -- store orphans --------------------------------------------------------------------------

    def collect_orphans(self, cutoff: datetime, dry_run: bool, report: Report) -> None:
        """Delete store objects no live row records, older than the grace period."""
        older_than = cutoff.timestamp()
        cursor: str | None = None
        while True:
            page = self._store.list_blobs(cursor, limit=self._batch)
            old = [item for item in page.blobs if item.modified < older_than]
            by_digest = {item.digest: item.size for item in old if item.digest is not None}
            located = {item.location: item.size for item in old if item.location is not None}
            if by_digest:
                self._orphans_by_digest(by_digest, cutoff, dry_run, report)
            if located:
                self._orphans_located(located, dry_run, report)
            if page.cursor is None:
                return
            cursor = page.cursor

    def _orphans_by_digest(
        self, found: dict[str, int], cutoff: datetime, dry_run: bool, report: Report
    ) -> None:
        rows = {
            row.digest: row
            for row in self._rows(
                sa.select(blobs.c.digest, blobs.c.state, blobs.c.generation).where(
                    blobs.c.digest.in_(list(found))
                )
            )
        }
        # A live or deleting row owns the object (or, recorded at another location, may yet be
        # revived onto it): only objects with no row, or a tombstone, are orphans.
        candidates = {
            digest: size for digest, size in found.items() if digest not in rows or rows[digest].state == GONE
        }
        if not candidates:
            return
        if dry_run:
            for size in candidates.values():
                report.freed["orphans"].add(size)
            return
        tombstones = {digest: rows[digest].generation for digest in candidates if digest in rows}
        marked = self.claim(candidates, tombstones)
        self._delete_and_finish(marked, "orphans", report)

    def claim(self, found: dict[str, int], tombstones: dict[str, int]) -> list[Marked]:
        """Transaction 1 for unrecorded objects: a 'deleting' row claims each digest, so an upload
        that reuses the object meanwhile sees its row change and fails rather than links it."""
        now = self._clock()

        def work(conn: Connection) -> list[Marked]:
            claimed: list[Marked] = []
            for digest, size in found.items():
                if digest in tombstones:
                    generation = conn.execute(
                        blobs.update()
                        .where(
                            blobs.c.digest == digest,
                            blobs.c.state == GONE,
                            blobs.c.generation == tombstones[digest],
                        )
                        .values(
                            state=DELETING, generation=blobs.c.generation + 1, location=None, state_at=now
                        )
                        .returning(blobs.c.generation)
                    ).scalar()
                    if generation is not None:
                        claimed.append(Marked(digest, generation, size, None))
                    continue
                inserted = conn.execute(
                    _CLAIM[conn.dialect.name],
                    {
                        "digest": digest,
                        "size": size,
                        "created_at": now,
                        "location": None,
                        "state": DELETING,
                        "generation": 1,
                        "state_at": now,
                    },
                ).scalar()
                if inserted is not None:
                    claimed.append(Marked(digest, 1, size, None))
            return claimed

        return self._db.run_write(work)

    def _orphans_located(self, found: dict[str, int], dry_run: bool, report: Report) -> None:
        """Objects committed at an upload's own place that no row records. Their upload is over
        (no session row names it); only a crash between commit and record leaves them."""
        owners = {location: location.rstrip("/").rsplit("/", 1)[-1] for location in found}
        # One statement, so one snapshot: the transaction that records such an object also ends
        # its session, so every object being committed right now shows up under one or the other.
        taken = set(
            self._read(
                sa.union_all(
                    sa.select(blobs.c.location.label("key")).where(blobs.c.location.in_(list(found))),
                    sa.select(uploads.c.id.label("key")).where(uploads.c.id.in_(list(owners.values()))),
                )
            )
        )
        for location, size in found.items():
            if location in taken or owners[location] in taken:
                continue
            if not dry_run:
                try:
                    self._store.delete(UNKNOWN_DIGEST, location=location)
                except Exception:
                    log.exception("could not delete orphaned object %s", location)
                    report.failures += 1
                    continue
            report.freed["orphans"].add(size)

    # -- tombstones -----------------------------------------------------------------------------

    def prune_tombstones(self, now: datetime, report: Report) -> None:
        """Remove 'gone' rows older than a day."""
        cutoff = now - timedelta(seconds=TOMBSTONE_SECONDS)
        while True:
            digests = list(
                self._read(
                    sa.select(blobs.c.digest)
                    .where(blobs.c.state == GONE, blobs.c.state_at < cutoff)
                    .limit(self._batch)
                )
            )
            if not digests:
                return
            removed = self._db.run_write(
                lambda conn, digests=digests: (
                    conn.execute(
                        blobs.delete().where(
                            blobs.c.digest.in_(digests), blobs.c.state == GONE, blobs.c.state_at < cutoff
                        )
                    ).rowcount
                )
            )
            report.freed["tombstones"].items += removed

    # -- helpers --------------------------------------------------------------------------------

    def _rows(self, query: sa.Select) -> list[Any]:
        with self._db.read() as conn:
            return list(conn.execute(query).all())

    def _read(self, query: sa.Select | sa.CompoundSelect) -> Iterable[Any]:
        with self._db.read() as conn:
            return list(conn.execute(query).scalars())
