"""Credential sets and cache rules: create, list, show, update, delete; the rules snapshot."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.cache.models import cache_rules, cache_tags, credential_sets
from dockyard.cache.rules import (
    Rule,
    RuleSet,
    check_name,
    check_rule,
    normal_login_server,
    parse_source,
    parse_target,
)
from dockyard.db import Database, utcnow
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.models import manifests, repositories
from dockyard.tiers.services import TierService
from dockyard.upstream.interfaces import Credentials

log = logging.getLogger(__name__)

#: Other processes see a rule change within this many seconds; this process at once.
SNAPSHOT_SECONDS = 3.0


@dataclass(frozen=True)
class CredentialSetInfo:
    """A credential set as the API shows it (never the password)."""

    name: str
    login_server: str
    username: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class CacheRuleInfo:
    name: str
    source_repo: str
    target_repo: str
    credential_set: str | None
    created_at: datetime
    updated_at: datetime


def _not_found(what: str, name: str) -> RegistryError:
    return RegistryError(ErrorCode.NOT_FOUND, f"{what} {name[:80]!r} not found")


def _exists(what: str, name: str) -> RegistryError:
    return RegistryError(ErrorCode.ALREADY_EXISTS, f"{what} {name[:80]!r} already exists")


RULE_COLUMNS = (
    cache_rules.c.id,
    cache_rules.c.name,
    cache_rules.c.source_repo,
    cache_rules.c.target_repo,
    credential_sets.c.name.label("credential_set"),
    cache_rules.c.created_at,
    cache_rules.c.updated_at,
)
RULES = sa.select(*RULE_COLUMNS).select_from(cache_rules.outerjoin(credential_sets))


def _rule_info(row: Any) -> CacheRuleInfo:
    return CacheRuleInfo(
        row.name, row.source_repo, row.target_repo, row.credential_set, row.created_at, row.updated_at
    )


class CacheConfigService:
    """Credential sets and cache rules in the database, and a snapshot of the rules for the read path."""

    def __init__(
        self, db: Database, tiers: TierService, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._db = db
        self._tiers = tiers
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: tuple[RuleSet, float] | None = None

    # -- the snapshot -----------------------------------------------------------------------

    def snapshot(self) -> RuleSet | None:
        """The rules if this process read them within ``SNAPSHOT_SECONDS`` (no I/O), else None."""
        with self._lock:
            held = self._snapshot
        if held is None or self._clock() - held[1] >= SNAPSHOT_SECONDS:
            return None
        return held[0]

    def rules(self) -> RuleSet:
        """The rules, read again when the snapshot is older than ``SNAPSHOT_SECONDS``."""
        held = self.snapshot()
        if held is not None:
            return held
        read_at = self._clock()
        with self._db.read() as conn:
            rows = conn.execute(RULES).all()
        rules = RuleSet(rule for rule in map(_rule_of, rows) if rule is not None)
        with self._lock:
            self._snapshot = (rules, read_at)
        return rules

    def forget(self) -> None:
        """Drop the snapshot (after this process changed the rules)."""
        with self._lock:
            self._snapshot = None

    def credentials(self, name: str, login_server: str) -> tuple[Credentials, datetime] | None:
        """A credential set's user name and password (for the upstream client) and when it changed;
        None unless the set exists and is for ``login_server`` (its secret goes nowhere else)."""
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(
                    credential_sets.c.username, credential_sets.c.password, credential_sets.c.updated_at
                ).where(credential_sets.c.name == name, credential_sets.c.login_server == login_server)
            ).first()
        return None if row is None else (Credentials(row.username, row.password), row.updated_at)

    # -- credential sets --------------------------------------------------------------------

    def create_credential_set(
        self, name: str, login_server: str, username: str, password: str
    ) -> CredentialSetInfo:
        """Store a credential set (the password as given: no encryption at rest yet)."""
        check_name(name, "credential set")
        server = normal_login_server(login_server)
        if not username or not password or len(username) > 255 or len(password) > 4096:
            raise RegistryError(ErrorCode.INVALID_REQUEST, "a user name and a password are required")

        def work(conn: Connection) -> CredentialSetInfo:
            if conn.execute(sa.select(credential_sets.c.id).where(credential_sets.c.name == name)).first():
                raise _exists("credential set", name)
            now = utcnow()
            conn.execute(
                credential_sets.insert().values(
                    name=name,
                    login_server=server,
                    username=username,
                    password=password,
                    created_at=now,
                    updated_at=now,
                )
            )
            return CredentialSetInfo(name, server, username, now, now)

        return self._db.run_write(work)

    def list_credential_sets(self) -> list[CredentialSetInfo]:
        with self._db.read() as conn:
            rows = conn.execute(sa.select(credential_sets).order_by(credential_sets.c.name)).all()
        return [
            CredentialSetInfo(r.name, r.login_server, r.username, r.created_at, r.updated_at) for r in rows
        ]

    def show_credential_set(self, name: str) -> CredentialSetInfo:
        for found in self.list_credential_sets():
            if found.name == name:
                return found
        raise _not_found("credential set", name)

    def update_credential_set(
        self,
        name: str,
        *,
        login_server: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> CredentialSetInfo:
        """Change a credential set. A new login server needs the user name and password again (the
        stored secret only ever goes to the server it was given for); a rule using the set must keep
        pointing at its own login server."""
        values: dict[str, Any] = {}
        if login_server is not None:
            values["login_server"] = normal_login_server(login_server)
        for key, value, limit in (("username", username, 255), ("password", password, 4096)):
            if value is not None:
                if not value or len(value) > limit:
                    raise RegistryError(ErrorCode.INVALID_REQUEST, f"{key} must be 1 to {limit} characters")
                values[key] = value

        def work(conn: Connection) -> None:
            row = conn.execute(
                sa.select(credential_sets.c.id, credential_sets.c.login_server).where(
                    credential_sets.c.name == name
                )
            ).first()
            if row is None:
                raise _not_found("credential set", name)
            moved = values.get("login_server", row.login_server) != row.login_server
            if moved and (username is None or password is None):
                raise RegistryError(
                    ErrorCode.INVALID_REQUEST,
                    "a new loginServer needs username and password in the same request: "
                    "the stored password only ever goes to the login server it was given for",
                )
            if moved:
                for source in conn.execute(
                    sa.select(cache_rules.c.source_repo).where(cache_rules.c.credential_set_id == row.id)
                ).scalars():
                    if parse_source(source).registry != values["login_server"]:
                        raise RegistryError(
                            ErrorCode.INVALID_REQUEST,
                            f"credential set {name!r} is used by a rule for {source!r}",
                        )
            conn.execute(
                credential_sets.update()
                .where(credential_sets.c.id == row.id)
                .values(**values, updated_at=utcnow())
            )

        self._db.run_write(work)
        self.forget()
        return self.show_credential_set(name)

    def delete_credential_set(self, name: str) -> None:
        """Delete a credential set no rule uses (409 otherwise)."""

        def work(conn: Connection) -> None:
            row = conn.execute(sa.select(credential_sets.c.id).where(credential_sets.c.name == name)).first()
            if row is None:
                raise _not_found("credential set", name)
            user = conn.execute(
                sa.select(cache_rules.c.name).where(cache_rules.c.credential_set_id == row.id).limit(1)
            ).scalar()
            if user is not None:
                raise RegistryError(
                    ErrorCode.ALREADY_EXISTS,
                    f"credential set {name!r} is used by cache rule {user!r}; change the rule first",
                    status=409,
                )
            conn.execute(credential_sets.delete().where(credential_sets.c.id == row.id))

        self._db.run_write(work)

    # -- cache rules ------------------------------------------------------------------------

    def create_rule(
        self, name: str, source: str, target: str, credential_set: str | None = None
    ) -> CacheRuleInfo:
        """Create a rule: within the tier's limit, a target no other rule has and no pushed content holds."""
        check_name(name)
        parsed = check_rule(source, target)
        target_name, wildcard = parse_target(target)

        def work(conn: Connection) -> CacheRuleInfo:
            self._tiers.check_count(conn, "cache_rules")  # locks, counts with count_rules
            if conn.execute(sa.select(cache_rules.c.id).where(cache_rules.c.name == name)).first():
                raise _exists("cache rule", name)
            holder = conn.execute(
                sa.select(cache_rules.c.name).where(cache_rules.c.target_repo == target)
            ).scalar()
            if holder is not None:
                raise RegistryError(
                    ErrorCode.ALREADY_EXISTS,
                    f"cache rule {holder!r} already has target {target!r}",
                    status=409,
                )
            _refuse_pushed_target(conn, target_name, wildcard)
            cred_id = _credential_set_for(conn, credential_set, parsed.registry)
            now = utcnow()
            conn.execute(
                cache_rules.insert().values(
                    name=name,
                    source_repo=source,
                    target_repo=target,
                    credential_set_id=cred_id,
                    created_at=now,
                    updated_at=now,
                )
            )
            return CacheRuleInfo(name, source, target, credential_set, now, now)

        created = self._db.run_write(work)
        self.forget()
        return created

    def list_rules(self) -> list[CacheRuleInfo]:
        with self._db.read() as conn:
            return [_rule_info(row) for row in conn.execute(RULES.order_by(cache_rules.c.name))]

    def show_rule(self, name: str) -> CacheRuleInfo:
        with self._db.read() as conn:
            row = conn.execute(RULES.where(cache_rules.c.name == name)).first()
        if row is None:
            raise _not_found("cache rule", name)
        return _rule_info(row)

    def update_rule(
        self, name: str, *, credential_set: str | None = None, remove_credential_set: bool = False
    ) -> CacheRuleInfo:
        """Point a rule at another credential set, or at none (as ``az acr cache update``)."""

        def work(conn: Connection) -> None:
            row = conn.execute(
                sa.select(cache_rules.c.id, cache_rules.c.source_repo, cache_rules.c.target_repo).where(
                    cache_rules.c.name == name
                )
            ).first()
            if row is None:
                raise _not_found("cache rule", name)
            if remove_credential_set:
                cred_id = None
            elif credential_set is not None:
                cred_id = _credential_set_for(
                    conn, credential_set, check_rule(row.source_repo, row.target_repo).registry
                )
            else:
                return
            conn.execute(
                cache_rules.update()
                .where(cache_rules.c.id == row.id)
                .values(credential_set_id=cred_id, updated_at=utcnow())
            )

        self._db.run_write(work)
        self.forget()
        return self.show_rule(name)

    def delete_rule(self, name: str) -> None:
        """Delete a rule; what it cached stays, as ordinary repositories that accept pushes again."""

        def work(conn: Connection) -> None:
            row = conn.execute(sa.select(cache_rules.c.target_repo).where(cache_rules.c.name == name)).first()
            if row is None:
                raise _not_found("cache rule", name)
            conn.execute(cache_rules.delete().where(cache_rules.c.name == name))
            target_name, wildcard = parse_target(row.target_repo)
            conn.execute(cache_tags.delete().where(_under(cache_tags.c.repository, target_name, wildcard)))

        self._db.run_write(work)
        self.forget()


def _rule_of(row: Any) -> Rule | None:
    """A stored rule for the read path; one the grammar no longer takes is skipped (logged), never
    an error for every request."""
    try:
        return Rule(
            row.id,
            row.name,
            check_rule(row.source_repo, row.target_repo),
            *parse_target(row.target_repo),
            row.credential_set,
        )
    except RegistryError as exc:
        log.warning("cache rule %s is skipped: %s", row.name, exc.message)
        return None


def _under(column: Any, target: str, wildcard: bool) -> Any:
    if not wildcard:
        return column == target
    escaped = target.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(f"{escaped}/%", escape="\\")


def _refuse_pushed_target(conn: Connection, target: str, wildcard: bool) -> None:
    """A target repository that already holds pushed content cannot become a cache (ACR refuses it)."""
    pushed = conn.execute(
        sa.select(repositories.c.name)
        .select_from(repositories.join(manifests))
        .where(_under(repositories.c.name, target, wildcard))
        .limit(1)
    ).scalar()
    if pushed is not None:
        raise RegistryError(
            ErrorCode.ALREADY_EXISTS,
            f"repository {pushed!r} already holds content (pushed, or cached by a rule since deleted); "
            "it cannot be a cache target",
            status=409,
        )


def _credential_set_for(conn: Connection, name: str | None, registry: str) -> int | None:
    if name is None:
        return None
    row = conn.execute(
        sa.select(credential_sets.c.id, credential_sets.c.login_server).where(credential_sets.c.name == name)
    ).first()
    if row is None:
        raise _not_found("credential set", name)
    if row.login_server != registry:
        raise RegistryError(
            ErrorCode.INVALID_REQUEST,
            f"credential set {name!r} is for {row.login_server}, the rule's source is on {registry}",
        )
    return row.id


def count_rules(conn: Connection) -> int:
    """How many cache rules the registry has (the tier's ``cache_rules`` counter)."""
    return conn.execute(sa.select(sa.func.count()).select_from(cache_rules)).scalar_one()
