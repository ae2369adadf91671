"""Locks (ACR's changeableAttributes) and the write-once tag policy.

The checks here run inside the caller's write transaction. Each one first locks the
repository's row (``FOR UPDATE``, or ``FOR SHARE`` for blob links; SQLite's single writer
needs neither), and every change of an attribute locks the same row first, so a lock and a
push to the same repository are serialised: whichever commits second sees the other.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard import prepared
from dockyard.changes import ContentCache
from dockyard.db import Database
from dockyard.oci.digest import parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.names import validate_tag
from dockyard.registry.models import manifests, repositories, tags
from dockyard.registry.services.common import ensure_repository, require_repository

#: ACR's JSON names → our columns.
FIELDS = {
    "readEnabled": "read_enabled",
    "writeEnabled": "write_enabled",
    "deleteEnabled": "delete_enabled",
    "listEnabled": "list_enabled",
}
MAX_EXEMPTIONS = 100


@dataclass(frozen=True)
class Attributes:
    """What may be done to a repository, tag or manifest."""

    read_enabled: bool = True
    write_enabled: bool = True
    delete_enabled: bool = True
    list_enabled: bool = True

    @classmethod
    def of(cls, row: Any) -> Attributes:
        return cls(
            bool(row.read_enabled), bool(row.write_enabled), bool(row.delete_enabled), bool(row.list_enabled)
        )

    def as_json(self) -> dict[str, bool]:
        """ACR's ``changeableAttributes`` object."""
        return {key: getattr(self, column) for key, column in FIELDS.items()}


OPEN = Attributes()


@dataclass(frozen=True)
class Immutability:
    """A repository's write-once tag policy; ``inherited`` when it follows the registry default."""

    enabled: bool
    exemptions: tuple[str, ...] = ()
    inherited: bool = True

    def protects(self, tag: str) -> bool:
        """Whether ``tag`` is write-once under this policy (exemptions are fnmatch patterns)."""
        return self.enabled and not any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.exemptions)

    def as_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "exemptions": list(self.exemptions), "inherited": self.inherited}


NO_POLICY = Immutability(False)


@dataclass(frozen=True)
class RepositoryLocks:
    """A repository's id, attributes and tag policy, read with its row locked."""

    id: int
    name: str
    attributes: Attributes
    immutability: Immutability


def denied(what: str, attribute: str, operation: str) -> RegistryError:
    """The refusal of an operation a lock forbids (403 DENIED, naming the lock)."""
    return RegistryError(
        ErrorCode.DENIED,
        f"The operation is disallowed on this registry, repository or image: {what} has "
        f"{attribute}=false, so {operation} is not allowed",
        status=403,
        detail={"target": what, "attribute": attribute},
    )


def immutable(what: str, operation: str) -> RegistryError:
    """The refusal of a change to a write-once tag."""
    return RegistryError(
        ErrorCode.DENIED,
        f"{what} is immutable (the repository's tag immutability policy): {operation} is not allowed",
        status=403,
        detail={"target": what, "policy": "immutableTags"},
    )


def validate_exemptions(values: Iterable[str]) -> tuple[str, ...]:
    """Exemption patterns: tag characters plus fnmatch's ``*?[]``, at most MAX_EXEMPTIONS."""
    found: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value or len(value) > 128:
            raise RegistryError(ErrorCode.INVALID_REQUEST, f"invalid tag exemption {value!r}")
        if not all(c.isascii() and (c.isalnum() or c in "._-*?[]") for c in value):
            raise RegistryError(ErrorCode.INVALID_REQUEST, f"invalid tag exemption {value!r}")
        if value not in found:
            found.append(value)
    if len(found) > MAX_EXEMPTIONS:
        raise RegistryError(ErrorCode.INVALID_REQUEST, f"at most {MAX_EXEMPTIONS} exemptions")
    return tuple(found)


_LOCK_COLUMNS = (
    repositories.c.read_enabled,
    repositories.c.write_enabled,
    repositories.c.delete_enabled,
    repositories.c.list_enabled,
)
_REPOSITORY = sa.select(
    repositories.c.id,
    repositories.c.name,
    *_LOCK_COLUMNS,
    repositories.c.immutable_tags,
    repositories.c.immutable_exemptions,
)
#: PostgreSQL advisory locks on a repository (two-key form, this key space, the id's low 31 bits):
#: a push holds it shared and ``lock_repository`` exclusively, each taken in the statement that
#: then locks the row (a select list is evaluated before its row lock). Row locks do not queue: a
#: stream of pushes' FOR KEY SHARE would keep a FOR UPDATE waiting for good; these locks do queue,
#: so a write lock or a delete waits only for the pushes already under way.
REPOSITORY_LOCKS = 0x646B7972


def _advisory(function: str) -> Any:
    return getattr(sa.func, function)(REPOSITORY_LOCKS, sa.cast(repositories.c.id % 2147483647, sa.Integer))


_BY_ID = repositories.c.id == sa.bindparam("id")
_BY_NAME = repositories.c.name == sa.bindparam("name")
#: FOR UPDATE: attribute changes and deletes, after the pushes under way.
_LOCK_EXCLUSIVE = {
    "sqlite": _REPOSITORY.where(_BY_ID).with_for_update(),
    "postgresql": _REPOSITORY.add_columns(_advisory("pg_advisory_xact_lock")).where(_BY_ID).with_for_update(),
}
#: FOR KEY SHARE: a push holds the repository against deletes and attribute changes but not
#: against other pushes, which bump its counters meanwhile.
_LOCK_NAMED_FOR_PUSH = {
    "sqlite": _REPOSITORY.where(_BY_NAME),
    "postgresql": _REPOSITORY.add_columns(_advisory("pg_advisory_xact_lock_shared"))
    .where(_BY_NAME)
    .with_for_update(read=True, key_share=True),
}
#: How often a push creates its repository again when a delete keeps winning the race to the row.
CREATE_ATTEMPTS = 3
_WRITE_ENABLED = sa.select(repositories.c.write_enabled).where(repositories.c.name == sa.bindparam("name"))
_TAG_STATE = sa.select(tags.c.manifest_id, tags.c.write_enabled).where(
    tags.c.repository_id == sa.bindparam("repository_id"), tags.c.name == sa.bindparam("tag")
)


class LockPolicy:
    """The registry-wide defaults and the in-transaction checks every write path calls."""

    def __init__(self, immutable_default: bool = False, exemptions_default: Iterable[str] = ()) -> None:
        self.default = Immutability(immutable_default, tuple(exemptions_default), True)

    def _locks(self, row: Any) -> RepositoryLocks:
        if row.immutable_tags is None:
            policy = self.default
        else:
            exemptions = row.immutable_exemptions
            policy = Immutability(
                bool(row.immutable_tags),
                tuple(exemptions) if exemptions is not None else self.default.exemptions,
                False,
            )
        return RepositoryLocks(row.id, row.name, Attributes.of(row), policy)

    def lock_repository(self, conn: Connection, repo_id: int) -> RepositoryLocks:
        """The repository's locks, its row locked against concurrent attribute changes."""
        row = prepared.first(conn, _LOCK_EXCLUSIVE[conn.dialect.name], {"id": repo_id})
        if row is None:
            raise sa.exc.NoResultFound(f"repository {repo_id} is gone")
        return self._locks(row)

    def read(self, conn: Connection, name: str) -> RepositoryLocks:
        """The repository's locks without taking a row lock (reads and views)."""
        row = conn.execute(_REPOSITORY.where(repositories.c.name == name)).first()
        if row is None:
            require_repository(conn, name)
        return self._locks(row)

    # -- write paths ------------------------------------------------------------------------

    def writable_repository(
        self, conn: Connection, name: str, now: datetime | None = None
    ) -> RepositoryLocks:
        """Create or find ``name`` for a push; DENIED when the repository is write-locked.

        The row is held FOR KEY SHARE: pushes into one repository proceed together, and a
        manifest push serialises its tag move only from its ``touch_repository`` on.
        """
        return self.writable_from(conn, self.send_writable(conn, name), name, now)

    @staticmethod
    def send_writable(conn: Connection, name: str) -> prepared.Sent:
        """The first half of ``writable_repository``: lock the row, without waiting for it."""
        return prepared.send(conn, _LOCK_NAMED_FOR_PUSH[conn.dialect.name], {"name": name})

    def writable_from(
        self, conn: Connection, sent: prepared.Sent, name: str, now: datetime | None = None
    ) -> RepositoryLocks:
        """The second half of ``writable_repository``: the row ``send_writable`` locked."""
        lock = _LOCK_NAMED_FOR_PUSH[conn.dialect.name]
        row = sent.first()  # one statement for a repository that exists
        for _ in range(CREATE_ATTEMPTS):
            if row is not None:
                break
            # Another node may delete the row ensure_repository found before it is locked: again.
            ensure_repository(conn, name, now)
            row = prepared.first(conn, lock, {"name": name})
        else:
            raise sa.exc.NoResultFound(f"repository {name!r} deleted {CREATE_ATTEMPTS} times in one push")
        locks = self._locks(row)
        if not locks.attributes.write_enabled:
            raise denied(f"repository {name!r}", "writeEnabled", "pushing to it")
        return locks

    @staticmethod
    def refuse_if_write_locked(conn: Connection, name: str) -> None:
        """A fast, unlocked check before an upload starts (the link re-checks in its transaction)."""
        locked = prepared.scalar(conn, _WRITE_ENABLED, {"name": name})
        if locked is not None and not locked:
            raise denied(f"repository {name!r}", "writeEnabled", "pushing to it")

    @staticmethod
    def send_tag_state(conn: Connection, repo: RepositoryLocks, tag: str) -> prepared.Sent:
        """Read ``tag``'s row for ``tag_move_from``, without waiting for it."""
        return prepared.send(conn, _TAG_STATE, {"repository_id": repo.id, "tag": tag})

    @staticmethod
    def tag_move_from(sent: prepared.Sent, repo: RepositoryLocks, tag: str, manifest_id: int) -> int | None:
        """Refuse pointing ``tag`` at ``manifest_id`` if that moves a locked or write-once tag
        (its row as ``send_tag_state`` read it).

        Returns the manifest the tag points at now (None for a new tag), so the caller can tell
        which manifest the move leaves behind without reading the row again.
        """
        row = sent.first()
        if row is None or row.manifest_id == manifest_id:
            return None if row is None else row.manifest_id
        what = f"tag {tag!r} in {repo.name!r}"
        if not row.write_enabled:
            raise denied(what, "writeEnabled", "overwriting it")
        if repo.immutability.protects(tag):
            raise immutable(what, "pointing it at another manifest")
        return row.manifest_id

    # -- delete paths -----------------------------------------------------------------------

    def deletable_repository(self, conn: Connection, repo_id: int, what: str) -> RepositoryLocks:
        """The repository's locks; DENIED if it forbids deleting from it."""
        repo = self.lock_repository(conn, repo_id)
        for attribute in ("write_enabled", "delete_enabled"):
            if not getattr(repo.attributes, attribute):
                raise denied(f"repository {repo.name!r}", _json_name(attribute), f"deleting {what}")
        return repo

    @staticmethod
    def check_tags_deletable(conn: Connection, repo: RepositoryLocks, condition: Any, operation: str) -> None:
        """Refuse if a tag matching ``condition`` (in ``repo``) is locked or write-once."""
        rows = conn.execute(
            sa.select(tags.c.name, tags.c.write_enabled, tags.c.delete_enabled)
            .where(tags.c.repository_id == repo.id, condition)
            .order_by(tags.c.name)
        ).all()
        for row in rows:
            what = f"tag {row.name!r} in {repo.name!r}"
            for attribute in ("write_enabled", "delete_enabled"):
                if not getattr(row, attribute):
                    raise denied(what, _json_name(attribute), operation)
            if repo.immutability.protects(row.name):
                raise immutable(what, operation)

    @staticmethod
    def check_manifests_deletable(
        conn: Connection, repo: RepositoryLocks, condition: Any, operation: str
    ) -> None:
        """Refuse if a manifest matching ``condition`` (in ``repo``) has a write or delete lock."""
        row = conn.execute(
            sa.select(manifests.c.digest, manifests.c.write_enabled, manifests.c.delete_enabled)
            .where(
                manifests.c.repository_id == repo.id,
                condition,
                sa.or_(~manifests.c.write_enabled, ~manifests.c.delete_enabled),
            )
            .order_by(manifests.c.digest)
            .limit(1)
        ).first()
        if row is not None:
            attribute = "writeEnabled" if not row.write_enabled else "deleteEnabled"
            raise denied(f"manifest {row.digest} in {repo.name!r}", attribute, operation)

    def check_repository_delete(self, conn: Connection, repo_id: int) -> None:
        """Deleting a whole repository: refused if it, or any tag or manifest in it, is locked."""
        repo = self.deletable_repository(conn, repo_id, "the repository")
        operation = "deleting the repository"
        self.check_manifests_deletable(conn, repo, sa.true(), operation)
        self.check_tags_deletable(
            conn,
            repo,
            sa.or_(~tags.c.write_enabled, ~tags.c.delete_enabled)
            if not repo.immutability.enabled
            else sa.true(),
            operation,
        )

    def check_manifest_delete(self, conn: Connection, repo_id: int, manifest_id: int, digest: str) -> None:
        """Deleting a manifest (with all its tags)."""
        repo = self.deletable_repository(conn, repo_id, f"manifest {digest}")
        operation = f"deleting manifest {digest}"
        self.check_manifests_deletable(conn, repo, manifests.c.id == manifest_id, operation)
        self.check_tags_deletable(conn, repo, tags.c.manifest_id == manifest_id, operation)

    def check_untag(self, conn: Connection, repo_id: int, tag: str) -> None:
        """Deleting one tag."""
        repo = self.deletable_repository(conn, repo_id, f"tag {tag!r}")
        self.check_tags_deletable(conn, repo, tags.c.name == tag, f"deleting tag {tag!r}")

    def check_blob_delete(self, conn: Connection, repo_id: int, digest: str) -> None:
        """Unlinking a blob from a repository."""
        self.deletable_repository(conn, repo_id, f"blob {digest}")


def _json_name(column: str) -> str:
    return next(key for key, value in FIELDS.items() if value == column)


def parse_attributes(body: Any) -> dict[str, bool]:
    """A PATCH body: any of ACR's four attribute names with a boolean (others are ignored, as ACR does)."""
    if not isinstance(body, Mapping):
        raise RegistryError(ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    changes: dict[str, bool] = {}
    for key, column in FIELDS.items():
        if key in body and body[key] is not None:
            if not isinstance(body[key], bool):
                raise RegistryError(ErrorCode.INVALID_REQUEST, f"{key} must be true or false")
            changes[column] = body[key]
    return changes


class LockService:
    """Changes attributes and the tag policy; every change drops the repository's cached content."""

    def __init__(self, db: Database, policy: LockPolicy, cache: ContentCache) -> None:
        self._db = db
        self.policy = policy
        self._cache = cache

    def _changed(self, repository: str) -> None:
        self._cache.invalidate(repository)

    def update_repository(self, repository: str, changes: Mapping[str, bool]) -> None:
        """Set a repository's attributes (a partial update)."""

        def work(conn: Connection) -> None:
            repo_id = require_repository(conn, repository)
            self.policy.lock_repository(conn, repo_id)
            if changes:
                conn.execute(repositories.update().where(repositories.c.id == repo_id).values(**changes))

        self._db.run_write(work)
        self._changed(repository)

    def update_tag(self, repository: str, tag: str, changes: Mapping[str, bool]) -> None:
        """Set a tag's attributes; bumps the tag list version so cached tag lists are rebuilt."""
        validate_tag(tag)

        def work(conn: Connection) -> None:
            repo_id = require_repository(conn, repository)
            self.policy.lock_repository(conn, repo_id)
            found = conn.execute(
                tags.update().where(tags.c.repository_id == repo_id, tags.c.name == tag).values(**changes)
                if changes
                else sa.select(tags.c.name).where(tags.c.repository_id == repo_id, tags.c.name == tag)
            )
            count = found.rowcount if changes else len(found.all())
            if not count:
                raise RegistryError(
                    ErrorCode.MANIFEST_UNKNOWN, f"tag {tag!r} unknown in repository {repository!r}"
                )
            conn.execute(
                repositories.update()
                .where(repositories.c.id == repo_id)
                .values(tag_version=repositories.c.tag_version + 1)
            )

        self._db.run_write(work)
        self._changed(repository)

    def update_manifest(self, repository: str, digest: str, changes: Mapping[str, bool]) -> None:
        """Set a manifest's attributes."""
        parse_digest(digest)

        def work(conn: Connection) -> None:
            repo_id = require_repository(conn, repository)
            self.policy.lock_repository(conn, repo_id)
            where = (manifests.c.repository_id == repo_id, manifests.c.digest == digest)
            found = conn.execute(
                manifests.update().where(*where).values(**changes)
                if changes
                else sa.select(manifests.c.id).where(*where)
            )
            if not (found.rowcount if changes else len(found.all())):
                raise RegistryError(
                    ErrorCode.MANIFEST_UNKNOWN, f"manifest {digest} unknown in {repository!r}"
                )

        self._db.run_write(work)
        self._changed(repository)

    def immutability(self, repository: str) -> Immutability:
        """The repository's write-once tag policy (its own, or the registry default)."""
        with self._db.read() as conn:
            return self.policy.read(conn, repository).immutability

    def set_immutability(
        self, repository: str, enabled: bool | None, exemptions: Iterable[str] | None
    ) -> Immutability:
        """Set (or with ``enabled=None`` reset to the registry default) the write-once tag policy."""
        checked = validate_exemptions(exemptions) if exemptions is not None else None

        def work(conn: Connection) -> Immutability:
            repo_id = require_repository(conn, repository)
            self.policy.lock_repository(conn, repo_id)
            values: dict[str, Any] = {"immutable_tags": enabled}
            values["immutable_exemptions"] = (
                list(checked) if checked is not None and enabled is not None else None
            )
            conn.execute(repositories.update().where(repositories.c.id == repo_id).values(**values))
            return self.policy.lock_repository(conn, repo_id).immutability

        result = self._db.run_write(work)
        self._changed(repository)
        return result
