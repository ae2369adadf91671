"""Scope maps: which repositories a token may touch and how (ACR's `az acr scope-map`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from dockyard.access.models import identities, scope_map_rules, scope_maps
from dockyard.access.permissions import DATA_ACTIONS, SYSTEM_SCOPE_MAPS, valid_pattern
from dockyard.access.services.generation import write_and_bump
from dockyard.db import Database, as_utc, utcnow
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.tiers.services import TierService

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


@dataclass(frozen=True)
class ScopeMapInfo:
    name: str
    description: str | None
    system: bool
    actions: dict[str, list[str]]  # repository pattern -> sorted actions
    created_at: datetime


def parse_rules(entries: Iterable[tuple[str, Iterable[str]]]) -> set[tuple[str, str]]:
    """Validate (repository pattern, actions) pairs into (pattern, action) rules."""
    rules = set()
    for pattern, actions in entries:
        if not valid_pattern(pattern):
            raise RegistryError(
                ErrorCode.INVALID_REQUEST,
                f"{pattern!r} is not a repository name, a 'prefix/*' wildcard or '*'",
            )
        for action in actions:
            if action not in DATA_ACTIONS:
                raise RegistryError(
                    ErrorCode.INVALID_REQUEST,
                    f"unknown action {action!r}; use {', '.join(sorted(DATA_ACTIONS))}",
                )
            rules.add((pattern, action))
    return rules


def _not_found(name: str) -> RegistryError:
    return RegistryError(ErrorCode.NOT_FOUND, f"scope map {name!r} not found")


def _find(conn: sa.Connection, name: str) -> sa.Row:
    row = conn.execute(sa.select(scope_maps).where(scope_maps.c.name == name)).first()
    if row is None:
        raise _not_found(name)
    return row


def _user_map_id(conn: sa.Connection, name: str, verb: str) -> int:
    """The id of a scope map users may change; a system map refuses to be ``verb`` (403)."""
    row = _find(conn, name)
    if row.system:
        raise RegistryError(ErrorCode.DENIED, f"system scope map {name!r} cannot be {verb}", status=403)
    return row.id


class ScopeMapService:
    """Creates, changes, lists and deletes scope maps."""

    def __init__(
        self, db: Database, tiers: TierService, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self._db = db
        self._tiers = tiers
        self.on_change = on_change

    def ensure_system_maps(self) -> None:
        """Create `_repositories_admin|pull|push` if missing."""
        now = utcnow()

        def work(conn: sa.Connection) -> None:
            existing = set(conn.execute(sa.select(scope_maps.c.name).where(scope_maps.c.system)).scalars())
            for name, actions in SYSTEM_SCOPE_MAPS.items():
                if name in existing:
                    continue
                map_id = conn.execute(
                    scope_maps.insert()
                    .values(
                        name=name,
                        description=f"Built-in: {', '.join(sorted(actions))} on every repository",
                        system=True,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(scope_maps.c.id)
                ).scalar_one()
                conn.execute(
                    scope_map_rules.insert(),
                    [{"scope_map_id": map_id, "repository": "*", "action": a} for a in sorted(actions)],
                )

        self._db.run_write(work)

    def create(self, name: str, rules: set[tuple[str, str]], description: str | None = None) -> ScopeMapInfo:
        if not name or len(name) > 50 or not set(name) <= NAME_CHARS:
            raise RegistryError(
                ErrorCode.INVALID_REQUEST, "scope map names are 1-50 letters, digits and dashes"
            )
        if not rules:
            raise RegistryError(
                ErrorCode.INVALID_REQUEST, "a scope map needs at least one repository and action"
            )
        now = utcnow()

        def work(conn: sa.Connection) -> None:
            if conn.execute(sa.select(scope_maps.c.id).where(scope_maps.c.name == name)).first():
                raise RegistryError(ErrorCode.ALREADY_EXISTS, f"scope map {name!r} already exists")
            self._tiers.check_count(conn, "scope_maps")
            map_id = conn.execute(
                scope_maps.insert()
                .values(name=name, description=description, system=False, created_at=now, updated_at=now)
                .returning(scope_maps.c.id)
            ).scalar_one()
            conn.execute(
                scope_map_rules.insert(),
                [{"scope_map_id": map_id, "repository": p, "action": a} for p, a in sorted(rules)],
            )

        self._db.run_write(work)
        return self.show(name)

    def update(
        self,
        name: str,
        *,
        add: set[tuple[str, str]] | None = None,
        remove: set[tuple[str, str]] | None = None,
        description: str | None = None,
    ) -> ScopeMapInfo:
        """Add and remove rules; the change applies at once to every token using the map."""

        def work(conn: sa.Connection) -> None:
            map_id = _user_map_id(conn, name, "changed")
            for pattern, action in remove or ():
                conn.execute(
                    scope_map_rules.delete().where(
                        scope_map_rules.c.scope_map_id == map_id,
                        scope_map_rules.c.repository == pattern,
                        scope_map_rules.c.action == action,
                    )
                )
            current = set(
                conn.execute(
                    sa.select(scope_map_rules.c.repository, scope_map_rules.c.action).where(
                        scope_map_rules.c.scope_map_id == map_id
                    )
                )
            )
            new = sorted((add or set()) - current)
            if new:
                conn.execute(
                    scope_map_rules.insert(),
                    [{"scope_map_id": map_id, "repository": p, "action": a} for p, a in new],
                )
            if not (current | set(new)):
                raise RegistryError(ErrorCode.INVALID_REQUEST, "a scope map cannot be left without rules")
            values = {"updated_at": utcnow()}
            if description is not None:
                values["description"] = description
            conn.execute(scope_maps.update().where(scope_maps.c.id == map_id).values(**values))

        write_and_bump(self._db, work, self.on_change)
        return self.show(name)

    def list(self) -> list[ScopeMapInfo]:
        with self._db.read() as conn:
            names = list(conn.execute(sa.select(scope_maps.c.name).order_by(scope_maps.c.name)).scalars())
            return [self._info(conn, n) for n in names]

    def show(self, name: str) -> ScopeMapInfo:
        with self._db.read() as conn:
            return self._info(conn, name)

    @staticmethod
    def _info(conn: sa.Connection, name: str) -> ScopeMapInfo:
        row = _find(conn, name)
        actions: dict[str, list[str]] = {}
        for pattern, action in conn.execute(
            sa.select(scope_map_rules.c.repository, scope_map_rules.c.action)
            .where(scope_map_rules.c.scope_map_id == row.id)
            .order_by(scope_map_rules.c.repository, scope_map_rules.c.action)
        ):
            actions.setdefault(pattern, []).append(action)
        return ScopeMapInfo(row.name, row.description, row.system, actions, as_utc(row.created_at))

    def delete(self, name: str) -> None:
        def work(conn: sa.Connection) -> None:
            map_id = _user_map_id(conn, name, "deleted")
            users = conn.execute(
                sa.select(identities.c.name).where(identities.c.scope_map_id == map_id).limit(1)
            ).scalar()
            if users is not None:
                raise RegistryError(
                    ErrorCode.ALREADY_EXISTS, f"token {users!r} still uses scope map {name!r}"
                )
            conn.execute(scope_maps.delete().where(scope_maps.c.id == map_id))

        write_and_bump(self._db, work, self.on_change)
