"""Records the registry services return, and the queries they share."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard import prepared
from dockyard.db import per_dialect, utcnow
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.models import blobs, repositories, repository_blobs


@dataclass(frozen=True)
class BlobInfo:
    """A blob as one repository sees it."""

    digest: str
    size: int
    #: Where the store keeps it when not at the digest's own place (``blobs.location``).
    location: str | None = None


@dataclass(frozen=True)
class UploadState:
    """Where an upload session stands."""

    id: str
    repository: str
    size: int


@dataclass(frozen=True)
class ManifestRecord:
    """A stored manifest, byte-exact."""

    digest: str
    media_type: str
    payload: bytes


@dataclass(frozen=True)
class Page:
    """One page of a sorted listing; ``more`` says whether a next page exists."""

    items: list[str]
    more: bool
    #: Identifies the exact data the page came from, for callers that cache what they build from it.
    version: object = None


#: Called inside a delete's write transaction before manifests go: (conn, repository, repository id,
#: manifest ids, tags some of them had until the deleter removed them just before: manifest id →
#: names). Its rows (tags, references) are still there; raising aborts the delete.
BeforeDelete = Callable[[Connection, str, int, Sequence[int], Mapping[int, Sequence[str]]], None]
#: Called inside a write transaction after tags were removed from or moved off manifests:
#: (conn, repository id, ids of the manifests that lost a tag).
TagsDropped = Callable[[Connection, int, Sequence[int]], None]


class BlobQuota(Protocol):
    """The storage quota uploads consult (the tiers room's StorageQuota): each raises to refuse."""

    def check_start(self) -> None: ...
    def check_start_known(self) -> bool: ...
    def check_new_blob(self, size: int) -> None: ...
    def added(self, size: int) -> None: ...


class PullThrough(Protocol):
    """What the registry asks a pull-through cache (the cache room) before reads and pushes.

    ``covers`` answers from memory (safe on the event loop); the others may do network I/O and
    run in worker threads, never inside a transaction.
    """

    def covers(self, repository: str) -> bool | None:
        """Whether a rule caches ``repository``; None when only ``covered`` (which reads) can tell."""
        ...

    def covered(self, repository: str) -> bool:
        """Whether a rule caches ``repository`` (reads the rules if this process's copy is old)."""
        ...

    def manifest(self, repository: str, reference: str, accept: Sequence[str]) -> bool:
        """Make the manifest local and current before a read; True if it came from upstream now."""
        ...

    def blob(self, repository: str, digest: str) -> bool | None:
        """Make a blob the repository lacks local: True if it came from upstream now, False if it was
        found here (linked), None if it is not to be had."""
        ...


@dataclass
class ContentHooks:
    """Extension points other rooms register on at build time (e.g. the recycle bin, retention)."""

    before_delete: list[BeforeDelete] = field(default_factory=list)
    tags_dropped: list[TagsDropped] = field(default_factory=list)
    #: The pull-through cache, if a room provides one: asked before manifest reads, on blob misses,
    #: and before pushes (a cache target refuses them).
    pull_through: PullThrough | None = None

    def deleting(
        self,
        conn: Connection,
        repository: str,
        repo_id: int,
        manifest_ids: Sequence[int],
        former_tags: Mapping[int, Sequence[str]] | None = None,
    ) -> None:
        """Run every ``before_delete`` hook."""
        for hook in self.before_delete:
            hook(conn, repository, repo_id, manifest_ids, former_tags or {})

    def dropped(self, conn: Connection, repo_id: int, manifest_ids: Sequence[int]) -> None:
        """Run every ``tags_dropped`` hook."""
        for hook in self.tags_dropped:
            hook(conn, repo_id, manifest_ids)


REPOSITORY_ID = sa.select(repositories.c.id).where(repositories.c.name == sa.bindparam("name"))
INSERT_REPOSITORY = per_dialect(
    lambda insert: insert(repositories).on_conflict_do_nothing(index_elements=["name"])
)
INSERT_BLOB = per_dialect(
    lambda insert: insert(blobs).on_conflict_do_nothing(index_elements=["digest"]).returning(blobs.c.digest)
)
LINK_BLOB = per_dialect(
    lambda insert: insert(repository_blobs).on_conflict_do_nothing(index_elements=["repository_id", "digest"])
)
TOUCH_REPOSITORY = (
    repositories.update()
    .where(repositories.c.id == sa.bindparam("repository_id"))
    .values(updated_at=sa.bindparam("now"), tag_version=repositories.c.tag_version + 1)
)


def repository_id(conn: Connection, name: str) -> int | None:
    """The id of repository ``name``, or None."""
    return prepared.scalar(conn, REPOSITORY_ID, {"name": name})


def require_repository(conn: Connection, name: str) -> int:
    """The id of repository ``name``, or NAME_UNKNOWN."""
    found = repository_id(conn, name)
    if found is None:
        raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name!r} not known to registry")
    return found


def ensure_repository(conn: Connection, name: str, now: datetime | None = None) -> int:
    """The id of repository ``name``, creating it (concurrency-safe) if needed."""
    found = repository_id(conn, name)
    if found is not None:
        return found
    now = now or utcnow()
    prepared.execute(
        conn, INSERT_REPOSITORY[conn.dialect.name], {"name": name, "created_at": now, "updated_at": now}
    )
    created = repository_id(conn, name)
    assert created is not None
    return created


def link_blob(conn: Connection, repo_id: int, digest: str, size: int, location: str | None = None) -> bool:
    """Record that the store holds ``digest`` (at ``location``) and that repository ``repo_id`` has it.

    An existing ``blobs`` row wins. False when it names another location than the one given:
    the caller's newly committed object at ``location`` is then surplus, to delete after commit.
    """
    now = utcnow()
    dialect = conn.dialect.name
    inserted = conn.execute(
        INSERT_BLOB[dialect], {"digest": digest, "size": size, "created_at": now, "location": location}
    ).first()
    conn.execute(LINK_BLOB[dialect], {"repository_id": repo_id, "digest": digest, "created_at": now})
    if inserted is not None or location is None:
        return True
    return conn.execute(sa.select(blobs.c.location).where(blobs.c.digest == digest)).scalar() == location


def touch_repository(conn: Connection, repo_id: int, now: datetime | None = None) -> None:
    """Mark the repository changed (its tags may have changed: bump ``tag_version``)."""
    prepared.execute_later(conn, TOUCH_REPOSITORY, {"repository_id": repo_id, "now": now or utcnow()})


def page_of(rows: list[str], limit: int | None) -> Page:
    """Turn ``limit + 1`` fetched rows into a page and whether there is more."""
    if limit == 0:
        return Page([], False)
    if limit is not None and len(rows) > limit:
        return Page(rows[:limit], True)
    return Page(rows, False)
