"""Soft delete: deleted manifests go to a recycle bin, from which they are restored or expire."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.db import Database, as_utc, utcnow
from dockyard.events.services import Origin
from dockyard.lifecycle.models import recycled_blobs, recycled_manifests
from dockyard.lifecycle.services.policies import SOFT_DELETE, read_policy
from dockyard.oci.digest import parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.names import validate_tag
from dockyard.registry.models import blobs, manifest_blobs, manifests, repositories, tags
from dockyard.registry.services.common import LINK_BLOB, repository_id
from dockyard.registry.services.manifests import ManifestService

#: Page size of the bin's listings when the caller names none, and the largest it may name.
DEFAULT_PAGE = 100
MAX_PAGE = 1000


@dataclass(frozen=True)
class DeletedManifest:
    """One manifest in the bin."""

    repository: str
    digest: str
    media_type: str
    size: int
    total_size: int
    tags: list[str]
    subject: str | None
    deleted_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class BinCursor:
    """Where a page of a repository's bin ended: the sort key (deletion time, digest) of its last entry."""

    deleted_at: datetime
    digest: str


@dataclass(frozen=True)
class Restored:
    """What a restore brought back, and the tags it left where they now point."""

    digest: str
    tags: list[str] = field(default_factory=list)
    skipped_tags: list[str] = field(default_factory=list)


def _bytewise(conn: Connection, column: Any) -> Any:
    """``column`` compared and sorted by bytes (PostgreSQL's default collation is not)."""
    return column.collate("C") if conn.dialect.name == "postgresql" else column


def _with_tags(conn: Connection) -> tuple[sa.FromClause, Any]:
    """The bin with one row per tag name of an entry (its JSON list expanded), and that name's column."""
    if conn.dialect.name == "postgresql":
        function = sa.func.json_array_elements_text(recycled_manifests.c.tags).table_valued("tag")
        expanded = function.render_derived()
        tag = _bytewise(conn, expanded.c.tag)
    else:
        expanded = sa.func.json_each(recycled_manifests.c.tags).table_valued("value")
        tag = expanded.c.value
    return recycled_manifests.join(expanded, sa.true()), tag


def _unknown(repository: str, digest: str) -> RegistryError:
    return RegistryError(
        ErrorCode.MANIFEST_UNKNOWN,
        f"manifest {digest} is not in the recycle bin of {repository!r}",
        detail={"name": repository, "digest": digest},
    )


class RecycleService:
    """The recycle bin: filled by the registry's delete path while soft delete is enabled."""

    def __init__(
        self, db: Database, manifests: ManifestService, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._db = db
        self._manifests = manifests
        self._clock = clock

    # -- filling the bin (a ContentHooks.before_delete hook) --------------------------------------

    def on_delete(
        self,
        conn: Connection,
        repository: str,
        repo_id: int,
        manifest_ids: Sequence[int],
        former_tags: Mapping[int, Sequence[str]],
    ) -> None:
        """Copy the manifests about to be deleted into the bin, with their tags (those the deleter
        removed just before too: a purge untags, then deletes) and blobs."""
        if not manifest_ids or not read_policy(conn, SOFT_DELETE).enabled:
            return
        now = self._clock()
        ids = list(manifest_ids)
        rows = conn.execute(sa.select(manifests).where(manifests.c.id.in_(ids))).all()
        tag_names: dict[int, list[str]] = {i: list(former_tags.get(i, ())) for i in ids}
        for manifest_id, name in conn.execute(
            sa.select(tags.c.manifest_id, tags.c.name)
            .where(tags.c.manifest_id.in_(ids))
            .order_by(tags.c.name)
        ):
            tag_names[manifest_id].append(name)
        blob_digests: dict[int, list[str]] = {i: [] for i in ids}
        for manifest_id, digest in conn.execute(
            sa.select(manifest_blobs.c.manifest_id, manifest_blobs.c.digest).where(
                manifest_blobs.c.manifest_id.in_(ids)
            )
        ):
            blob_digests[manifest_id].append(digest)
        digests = [row.digest for row in rows]
        earlier: dict[str, list[str]] = {}  # a replaced entry's tags stay restorable
        for digest, names in conn.execute(
            sa.select(recycled_manifests.c.digest, recycled_manifests.c.tags).where(
                recycled_manifests.c.repository == repository, recycled_manifests.c.digest.in_(digests)
            )
        ):
            earlier.setdefault(digest, []).extend(names or [])
        conn.execute(
            recycled_manifests.delete().where(
                recycled_manifests.c.repository == repository, recycled_manifests.c.digest.in_(digests)
            )
        )
        for row in rows:
            recycled_id = conn.execute(
                recycled_manifests.insert().returning(recycled_manifests.c.id),
                {
                    "repository": repository,
                    "digest": row.digest,
                    "media_type": row.media_type,
                    "artifact_type": row.artifact_type,
                    "size": row.size,
                    "total_size": row.total_size,
                    "subject_digest": row.subject_digest,
                    "payload": row.payload,
                    "tags": sorted(set(tag_names[row.id]) | set(earlier.get(row.digest, []))),
                    "deleted_at": now,
                },
            ).scalar_one()
            if blob_digests[row.id]:
                conn.execute(
                    recycled_blobs.insert(),
                    [{"recycled_id": recycled_id, "digest": d} for d in blob_digests[row.id]],
                )

    def kept_blobs(self) -> sa.Select:
        """Blob digests garbage collection keeps while a manifest that references them is in the bin."""
        return sa.select(recycled_blobs.c.digest)

    # -- listing ---------------------------------------------------------------------------------

    def deleted_manifests(
        self, repository: str, n: int = DEFAULT_PAGE, after: BinCursor | None = None
    ) -> tuple[list[DeletedManifest], bool]:
        """The repository's manifests in the bin, newest deletion first: at most ``n`` after ``after``,
        and whether more follow. The cursor holds the sort key, not a row: a restore or expiry meanwhile
        moves nothing."""
        query = (
            sa.select(*[c for c in recycled_manifests.c if c.name != "payload"])  # up to 4 MiB each
            .where(recycled_manifests.c.repository == repository)
            .order_by(recycled_manifests.c.deleted_at.desc(), recycled_manifests.c.digest)
            .limit(n + 1)
        )
        if after is not None:
            query = query.where(
                sa.or_(
                    recycled_manifests.c.deleted_at < after.deleted_at,
                    sa.and_(
                        recycled_manifests.c.deleted_at == after.deleted_at,
                        recycled_manifests.c.digest > after.digest,
                    ),
                )
            )
        with self._db.read() as conn:
            days = read_policy(conn, SOFT_DELETE).days
            rows = conn.execute(query).all()
        return [self._describe(row, days) for row in rows[:n]], len(rows) > n

    def deleted_tags(
        self, repository: str, n: int = DEFAULT_PAGE, last: str | None = None
    ) -> tuple[list[tuple[str, DeletedManifest]], bool]:
        """(tag, manifest) for the tags the repository's manifests in the bin had, by tag then newest
        deletion: the next ``n`` tag *names* after ``last`` with every bin entry of each (a tag that
        pointed at several deleted manifests is never split across pages), and whether more follow."""
        with self._db.read() as conn:
            days = read_policy(conn, SOFT_DELETE).days
            source, tag = _with_tags(conn)
            where = [recycled_manifests.c.repository == repository]
            if last is not None:
                where.append(tag > last)
            names = list(
                conn.execute(
                    sa.select(tag).select_from(source).where(*where).distinct().order_by(tag).limit(n + 1)
                ).scalars()
            )
            if not names:
                return [], False
            listed = [c for c in recycled_manifests.c if c.name != "payload"]
            rows = conn.execute(
                sa.select(tag.label("tag_name"), *listed)
                .select_from(source)
                .where(*where, tag <= names[:n][-1])
                .order_by(tag, recycled_manifests.c.deleted_at.desc(), recycled_manifests.c.digest)
            ).all()
        return [(row.tag_name, self._describe(row, days)) for row in rows], len(names) > n

    def deleted_repositories(self, n: int = DEFAULT_PAGE, last: str | None = None) -> tuple[list[str], bool]:
        """Names with manifests in the bin and no live repository (deleted as a whole), in byte order:
        at most ``n`` after ``last``, and whether more follow."""
        live = sa.select(repositories.c.name).where(repositories.c.name == recycled_manifests.c.repository)
        with self._db.read() as conn:
            name = _bytewise(conn, recycled_manifests.c.repository)
            query = sa.select(name).where(~live.exists()).distinct().order_by(name).limit(n + 1)
            if last is not None:
                query = query.where(name > last)
            found = list(conn.execute(query).scalars())
        return found[:n], len(found) > n

    @staticmethod
    def _describe(row: Any, days: int) -> DeletedManifest:
        deleted_at = as_utc(row.deleted_at)
        return DeletedManifest(
            repository=row.repository,
            digest=row.digest,
            media_type=row.media_type,
            size=row.size,
            total_size=row.total_size,
            tags=list(row.tags or []),
            subject=row.subject_digest,
            deleted_at=deleted_at,
            expires_at=deleted_at + timedelta(days=days),
        )

    # -- restore ---------------------------------------------------------------------------------

    def restore(
        self,
        repository: str,
        digest: str,
        tag: str | None = None,
        force: bool = False,
        origin: Origin | None = None,
    ) -> Restored:
        """Push a manifest from the bin again (the registry's insert path, push events) with its tags.

        Its blobs are linked to the repository again when the registry still holds them. A tag that
        now points at another manifest is taken back only with ``force``. ``tag`` restores that one
        tag instead of those it had. Not recursive: an index needs its children, a referrer its subject.
        """
        parse_digest(digest)
        if tag is not None:
            validate_tag(tag)

        def prepare(conn: Connection) -> tuple[Any, list[str], list[str]]:
            row = conn.execute(
                sa.select(recycled_manifests).where(
                    recycled_manifests.c.repository == repository, recycled_manifests.c.digest == digest
                )
            ).first()
            if row is None:
                raise _unknown(repository, digest)
            repo_id = repository_id(conn, repository)
            if row.subject_digest is not None:
                subject = conn.execute(
                    sa.select(manifests.c.id).where(
                        manifests.c.repository_id == repo_id, manifests.c.digest == row.subject_digest
                    )
                ).first()
                if subject is None:
                    raise RegistryError(
                        ErrorCode.DENIED,
                        f"manifest {digest} refers to {row.subject_digest}, which is not in the repository;"
                        " restore the subject first",
                        status=409,
                        detail={"digest": digest, "subject": row.subject_digest},
                    )
            wanted = [tag] if tag is not None else list(row.tags or [])
            taken, skipped = [], []
            for name in wanted:
                current = conn.execute(
                    sa.select(manifests.c.digest)
                    .select_from(tags.join(manifests, manifests.c.id == tags.c.manifest_id))
                    .where(tags.c.repository_id == repo_id, tags.c.name == name)
                ).scalar()
                (skipped if current not in (None, digest) and not force else taken).append(name)
            return row, taken, skipped

        with self._db.read() as conn:
            row, taken, skipped = prepare(conn)

        def link_blobs(conn: Connection, repo_id: int) -> None:
            # in the push's own transaction: a refused or failed push leaves no links behind
            held = sa.select(blobs.c.digest).where(
                blobs.c.digest.in_(
                    sa.select(recycled_blobs.c.digest).where(recycled_blobs.c.recycled_id == row.id)
                ),
                blobs.c.state == "live",  # not what garbage collection is deleting or deleted
            )
            now = self._clock()
            for blob in conn.execute(held).scalars():
                conn.execute(
                    LINK_BLOB[conn.dialect.name],
                    {"repository_id": repo_id, "digest": blob, "created_at": now},
                )

        payload = bytes(row.payload)
        self._manifests.put(repository, digest, payload, row.media_type, origin, before=link_blobs)
        for name in list(taken):
            try:
                self._manifests.put(repository, name, payload, row.media_type, origin)
            except RegistryError as exc:
                if exc.code != ErrorCode.DENIED:
                    raise
                # a locked or write-once tag, even with force: left alone and reported, as the
                # manifest itself is back (a 403 here would hide that the restore happened)
                taken.remove(name)
                skipped.append(name)

        def forget(conn: Connection) -> None:
            conn.execute(recycled_manifests.delete().where(recycled_manifests.c.id == row.id))

        self._db.run_write(forget)
        return Restored(digest, taken, skipped)

    # -- expiry ----------------------------------------------------------------------------------

    def purge_expired(self, now: datetime | None = None) -> int:
        """Forget bin entries older than the policy's current days (even while it is disabled)."""
        moment = now or self._clock()

        def work(conn: Connection) -> int:
            cutoff = moment - timedelta(days=read_policy(conn, SOFT_DELETE).days)
            result = conn.execute(
                recycled_manifests.delete().where(recycled_manifests.c.deleted_at <= cutoff)
            )
            return result.rowcount or 0

        return self._db.run_write(work)
