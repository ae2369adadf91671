"""Manifests: push with reference checks, pull with content negotiation, delete, referrers."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard import prepared
from dockyard.changes import ContentCache
from dockyard.db import Database, per_dialect, utcnow
from dockyard.events.services import CHART_DELETE, CHART_PUSH, DELETE, PUSH, UNTAG, EventService, Origin
from dockyard.oci import mediatypes as mt
from dockyard.oci.digest import compute_digest, parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.manifests import MAX_SIZE, ParsedManifest, parse_manifest
from dockyard.oci.names import parse_reference
from dockyard.registry.models import (
    blobs,
    manifest_children,
    manifests,
    repositories,
    tags,
)
from dockyard.registry.services.blobstate import BlobBusy
from dockyard.registry.services.common import (
    BlobQuota,
    ContentHooks,
    ManifestRecord,
    require_repository,
    touch_repository,
)
from dockyard.registry.services.digests import RecentBlobs
from dockyard.registry.services.locks import LockPolicy, RepositoryLocks, denied
from dockyard.registry.services.references import (
    check_references,
    insert_references,
    platform_value,
    send_references,
)
from dockyard.storage import BlobStore, StorageError

#: Config blobs larger than this are not read for platform details.
MAX_CONFIG_READ = 1024 * 1024
IMAGE_CONFIG_TYPES = (mt.OCI_CONFIG, mt.DOCKER_CONFIG)
DEFAULT_PLATFORM = ("linux", "amd64")


_MANIFEST_COLUMNS = (
    manifests.c.digest,
    manifests.c.media_type,
    manifests.c.payload,
    repositories.c.read_enabled,
    manifests.c.read_enabled,
)
#: The two hot lookups, built once: a manifest by digest, and by tag (with the read locks on the way).
MANIFEST_BY_DIGEST = (
    sa.select(*_MANIFEST_COLUMNS, sa.true())
    .select_from(manifests.join(repositories))
    .where(repositories.c.name == sa.bindparam("repository"), manifests.c.digest == sa.bindparam("digest"))
)
MANIFEST_BY_TAG = (
    sa.select(*_MANIFEST_COLUMNS, tags.c.read_enabled)
    .select_from(tags.join(repositories).join(manifests, manifests.c.id == tags.c.manifest_id))
    .where(repositories.c.name == sa.bindparam("repository"), tags.c.name == sa.bindparam("tag"))
)

#: The push path's statements, built once.
INSERT_MANIFEST = per_dialect(
    lambda insert: (
        insert(manifests)
        .on_conflict_do_nothing(index_elements=["repository_id", "digest"])
        .returning(manifests.c.id)
    )
)
MANIFEST_ID = (
    sa.select(manifests.c.id)
    .where(
        manifests.c.repository_id == sa.bindparam("repository_id"),
        manifests.c.digest == sa.bindparam("digest"),
    )
    .with_for_update(read=True)  # kept from garbage collection of untagged manifests until tagged
)

#: A config blob's recorded size and location, read before a manifest's transaction.
CONFIG_BLOB = sa.select(blobs.c.size, blobs.c.location).where(blobs.c.digest == sa.bindparam("digest"))


def _upsert_tag(insert: Callable[[sa.Table], Any]) -> Any:
    statement = insert(tags)
    return statement.on_conflict_do_update(
        index_elements=["repository_id", "name"],
        set_={"manifest_id": statement.excluded.manifest_id, "updated_at": statement.excluded.updated_at},
    )


UPSERT_TAG = per_dialect(_upsert_tag)


class TagExists(Exception):
    """``put(new_tag_only=True)`` found the tag in place."""

    def __init__(self, repository: str, tag: str) -> None:
        super().__init__(f"the tag {repository}:{tag} exists")
        self.repository = repository
        self.tag = tag


@dataclass(frozen=True)
class PushedManifest:
    digest: str
    subject: str | None


def _manifest_unknown(repository: str, reference: str) -> RegistryError:
    return RegistryError(
        ErrorCode.MANIFEST_UNKNOWN,
        f"manifest {reference[:100]!r} unknown in repository {repository!r}",
        detail={"name": repository, "reference": reference[:200]},
    )


def _readable(row: Sequence[Any], repository: str, reference: str) -> ManifestRecord:
    """The record of a looked-up row, or DENIED when the repository, manifest or tag is read-locked."""
    for position, what in (
        (3, f"repository {repository!r}"),
        (4, f"manifest {row[0]}"),
        (5, f"tag {reference!r}"),
    ):
        if not row[position]:
            raise denied(what, "readEnabled", "pulling it")
    return ManifestRecord(row[0], row[1], bytes(row[2]))


def accepts(accept: Sequence[str], media_type: str) -> bool:
    """Whether an Accept list admits ``media_type`` (an empty list admits anything)."""
    return not accept or media_type in accept or "*/*" in accept


class ManifestService:
    """Stores manifests byte-exact and serves them back."""

    def __init__(
        self,
        db: Database,
        store: BlobStore,
        events: EventService,
        cache: ContentCache | None = None,
        locks: LockPolicy | None = None,
        hooks: ContentHooks | None = None,
        quota: BlobQuota | None = None,
        recent: RecentBlobs | None = None,
    ) -> None:
        self._db = db
        self._quota = quota
        #: Small blobs this process just stored: a config pushed here is not read back from the store.
        self.recent = recent
        self._locks = locks or LockPolicy()
        self.hooks = hooks if hooks is not None else ContentHooks()
        self._store = store
        self._events = events
        self._cache = cache if cache is not None else ContentCache(0)
        #: Whether ``get`` may run on the event loop (one cheap local lookup, SQLite only).
        self.reads_inline = db.is_sqlite

    @property
    def db(self) -> Database:
        """The database, for a route's ``run_soon`` (``put`` may run on the event loop)."""
        return self._db

    def cached(self, repository: str, reference: str, accept: Sequence[str] = ()) -> ManifestRecord | None:
        """The manifest from this process's cache if it is there and acceptable (no I/O)."""
        record = self._cache.get(repository, ("m", reference))
        return record if record is not None and accepts(accept, record.media_type) else None

    # -- pull -------------------------------------------------------------------------------

    def get(self, repository: str, reference: str, accept: Sequence[str] = ()) -> ManifestRecord:
        """The manifest ``reference`` names, negotiated against the client's Accept list.

        A manifest list or index fetched by tag by a client that accepts only image
        manifests is answered with its linux/amd64 image, as Docker clients expect. A malformed
        reference names no manifest: MANIFEST_UNKNOWN (404), as Distribution and the OCI
        conformance suite have it (a push to one is MANIFEST_INVALID).
        """
        try:
            tag, digest = parse_reference(reference)
        except RegistryError:
            with self._db.read() as conn:
                require_repository(conn, repository)
            raise _manifest_unknown(repository, reference) from None
        generation = self._cache.generation()
        if digest is not None:
            row = self._db.lookup_row(MANIFEST_BY_DIGEST, {"repository": repository, "digest": digest})
        else:
            row = self._db.lookup_row(MANIFEST_BY_TAG, {"repository": repository, "tag": tag})
        record = _readable(row, repository, reference) if row is not None else None
        if record is not None:
            self._cache.put(repository, ("m", reference), record, generation)
        if record is not None and (digest is not None or accepts(accept, record.media_type)):
            return record
        with self._db.read() as conn:
            if record is None:
                require_repository(conn, repository)
                raise _manifest_unknown(repository, reference)
            if record.media_type in mt.INDEXES:
                child = self._platform_child(conn, repository, record.digest, accept)
                if child is not None:
                    return child
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            f"manifest {reference!r} is {record.media_type}, which the Accept header does not allow",
            detail={"name": repository, "reference": reference, "mediaType": record.media_type},
        )

    @staticmethod
    def _fetch(
        conn: Connection, repository: str, tag: str | None, digest: str | None
    ) -> ManifestRecord | None:
        if digest is not None:
            row = conn.execute(MANIFEST_BY_DIGEST, {"repository": repository, "digest": digest}).first()
        else:
            row = conn.execute(MANIFEST_BY_TAG, {"repository": repository, "tag": tag}).first()
        return _readable(row, repository, tag or digest or "") if row else None

    def _platform_child(
        self, conn: Connection, repository: str, index_digest: str, accept: Sequence[str]
    ) -> ManifestRecord | None:
        parent = manifests.alias("parent")
        rows = conn.execute(
            sa.select(
                manifests.c.digest,
                manifests.c.media_type,
                manifest_children.c.os,
                manifest_children.c.architecture,
            )
            .select_from(
                manifest_children.join(parent, parent.c.id == manifest_children.c.manifest_id)
                .join(repositories, repositories.c.id == parent.c.repository_id)
                .join(
                    manifests,
                    sa.and_(
                        manifests.c.repository_id == parent.c.repository_id,
                        manifests.c.digest == manifest_children.c.child_digest,
                    ),
                )
            )
            .where(repositories.c.name == repository, parent.c.digest == index_digest)
        ).all()
        acceptable = [row for row in rows if accepts(accept, row.media_type)]
        preferred = [row for row in acceptable if (row.os, row.architecture) == DEFAULT_PLATFORM]
        chosen = (preferred or acceptable or [None])[0]
        return self._fetch(conn, repository, None, chosen.digest) if chosen else None

    # -- push -------------------------------------------------------------------------------

    def put(
        self,
        repository: str,
        reference: str,
        payload: bytes,
        content_type: str,
        origin: Origin | None = None,
        *,
        before: Callable[[Connection, int], None] | None = None,
        lazy: bool = False,
        new_tag_only: bool = False,
    ) -> PushedManifest:
        """Validate and store a manifest, tagging it if ``reference`` is a tag; log a push event.

        ``before(conn, repository_id)`` runs in the push's transaction once the repository is locked
        for writing, before the references are checked (a restore links its blobs there). ``lazy``
        stores a manifest whose blobs and children are not here yet (the pull-through cache fetches
        each on its first read). ``new_tag_only`` raises ``TagExists`` if the tag exists when the
        push would move it (checked where tag moves are serialised)."""
        tag, claimed = parse_reference(reference)
        parsed = parse_manifest(payload, content_type)
        if claimed is not None:
            algorithm, _ = parse_digest(claimed)
            digest = compute_digest(payload, algorithm)
            if digest != claimed:
                raise RegistryError(
                    ErrorCode.DIGEST_INVALID,
                    f"manifest digest is {digest}, not {claimed}",
                    detail={"expected": claimed, "actual": digest},
                )
        else:
            digest = compute_digest(payload)
        platform = self._platform_of(parsed)
        total_size = min(
            MAX_SIZE,  # foreign layers may claim any int64 size; the column holds no more
            len(payload) + sum(d.size for d in ((parsed.config,) if parsed.config else ()) + parsed.layers),
        )

        self._check_quota(repository, digest, len(payload))
        inserted = False

        def work(conn: Connection) -> None:
            # Three round trips on PostgreSQL: the repository's lock with the reference checks;
            # the manifest's row with the event, the tag move's lock and the tag's row; the commit.
            # Every push takes its locks in this order (row shared, manifest, row update, tag).
            nonlocal inserted
            now = utcnow()
            locking = self._locks.send_writable(conn, repository)
            checks = None if lazy or before is not None else send_references(conn, repository, parsed)
            repo = self._locks.writable_from(conn, locking, repository, now)
            repo_id = repo.id
            if before is not None:
                before(conn, repo_id)
            if not lazy:
                check_references(parsed, checks or send_references(conn, repository, parsed))
            row = {
                "repository_id": repo_id,
                "digest": digest,
                "media_type": parsed.media_type,
                "artifact_type": parsed.artifact_type,
                "config_media_type": parsed.config.media_type if parsed.config else None,
                "size": len(payload),
                "total_size": total_size,
                "architecture": platform[1],
                "os": platform[0],
                "payload": payload,
                "subject_digest": parsed.subject.digest if parsed.subject else None,
                "annotations": parsed.annotations,
                "created_at": now,
            }
            new_manifest = prepared.send(conn, INSERT_MANIFEST[conn.dialect.name], row)
            is_chart = parsed.config is not None and parsed.config.media_type == mt.HELM_CONFIG
            self._events.record(
                conn,
                CHART_PUSH if is_chart else PUSH,
                repository,
                tag=tag,
                digest=digest,
                media_type=parsed.media_type,
                artifact_type=parsed.artifact_type,
                size=len(payload),
                origin=origin,
            )
            # The row update serialises the repository's tag moves from here to the commit: keep
            # this part short (the event above is recorded first; a refused move rolls it back).
            touch_repository(conn, repo_id, now)
            tag_state = None if tag is None else self._locks.send_tag_state(conn, repo, tag)
            created = new_manifest.first()
            inserted = created is not None
            if created is not None:
                manifest_id = created.id
                insert_references(conn, manifest_id, parsed)
            else:
                manifest_id = prepared.scalar(conn, MANIFEST_ID, {"repository_id": repo_id, "digest": digest})
                if manifest_id is None:  # garbage collection deleted it between the two statements
                    raise BlobBusy(digest)
            if tag is not None and tag_state is not None:
                self._move_tag(conn, repo, tag, tag_state, manifest_id, now, new_tag_only=new_tag_only)

        self._db.run_write(work, pipelined=True)
        if inserted and self._quota is not None:
            self._quota.added(len(payload))
        self._cache.invalidate_content(repository)
        self._db.when_durable(self._events.committed)
        return PushedManifest(digest, parsed.subject.digest if parsed.subject else None)

    def _move_tag(
        self,
        conn: Connection,
        repo: RepositoryLocks,
        tag: str,
        tag_state: prepared.Sent,
        manifest_id: int,
        now: datetime,
        *,
        new_tag_only: bool,
    ) -> None:
        """Point ``tag`` at ``manifest_id`` (its row read by ``send_tag_state``), unless that moves
        a locked or write-once tag; TagExists if ``new_tag_only`` and the tag is there."""
        previous = self._locks.tag_move_from(tag_state, repo, tag, manifest_id)
        if new_tag_only and previous is not None:
            raise TagExists(repo.name, tag)
        row = {
            "repository_id": repo.id,
            "name": tag,
            "manifest_id": manifest_id,
            "created_at": now,
            "updated_at": now,
        }
        prepared.execute_later(conn, UPSERT_TAG[conn.dialect.name], row)
        if previous is not None and previous != manifest_id:
            self.hooks.dropped(conn, repo.id, [previous])

    def _check_quota(self, repository: str, digest: str, size: int) -> None:
        """A manifest the repository does not hold yet must fit the storage quota (manifests count too)."""
        if self._quota is None:
            return
        try:
            self._quota.check_new_blob(size)
        except RegistryError:
            # Looked up only when refused: a re-push of a manifest the repository holds adds nothing.
            if self._db.lookup_row(MANIFEST_BY_DIGEST, {"repository": repository, "digest": digest}) is None:
                raise

    def _platform_of(self, parsed: ParsedManifest) -> tuple[str | None, str | None]:
        """(os, architecture) from an image's config blob, when it is an image config."""
        config = parsed.config
        if config is None or config.media_type not in IMAGE_CONFIG_TYPES or config.size > MAX_CONFIG_READ:
            return None, None
        data = self.recent.get(config.digest) if self.recent is not None else None
        try:
            if data is None:
                self._db.refuse_inline("a read from the blob store")
                row = self._db.lookup_row(CONFIG_BLOB, {"digest": config.digest})
                if row is None or row[0] != config.size:  # never read a blob larger than declared
                    return None, None
                data = b"".join(self._store.read(config.digest, location=row[1]))
            if len(data) != config.size:
                return None, None
            document: Any = json.loads(data)
        except (ValueError, OSError, RecursionError, StorageError):
            return None, None
        if not isinstance(document, dict):
            return None, None
        return platform_value(document, "os"), platform_value(document, "architecture")

    # -- delete -----------------------------------------------------------------------------

    def delete(
        self,
        repository: str,
        reference: str,
        origin: Origin | None = None,
        check: Callable[[Connection, int], None] | None = None,
        former_tags: Sequence[str] = (),
    ) -> None:
        """Delete a manifest (by digest, with its tags) or just a tag (untag); log the event.

        ``check(conn, manifest_id)`` runs first inside the transaction of a delete by digest and may
        raise to refuse it (retention re-checks there that the manifest is still deletable).
        ``former_tags``: tags the caller removed from it just before (purge), which the recycle bin
        records with the ones it still has.
        """
        tag, digest = parse_reference(reference)

        def work(conn: Connection) -> None:
            repo_id = require_repository(conn, repository)
            if digest is not None:
                self._refuse_if_referenced(conn, repo_id, digest)
                row = conn.execute(
                    sa.select(manifests.c.id, manifests.c.media_type, manifests.c.config_media_type).where(
                        manifests.c.repository_id == repo_id, manifests.c.digest == digest
                    )
                ).first()
                if row is None:
                    raise _manifest_unknown(repository, reference)
                self._locks.check_manifest_delete(conn, repo_id, row.id, digest)
                if check is not None:
                    check(conn, row.id)
                self.hooks.deleting(conn, repository, repo_id, [row.id], {row.id: former_tags})
                conn.execute(manifests.delete().where(manifests.c.id == row.id))
                action = CHART_DELETE if row.config_media_type == mt.HELM_CONFIG else DELETE
                self._events.record(
                    conn, action, repository, digest=digest, media_type=row.media_type, origin=origin
                )
            else:
                pointed = conn.execute(
                    sa.select(manifests.c.id, manifests.c.digest, manifests.c.media_type)
                    .select_from(tags.join(manifests, manifests.c.id == tags.c.manifest_id))
                    .where(tags.c.repository_id == repo_id, tags.c.name == tag)
                ).first()
                if pointed is None:
                    raise _manifest_unknown(repository, reference)
                self._locks.check_untag(conn, repo_id, tag)
                conn.execute(tags.delete().where(tags.c.repository_id == repo_id, tags.c.name == tag))
                self.hooks.dropped(conn, repo_id, [pointed.id])
                self._events.record(
                    conn,
                    UNTAG,
                    repository,
                    tag=tag,
                    digest=pointed.digest,
                    media_type=pointed.media_type,
                    origin=origin,
                )
            touch_repository(conn, repo_id)

        self._db.run_write(work)
        self._cache.invalidate_content(repository)
        self._events.committed()

    @staticmethod
    def _refuse_if_referenced(conn: Connection, repo_id: int, digest: str) -> None:
        """An index still listing this manifest would break: delete the index first (as Harbor does)."""
        parent = conn.execute(
            sa.select(manifests.c.digest)
            .select_from(manifest_children.join(manifests))
            .where(manifests.c.repository_id == repo_id, manifest_children.c.child_digest == digest)
            .limit(1)
        ).scalar()
        if parent is not None:
            raise RegistryError(
                ErrorCode.DENIED,
                f"manifest {digest} is part of index {parent}; delete the index first",
                status=409,
                detail={"digest": digest, "index": parent},
            )

    # -- referrers --------------------------------------------------------------------------

    def referrers(
        self, repository: str, digest: str, artifact_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Descriptors of the manifests in ``repository`` whose subject is ``digest``."""
        parse_digest(digest)
        with self._db.read() as conn:
            repo = conn.execute(
                sa.select(repositories.c.id, repositories.c.read_enabled).where(
                    repositories.c.name == repository
                )
            ).first()
            if repo is None:
                return []
            if not repo.read_enabled:  # the list is a manifest the registry serves, with their annotations
                raise denied(f"repository {repository!r}", "readEnabled", "pulling it")
            repo_id = repo.id
            query = sa.select(
                manifests.c.media_type,
                manifests.c.size,
                manifests.c.digest,
                manifests.c.artifact_type,
                manifests.c.annotations,
            ).where(
                manifests.c.repository_id == repo_id,
                manifests.c.subject_digest == digest,
                manifests.c.list_enabled,  # an unlisted referrer is hidden, as in other listings
            )
            if artifact_type is not None:
                query = query.where(manifests.c.artifact_type == artifact_type)
            rows = conn.execute(query.order_by(manifests.c.created_at, manifests.c.digest)).all()
        descriptors = []
        for row in rows:
            descriptor: dict[str, Any] = {"mediaType": row.media_type, "size": row.size, "digest": row.digest}
            if row.artifact_type:
                descriptor["artifactType"] = row.artifact_type
            if row.annotations:
                descriptor["annotations"] = row.annotations
            descriptors.append(descriptor)
        return descriptors
