"""Repositories and their listings: catalog, tags, and the ACR-style detail views."""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.changes import ContentCache
from dockyard.db import Database, as_utc
from dockyard.events.services import CHART_DELETE, DELETE, EventService, Origin
from dockyard.oci.digest import parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.mediatypes import HELM_CONFIG
from dockyard.oci.names import validate_tag
from dockyard.registry.models import manifest_children, manifests, repositories, tags
from dockyard.registry.services.common import ContentHooks, Page, page_of, require_repository
from dockyard.registry.services.locks import NO_POLICY, OPEN, Attributes, Immutability, LockPolicy


@dataclass(frozen=True)
class RepositoryInfo:
    name: str
    created_at: datetime
    updated_at: datetime
    manifest_count: int
    tag_count: int
    attributes: Attributes = OPEN
    immutability: Immutability = NO_POLICY


@dataclass(frozen=True)
class TagInfo:
    name: str
    digest: str
    created_at: datetime
    updated_at: datetime
    attributes: Attributes = OPEN


@dataclass(frozen=True)
class PlatformRef:
    digest: str
    architecture: str | None
    os: str | None


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    artifact_type: str | None
    config_media_type: str | None
    size: int
    total_size: int
    created_at: datetime
    architecture: str | None
    os: str | None
    subject: str | None
    tags: list[str] = field(default_factory=list)
    references: list[PlatformRef] = field(default_factory=list)
    attributes: Attributes = OPEN


@dataclass(frozen=True)
class DeletedRepository:
    manifests: list[str]
    tags: list[str]


ORDERINGS = ("timedesc", "timeasc")
#: How many repositories' tag lists a process keeps in memory.
TAG_LISTS_CACHED = 128
TAG_VERSION = sa.select(repositories.c.id, repositories.c.created_at, repositories.c.tag_version).where(
    repositories.c.name == sa.bindparam("name")
)
#: A repository's tag list is current while this stands: (id, created_at, tag_version).
TagVersion = tuple[int, str, int]
#: A repository's tag names, sorted, with the version they were read at.
TagList = tuple[TagVersion, tuple[str, ...]]
#: Listed tags only (listEnabled); a change of a tag's attributes bumps ``tag_version``.
TAG_NAMES = (
    sa.select(tags.c.name)
    .where(tags.c.repository_id == sa.bindparam("repository_id"), tags.c.list_enabled)
    .order_by(tags.c.name)
)
_TAG_COLUMNS = (
    tags.c.name,
    manifests.c.digest,
    tags.c.created_at,
    tags.c.updated_at,
    tags.c.read_enabled,
    tags.c.write_enabled,
    tags.c.delete_enabled,
    tags.c.list_enabled,
)


def _tag_info(row: sa.Row) -> TagInfo:
    return TagInfo(row.name, row.digest, as_utc(row.created_at), as_utc(row.updated_at), Attributes.of(row))


class RepositoryService:
    """Lists and deletes repositories, tags and manifests."""

    def __init__(
        self,
        db: Database,
        events: EventService,
        catalog_page_size: int = 1000,
        cache: ContentCache | None = None,
        locks: LockPolicy | None = None,
        hooks: ContentHooks | None = None,
    ) -> None:
        self._db = db
        self._locks = locks or LockPolicy()
        self._events = events
        self.hooks = hooks if hooks is not None else ContentHooks()
        self._cache = cache if cache is not None else ContentCache(0)
        self.catalog_page_size = catalog_page_size
        self._tag_lists: OrderedDict[str, TagList] = OrderedDict()
        self._tag_lists_lock = threading.Lock()

    # -- OCI listings -----------------------------------------------------------------------

    def catalog(self, n: int | None = None, last: str | None = None) -> Page:
        """Repository names in byte order, at most ``n`` (capped at the catalog page size)."""
        limit = min(self.catalog_page_size if n is None else n, self.catalog_page_size)
        query = (
            sa.select(repositories.c.name)
            .where(repositories.c.list_enabled)
            .order_by(repositories.c.name)
            .limit(limit + 1)
        )
        if last:
            query = query.where(repositories.c.name > last)
        with self._db.read() as conn:
            return page_of(list(conn.execute(query).scalars()), limit)

    def tag_names(self, repository: str, n: int | None = None, last: str | None = None) -> Page:
        """Tag names of ``repository`` in byte order after ``last``; all of them when ``n`` is None."""
        return _page(*self._tag_list(repository), n, last)

    def cached_tag_names(self, repository: str, n: int | None = None, last: str | None = None) -> Page | None:
        """``tag_names`` from this process's caches when the content cache vouches for the
        repository's tag version (no I/O), else None."""
        version = self._cache.get(repository, ("tag_version",))
        held = None if version is None else self._held_tag_list(repository, version)
        return None if held is None else _page(*held, n, last)

    def _held_tag_list(self, repository: str, version: TagVersion) -> TagList | None:
        """This process's tag list of ``repository`` if it was read at ``version``."""
        with self._tag_lists_lock:
            held = self._tag_lists.get(repository)
        return held if held is not None and held[0] == version else None

    def _tag_list(self, repository: str) -> TagList:
        """All tag names, sorted; kept in memory while the repository's ``tag_version`` stands.

        Every process checks the version in the database on each call, so a tag pushed
        through any process is seen at once.
        """
        generation = self._cache.generation()
        row = self._db.run_lookup(lambda conn: conn.execute(TAG_VERSION, {"name": repository}).first())
        if row is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {repository!r} not known to registry")
        version = (row.id, str(row.created_at), row.tag_version)  # SQLite reuses a deleted row's id
        self._cache.put(repository, ("tag_version",), version, generation)
        held = self._held_tag_list(repository, version)
        if held is not None:
            return held
        with self._db.read() as conn:
            names = tuple(conn.execute(TAG_NAMES, {"repository_id": row.id}).scalars())
        with self._tag_lists_lock:
            self._tag_lists[repository] = (version, names)
            self._tag_lists.move_to_end(repository)
            while len(self._tag_lists) > TAG_LISTS_CACHED:
                self._tag_lists.popitem(last=False)
        return version, names

    # -- details (ACR's /acr/v1 view) ---------------------------------------------------------

    def info(self, repository: str) -> RepositoryInfo:
        with self._db.read() as conn:
            row = conn.execute(sa.select(repositories).where(repositories.c.name == repository)).first()
            if row is None:
                require_repository(conn, repository)
            assert row is not None
            manifest_count = conn.execute(
                sa.select(sa.func.count()).select_from(manifests).where(manifests.c.repository_id == row.id)
            ).scalar_one()
            tag_count = conn.execute(
                sa.select(sa.func.count()).select_from(tags).where(tags.c.repository_id == row.id)
            ).scalar_one()
            policy = self._locks.read(conn, repository).immutability
        return RepositoryInfo(
            row.name,
            as_utc(row.created_at),
            as_utc(row.updated_at),
            manifest_count,
            tag_count,
            Attributes.of(row),
            policy,
        )

    def tag_details(
        self,
        repository: str,
        n: int | None = None,
        last: str | None = None,
        orderby: str | None = None,
        digest: str | None = None,
    ) -> tuple[list[TagInfo], bool]:
        """Tags with their digests and times, by name or by last update."""
        if orderby is not None and orderby not in ORDERINGS:
            raise RegistryError(
                ErrorCode.UNSUPPORTED, f"orderby must be one of {', '.join(ORDERINGS)}", status=400
            )
        if digest is not None:
            parse_digest(digest)
        with self._db.read() as conn:
            repo_id = require_repository(conn, repository)
            query = (
                sa.select(*_TAG_COLUMNS)
                .select_from(tags.join(manifests, manifests.c.id == tags.c.manifest_id))
                .where(tags.c.repository_id == repo_id, tags.c.list_enabled)
            )
            if digest is not None:
                query = query.where(manifests.c.digest == digest)
            query = self._keyset(conn, query, repo_id, last, orderby)
            if n is not None:
                query = query.limit(n + 1)
            rows = conn.execute(query).all()
        more = bool(n) and len(rows) > n
        rows = rows[:n] if n is not None else rows
        return [_tag_info(r) for r in rows], more

    @staticmethod
    def _keyset(
        conn: Connection, query: sa.Select, repo_id: int, last: str | None, orderby: str | None
    ) -> sa.Select:
        if orderby is None:
            if last:
                query = query.where(tags.c.name > last)
            return query.order_by(tags.c.name)
        descending = orderby == "timedesc"
        order = (
            (tags.c.updated_at.desc(), tags.c.name.desc()) if descending else (tags.c.updated_at, tags.c.name)
        )
        if last:
            anchor = conn.execute(
                sa.select(tags.c.updated_at).where(tags.c.repository_id == repo_id, tags.c.name == last)
            ).scalar()
            if anchor is not None:
                key = sa.tuple_(tags.c.updated_at, tags.c.name)
                query = query.where(key < (anchor, last) if descending else key > (anchor, last))
        return query.order_by(*order)

    def tag_detail(self, repository: str, tag: str) -> TagInfo:
        validate_tag(tag)
        with self._db.read() as conn:
            repo_id = require_repository(conn, repository)
            row = conn.execute(
                sa.select(*_TAG_COLUMNS)
                .select_from(tags.join(manifests, manifests.c.id == tags.c.manifest_id))
                .where(tags.c.repository_id == repo_id, tags.c.name == tag)
            ).first()
        if row is None:
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, f"tag {tag!r} unknown in repository {repository!r}"
            )
        return _tag_info(row)

    def manifest_details(
        self, repository: str, n: int | None = None, last: str | None = None, orderby: str | None = None
    ) -> tuple[list[ManifestInfo], bool]:
        """Manifests with tags, sizes, platforms; by digest or by creation time."""
        if orderby is not None and orderby not in ORDERINGS:
            raise RegistryError(
                ErrorCode.UNSUPPORTED, f"orderby must be one of {', '.join(ORDERINGS)}", status=400
            )
        with self._db.read() as conn:
            repo_id = require_repository(conn, repository)
            query = sa.select(manifests).where(manifests.c.repository_id == repo_id, manifests.c.list_enabled)
            if orderby is None:
                if last:
                    query = query.where(manifests.c.digest > last)
                query = query.order_by(manifests.c.digest)
            else:
                descending = orderby == "timedesc"
                if last:
                    anchor = conn.execute(
                        sa.select(manifests.c.created_at).where(
                            manifests.c.repository_id == repo_id, manifests.c.digest == last
                        )
                    ).scalar()
                    if anchor is not None:
                        key = sa.tuple_(manifests.c.created_at, manifests.c.digest)
                        query = query.where(key < (anchor, last) if descending else key > (anchor, last))
                columns = (manifests.c.created_at, manifests.c.digest)
                query = query.order_by(*(c.desc() for c in columns) if descending else columns)
            if n is not None:
                query = query.limit(n + 1)
            rows = conn.execute(query).all()
            more = bool(n) and len(rows) > n
            rows = rows[:n] if n is not None else rows
            return self._describe(conn, rows), more

    def manifest_detail(self, repository: str, digest: str) -> ManifestInfo:
        parse_digest(digest)
        with self._db.read() as conn:
            repo_id = require_repository(conn, repository)
            rows = conn.execute(
                sa.select(manifests).where(manifests.c.repository_id == repo_id, manifests.c.digest == digest)
            ).all()
            if not rows:
                raise RegistryError(
                    ErrorCode.MANIFEST_UNKNOWN, f"manifest {digest} unknown in {repository!r}"
                )
            return self._describe(conn, rows)[0]

    @staticmethod
    def _describe(conn: Connection, rows: list[sa.Row]) -> list[ManifestInfo]:
        ids = [row.id for row in rows]
        tag_names: dict[int, list[str]] = {i: [] for i in ids}
        references: dict[int, list[PlatformRef]] = {i: [] for i in ids}
        if ids:
            for manifest_id, name in conn.execute(
                sa.select(tags.c.manifest_id, tags.c.name)
                .where(tags.c.manifest_id.in_(ids))
                .order_by(tags.c.name)
            ):
                tag_names[manifest_id].append(name)
            for child in conn.execute(
                sa.select(manifest_children).where(manifest_children.c.manifest_id.in_(ids))
            ).all():
                references[child.manifest_id].append(
                    PlatformRef(child.child_digest, child.architecture, child.os)
                )
        return [
            ManifestInfo(
                digest=row.digest,
                media_type=row.media_type,
                artifact_type=row.artifact_type,
                config_media_type=row.config_media_type,
                size=row.size,
                total_size=row.total_size,
                created_at=as_utc(row.created_at),
                architecture=row.architecture,
                os=row.os,
                subject=row.subject_digest,
                tags=tag_names[row.id],
                references=references[row.id],
                attributes=Attributes.of(row),
            )
            for row in rows
        ]

    # -- deletes ----------------------------------------------------------------------------

    def delete(self, repository: str, origin: Origin | None = None) -> DeletedRepository:
        """Delete a repository with all its manifests, tags and blob links (a delete event per manifest)."""

        def work(conn: Connection) -> DeletedRepository:
            repo_id = require_repository(conn, repository)
            self._locks.check_repository_delete(conn, repo_id)
            deleted = conn.execute(
                sa.select(
                    manifests.c.id, manifests.c.digest, manifests.c.media_type, manifests.c.config_media_type
                )
                .where(manifests.c.repository_id == repo_id)
                .order_by(manifests.c.digest)
            ).all()
            tag_names = list(
                conn.execute(
                    sa.select(tags.c.name).where(tags.c.repository_id == repo_id).order_by(tags.c.name)
                ).scalars()
            )
            self.hooks.deleting(conn, repository, repo_id, [row.id for row in deleted])
            conn.execute(repositories.delete().where(repositories.c.id == repo_id))
            for row in deleted:
                action = CHART_DELETE if row.config_media_type == HELM_CONFIG else DELETE
                self._events.record(
                    conn, action, repository, digest=row.digest, media_type=row.media_type, origin=origin
                )
            return DeletedRepository([row.digest for row in deleted], tag_names)

        result = self._db.run_write(work)
        self._cache.invalidate(repository)
        self._events.committed()
        return result


def _page(version: TagVersion, names: tuple[str, ...], n: int | None, last: str | None) -> Page:
    start = bisect.bisect_right(names, last) if last else 0
    stop = len(names) if n is None else start + n
    return Page(list(names[start:stop]), stop < len(names), version)
