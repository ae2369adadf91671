"""Identities and their credentials: the admin user, users, service principals, tokens, role assignments."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from dockyard.access.models import credentials, identities, role_assignments, scope_maps
from dockyard.access.passwords import hash_secret, new_secret
from dockyard.access.permissions import ROLES, valid_role_scope
from dockyard.access.services.generation import write_and_bump
from dockyard.db import Database, as_utc, utcnow
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.tiers.services import TierService

ADMIN = "admin"
USER = "user"
SERVICE_PRINCIPAL = "service_principal"
TOKEN = "token"  # noqa: S105 - an identity kind, not a secret
#: The system identities build runs push with (``system:tasks``): never listed or changed here.
TASK = "task"
KINDS = (ADMIN, USER, SERVICE_PRINCIPAL, TOKEN)
PASSWORD_NAMES = ("password", "password2")
SECRET = "secret"  # noqa: S105 - a credential name, not a secret
#: Docker and ACR log in with this user name and a refresh token as the password.
NULL_GUID = "00000000-0000-0000-0000-000000000000"
IDENTITY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}\Z")
#: Names the system uses for callers that are no identity (compared case-insensitively).
RESERVED_NAMES = frozenset({"anonymous", "system", "everyone", "unknown", NULL_GUID})


@dataclass(frozen=True)
class CredentialInfo:
    name: str
    created_at: datetime
    expires_at: datetime | None
    #: Only right after it was generated; never stored.
    value: str | None = None


@dataclass(frozen=True)
class RoleAssignmentInfo:
    id: str
    assignee: str
    role: str
    scope: str
    created_at: datetime


@dataclass(frozen=True)
class IdentityInfo:
    name: str
    kind: str
    enabled: bool
    description: str | None
    scope_map: str | None
    created_at: datetime
    credentials: list[CredentialInfo] = field(default_factory=list)
    roles: list[RoleAssignmentInfo] = field(default_factory=list)


def _not_found(name: str, kind: str | None = None) -> RegistryError:
    what = {TOKEN: "token", ADMIN: "admin user"}.get(kind or "", "identity")
    return RegistryError(ErrorCode.NOT_FOUND, f"{what} {name!r} not found")


def _invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID_REQUEST, message)


class IdentityService:
    """Creates and manages identities; every change calls ``on_change`` so caches drop what they hold."""

    def __init__(
        self, db: Database, tiers: TierService, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self._db = db
        self._tiers = tiers
        self.on_change = on_change

    # -- reading ----------------------------------------------------------------------------

    def get(self, name: str, kind: str | None = None) -> IdentityInfo:
        with self._db.read() as conn:
            row = conn.execute(sa.select(identities).where(identities.c.name == name)).first()
            if row is None or (kind is not None and row.kind != kind) or row.kind == TASK:
                raise _not_found(name, kind)
            return self._info(conn, row)

    def list(self, kind: str | None = None) -> list[IdentityInfo]:
        query = sa.select(identities).where(identities.c.kind != TASK).order_by(identities.c.name)
        if kind is not None:
            query = query.where(identities.c.kind == kind)
        with self._db.read() as conn:
            return [self._info(conn, row) for row in conn.execute(query).all()]

    def admin(self) -> IdentityInfo | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(identities).where(identities.c.kind == ADMIN)).first()
            return self._info(conn, row) if row else None

    @staticmethod
    def _info(conn: sa.Connection, row: sa.Row) -> IdentityInfo:
        creds = [
            CredentialInfo(c.name, as_utc(c.created_at), as_utc(c.expires_at) if c.expires_at else None)
            for c in conn.execute(
                sa.select(credentials).where(credentials.c.identity_id == row.id).order_by(credentials.c.name)
            ).all()
        ]
        roles = [
            RoleAssignmentInfo(r.id, row.name, r.role, r.scope, as_utc(r.created_at))
            for r in conn.execute(
                sa.select(role_assignments)
                .where(role_assignments.c.identity_id == row.id)
                .order_by(role_assignments.c.role, role_assignments.c.scope)
            ).all()
        ]
        scope_map = None
        if row.scope_map_id is not None:
            scope_map = conn.execute(
                sa.select(scope_maps.c.name).where(scope_maps.c.id == row.scope_map_id)
            ).scalar()
        return IdentityInfo(
            row.name, row.kind, row.enabled, row.description, scope_map, as_utc(row.created_at), creds, roles
        )

    # -- the admin user ---------------------------------------------------------------------

    def bootstrap_admin(self, username: str, password: str | None, *, enabled: bool) -> list[CredentialInfo]:
        """Create the admin user once; return its two passwords if they were generated now.

        ``password`` sets the first password (automation); otherwise both are random.
        """
        if self.admin() is not None:
            return []
        self._check_name(username)
        first = password or new_secret()
        second = new_secret()
        now = utcnow()

        def work(conn: sa.Connection) -> None:
            identity_id = self._insert_identity(
                conn, ADMIN, username, enabled, None, "The registry's admin user", now
            )
            for name, secret in zip(PASSWORD_NAMES, (first, second), strict=True):
                self._insert_credential(conn, identity_id, name, secret, None, now)

        write_and_bump(self._db, work, self.on_change)
        return [CredentialInfo(n, now, None, v) for n, v in zip(PASSWORD_NAMES, (first, second), strict=True)]

    def set_admin_enabled(self, enabled: bool) -> IdentityInfo:
        def work(conn: sa.Connection) -> None:
            if not conn.execute(
                identities.update()
                .where(identities.c.kind == ADMIN)
                .values(enabled=enabled, updated_at=utcnow(), token_version=identities.c.token_version + 1)
            ).rowcount:
                raise _not_found("admin", ADMIN)

        write_and_bump(self._db, work, self.on_change)
        admin = self.admin()
        assert admin is not None
        return admin

    # -- users and service principals --------------------------------------------------------

    def create(self, kind: str, name: str | None, description: str | None = None) -> tuple[IdentityInfo, str]:
        """A user or a service principal (named by a generated app id if ``name`` is None), and its secret."""
        if kind not in (USER, SERVICE_PRINCIPAL):
            raise _invalid("kind must be user or service_principal")
        name = name or str(uuid.uuid4())
        self._check_name(name)
        secret = new_secret()
        now = utcnow()

        def work(conn: sa.Connection) -> None:
            identity_id = self._insert_identity(conn, kind, name, True, None, description, now)
            self._insert_credential(conn, identity_id, SECRET, secret, None, now)

        write_and_bump(self._db, work, self.on_change)
        return self.get(name), secret

    def delete(self, name: str, kind: str | None = None) -> None:
        def work(conn: sa.Connection) -> None:
            row = conn.execute(sa.select(identities).where(identities.c.name == name)).first()
            if row is None or (kind is not None and row.kind != kind) or row.kind in (ADMIN, TASK):
                raise _not_found(name, kind)
            conn.execute(identities.delete().where(identities.c.id == row.id))

        write_and_bump(self._db, work, self.on_change)

    def set_enabled(self, name: str, enabled: bool, kind: str | None = None) -> IdentityInfo:
        def work(conn: sa.Connection) -> None:
            row = conn.execute(sa.select(identities).where(identities.c.name == name)).first()
            if row is None or (kind is not None and row.kind != kind) or row.kind == TASK:
                raise _not_found(name, kind)
            conn.execute(
                identities.update()
                .where(identities.c.id == row.id)
                .values(enabled=enabled, updated_at=utcnow())
            )
            self._revoke_refresh_tokens(conn, row.id)

        write_and_bump(self._db, work, self.on_change)
        return self.get(name)

    def new_credential(
        self, name: str, credential: str, *, expires_in_days: int | None = None, kind: str | None = None
    ) -> CredentialInfo:
        """Generate (or regenerate) one password or secret; the old value stops working at once."""
        expected = PASSWORD_NAMES if kind in (ADMIN, TOKEN) else (*PASSWORD_NAMES, SECRET)
        if credential not in expected:
            raise _invalid(f"credential must be one of {', '.join(expected)}")
        if expires_in_days is not None and expires_in_days < 1:
            raise _invalid("expiry must be at least one day")
        secret = new_secret()
        now = utcnow()
        expires = now + timedelta(days=expires_in_days) if expires_in_days else None

        def work(conn: sa.Connection) -> None:
            query = sa.select(identities).where(identities.c.name == name)
            if kind == ADMIN:
                query = sa.select(identities).where(identities.c.kind == ADMIN)
            row = conn.execute(query).first()
            if row is None or (kind is not None and row.kind != kind) or row.kind == TASK:
                raise _not_found(name, kind)
            conn.execute(
                credentials.delete().where(
                    credentials.c.identity_id == row.id, credentials.c.name == credential
                )
            )
            self._insert_credential(conn, row.id, credential, secret, expires, now)

        write_and_bump(self._db, work, self.on_change)
        return CredentialInfo(credential, now, expires, secret)

    # -- repository-scoped tokens ------------------------------------------------------------

    def create_token(
        self, name: str, scope_map: str, *, enabled: bool = True, expires_in_days: int | None = None
    ) -> IdentityInfo:
        """A token bound to a scope map, with two generated passwords (shown once, in the result)."""
        self._check_name(name)
        now = utcnow()
        expires = now + timedelta(days=expires_in_days) if expires_in_days else None
        values = {n: new_secret() for n in PASSWORD_NAMES}

        def work(conn: sa.Connection) -> None:
            map_id = self._scope_map_id(conn, scope_map)
            self._tiers.check_count(conn, "tokens")
            identity_id = self._insert_identity(conn, TOKEN, name, enabled, map_id, None, now)
            for credential, secret in values.items():
                self._insert_credential(conn, identity_id, credential, secret, expires, now)

        write_and_bump(self._db, work, self.on_change)
        info = self.get(name, TOKEN)
        shown = [
            CredentialInfo(c.name, c.created_at, c.expires_at, values.get(c.name)) for c in info.credentials
        ]
        return IdentityInfo(
            info.name, info.kind, info.enabled, info.description, info.scope_map, info.created_at, shown
        )

    def update_token(
        self, name: str, *, scope_map: str | None = None, enabled: bool | None = None
    ) -> IdentityInfo:
        def work(conn: sa.Connection) -> None:
            row = conn.execute(sa.select(identities).where(identities.c.name == name)).first()
            if row is None or row.kind != TOKEN:
                raise _not_found(name, TOKEN)
            values: dict[str, object] = {"updated_at": utcnow()}
            if scope_map is not None:
                values["scope_map_id"] = self._scope_map_id(conn, scope_map)
            if enabled is not None:
                values["enabled"] = enabled
                values["token_version"] = identities.c.token_version + 1
            conn.execute(identities.update().where(identities.c.id == row.id).values(**values))

        write_and_bump(self._db, work, self.on_change)
        return self.get(name, TOKEN)

    # -- role assignments --------------------------------------------------------------------

    def assign_role(self, assignee: str, role: str, scope: str) -> RoleAssignmentInfo:
        if role not in ROLES:
            raise _invalid(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        if not valid_role_scope(scope):
            raise _invalid("scope must be 'registry', 'repository:<name>' or 'repository:<prefix>/*'")
        assignment = str(uuid.uuid4())
        now = utcnow()

        def work(conn: sa.Connection) -> None:
            row = conn.execute(sa.select(identities).where(identities.c.name == assignee)).first()
            if row is None or row.kind not in (USER, SERVICE_PRINCIPAL):
                raise _invalid(f"{assignee!r} is not a user or service principal")
            exists = conn.execute(
                sa.select(role_assignments.c.id).where(
                    role_assignments.c.identity_id == row.id,
                    role_assignments.c.role == role,
                    role_assignments.c.scope == scope,
                )
            ).first()
            if exists:
                raise RegistryError(ErrorCode.ALREADY_EXISTS, f"{assignee} already has {role} on {scope}")
            conn.execute(
                role_assignments.insert().values(
                    id=assignment, identity_id=row.id, role=role, scope=scope, created_at=now
                )
            )

        write_and_bump(self._db, work, self.on_change)
        return RoleAssignmentInfo(assignment, assignee, role, scope, now)

    def role_assignments(self, assignee: str | None = None) -> list[RoleAssignmentInfo]:
        query = (
            sa.select(role_assignments, identities.c.name)
            .select_from(role_assignments.join(identities))
            .where(identities.c.kind != TASK)
            .order_by(identities.c.name, role_assignments.c.role, role_assignments.c.scope)
        )
        if assignee is not None:
            query = query.where(identities.c.name == assignee)
        with self._db.read() as conn:
            return [
                RoleAssignmentInfo(r.id, r.name, r.role, r.scope, as_utc(r.created_at))
                for r in conn.execute(query).all()
            ]

    def delete_role_assignment(self, assignment_id: str) -> None:
        def work(conn: sa.Connection) -> None:
            system = sa.select(identities.c.id).where(identities.c.kind == TASK)
            if not conn.execute(
                role_assignments.delete().where(
                    role_assignments.c.id == assignment_id, role_assignments.c.identity_id.not_in(system)
                )
            ).rowcount:
                raise RegistryError(ErrorCode.NOT_FOUND, f"role assignment {assignment_id!r} not found")

        write_and_bump(self._db, work, self.on_change)

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _revoke_refresh_tokens(conn: sa.Connection, identity_id: int) -> None:
        conn.execute(
            identities.update()
            .where(identities.c.id == identity_id)
            .values(token_version=identities.c.token_version + 1)
        )

    @staticmethod
    def _check_name(name: str) -> None:
        if not IDENTITY_NAME.match(name):
            raise _invalid(
                "names are 1-128 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
            )
        if name.lower() in RESERVED_NAMES:
            raise _invalid(f"{name!r} is reserved: choose another name")

    @staticmethod
    def _scope_map_id(conn: sa.Connection, name: str) -> int:
        found = conn.execute(sa.select(scope_maps.c.id).where(scope_maps.c.name == name)).scalar()
        if found is None:
            raise RegistryError(ErrorCode.NOT_FOUND, f"scope map {name!r} not found")
        return found

    @staticmethod
    def _insert_identity(
        conn: sa.Connection,
        kind: str,
        name: str,
        enabled: bool,
        scope_map_id: int | None,
        description: str | None,
        now: datetime,
    ) -> int:
        if conn.execute(sa.select(identities.c.id).where(identities.c.name == name)).first():
            raise RegistryError(ErrorCode.ALREADY_EXISTS, f"an identity named {name!r} already exists")
        return conn.execute(
            identities.insert()
            .values(
                kind=kind,
                name=name,
                enabled=enabled,
                scope_map_id=scope_map_id,
                description=description,
                created_at=now,
                updated_at=now,
            )
            .returning(identities.c.id)
        ).scalar_one()

    @staticmethod
    def _insert_credential(
        conn: sa.Connection, identity_id: int, name: str, secret: str, expires: datetime | None, now: datetime
    ) -> None:
        conn.execute(
            credentials.insert().values(
                identity_id=identity_id,
                name=name,
                secret_hash=hash_secret(secret),
                expires_at=expires,
                created_at=now,
            )
        )
