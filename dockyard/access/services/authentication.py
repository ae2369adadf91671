"""Turning credentials into principals: passwords, refresh tokens and access tokens, with caches.

Verifying a password costs ~40 ms of argon2 and a token signature ~0.1 ms, so verified
logins and principals are kept in memory for ``cache_seconds``. Every change to access
replaces the access generation in its own transaction (``generation.py``); each sign-in
check reads it first and drops the caches when it moved, so a change made by any process
(or by ``dockyard admin enable`` on the database) counts at once everywhere.

A wrong password costs the same whether the user exists or not: the check always runs
argon2 against ``CREDENTIALS_CHECKED`` hashes, a stand-in's where the identity has fewer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dockyard.access.models import credentials, identities, role_assignments, scope_map_rules
from dockyard.access.passwords import hash_secret, new_secret, verify_secret
from dockyard.access.permissions import (
    EVERYTHING,
    Permissions,
    Principal,
    permissions_from_roles,
    permissions_from_scope_map,
)
from dockyard.access.services import generation
from dockyard.access.services.identities import ADMIN, NULL_GUID, TASK, TOKEN
from dockyard.access.tokens import ACCESS_GRANT, IDENTITY_TOKEN, REFRESH_GRANT, InvalidToken, TokenService
from dockyard.db import Database, as_utc, utcnow


@dataclass(frozen=True)
class TokenCaller:
    """The bearer of a valid access token: its subject and the access its claims grant."""

    name: str
    kind: str
    access: dict[tuple[str, str], frozenset[str]]
    #: The verified claims (an identity token's name the identity row and credential it stands for).
    claims: dict[str, Any]

    @property
    def is_identity_token(self) -> bool:
        return self.claims.get("use") == IDENTITY_TOKEN


#: Password verifications running at once per process (each holds argon2's 7 MiB for ~40 ms).
PASSWORD_CHECKS_AT_ONCE = 2
#: The most credentials an identity has (password, password2, secret): a failed sign-in checks this many.
CREDENTIALS_CHECKED = 3


class Authenticator:
    """Checks passwords and tokens; loads what an identity may do."""

    def __init__(self, db: Database, tokens: TokenService, *, cache_seconds: float = 30.0) -> None:
        self._db = db
        self._tokens = tokens
        self._ttl = cache_seconds
        self._lock = threading.Lock()
        self._logins: dict[bytes, tuple[str, str, float]] = {}
        self._login_secret = secrets.token_bytes(32)  # the cache keeps keyed hashes, never passwords
        self._principals: dict[str, tuple[Principal | None, float]] = {}
        self._verify_slots = threading.BoundedSemaphore(PASSWORD_CHECKS_AT_ONCE)
        self._generation: str | None = None
        self._stand_in: str | None = None

    def forget(self) -> None:
        """Drop every cached login and principal (after a change to identities or permissions)."""
        with self._lock:
            self._logins.clear()
            self._principals.clear()

    def sync(self) -> None:
        """Drop the caches if access changed anywhere since they were filled (one small read, run
        again on a new connection if the database dropped the first)."""
        current = self._db.run_lookup(generation.current)
        with self._lock:
            if current == self._generation:
                return
            self._generation = current
            self._logins.clear()
            self._principals.clear()

    # -- passwords --------------------------------------------------------------------------

    def _login_key(self, username: str, password: str) -> bytes:
        """The login cache's key for these credentials: a hash keyed for this process."""
        message = len(username.encode()).to_bytes(4, "big") + username.encode() + password.encode()
        return hmac.new(self._login_secret, message, hashlib.sha256).digest()

    def _cached_login(self, username: str, password: str) -> Principal | None:
        """A principal for credentials verified recently, without touching the database; else None."""
        key = self._login_key(username, password)
        with self._lock:
            hit = self._logins.get(key)
        if hit is None or time.monotonic() - hit[2] > self._ttl:
            return None
        principal = self._cached_principal(hit[0])
        if principal is None or hit[1] not in principal.credential_stamps:
            return None
        return replace(principal, credential=hit[1], auth_time=int(time.time()))

    def login(
        self, username: str, password: str, *, admit: Callable[[], None] | None = None
    ) -> Principal | None:
        """The principal these credentials belong to, or None. ``NULL_GUID`` + a refresh token works too.

        ``admit`` is called before anything is checked, the login cache included (it may raise to
        refuse): otherwise a cached right password would be answered where wrong ones are refused.
        """
        if admit is not None:
            admit()
        if username == NULL_GUID:
            return self.refresh_principal(password)
        self.sync()
        principal = self._cached_login(username, password)
        if principal is not None:
            return principal
        with self._verify_slots:  # argon2 is deliberately costly: bound how many run at once
            principal = self._cached_login(username, password)  # verified meanwhile by another request?
            if principal is not None:
                return principal
            return self._verify_login(username, password)

    def _stand_in_hash(self) -> str:
        if self._stand_in is None:
            self._stand_in = hash_secret(new_secret())
        return self._stand_in

    def _verify_login(self, username: str, password: str) -> Principal | None:
        now = utcnow()
        if "\x00" in username:  # no identity has one (and PostgreSQL refuses it in a query)
            username = ""
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(identities.c.id, identities.c.enabled, identities.c.kind).where(
                    identities.c.name == username
                )
            ).first()
            candidates = []
            # a task identity's secrets are known to nobody, and each build run adds one: never by password
            if row is not None and row.enabled and row.kind != TASK:
                candidates = [
                    (c.secret_hash, _stamp(c.name, c.created_at))
                    for c in conn.execute(
                        sa.select(credentials).where(credentials.c.identity_id == row.id)
                    ).all()
                    if c.expires_at is None or as_utc(c.expires_at) > now
                ]
        candidates += [(self._stand_in_hash(), "")] * (CREDENTIALS_CHECKED - len(candidates))
        stamp = next(
            (stamp for secret_hash, stamp in candidates if verify_secret(secret_hash, password)), None
        )
        if not stamp:
            return None
        principal = self.principal(username)
        if principal is not None and stamp not in principal.credential_stamps:
            principal = self.principal(username, fresh=True)  # renewed since this process cached it
        if principal is None or stamp not in principal.credential_stamps:
            return None
        with self._lock:
            self._logins[self._login_key(username, password)] = (username, stamp, time.monotonic())
        return replace(principal, credential=stamp, auth_time=int(time.time()))

    # -- tokens -----------------------------------------------------------------------------

    def refresh_principal(self, token: str) -> Principal | None:
        """The identity a refresh token names, if the token is valid and the identity still enabled."""
        try:
            claims = self._tokens.verify(token, REFRESH_GRANT)
        except InvalidToken:
            return None
        return self.principal_for(claims)

    def identity_principal(self, caller: TokenCaller) -> Principal | None:
        """The identity an identity token (see ``TokenService.issue_access``) stands for, if still valid.

        Access tokens scoped to repositories and anonymous ones stand for no identity: None.
        """
        if not caller.is_identity_token or caller.kind == "anonymous":
            return None
        return self.principal_for(caller.claims)

    def principal_for(self, claims: dict[str, Any]) -> Principal | None:
        """The identity a token was issued to, if it is still that identity, enabled, and the
        credential the token came from has not been renewed since; else None (revoked)."""
        self.sync()
        principal = self.principal(claims["sub"])
        if principal is not None and claims.get("cred") not in principal.credential_stamps:
            principal = self.principal(claims["sub"], fresh=True)  # a credential newer than this cache?
        if principal is None:
            return None
        same = (principal.identity_id, principal.token_version) == (claims.get("iid"), claims.get("ver"))
        if not same or claims.get("cred") not in principal.credential_stamps:
            return None
        auth_time = claims.get("auth_time") or claims["iat"]
        return replace(principal, credential=claims["cred"], auth_time=auth_time)

    def access_caller(self, token: str) -> TokenCaller:
        """The caller an access token stands for; InvalidToken if it is not one."""
        claims = self._tokens.verify(token, ACCESS_GRANT)
        access: dict[tuple[str, str], frozenset[str]] = {}
        for entry in claims.get("access") or []:
            key = (str(entry.get("type")), str(entry.get("name")))
            access[key] = access.get(key, frozenset()) | frozenset(map(str, entry.get("actions") or []))
        return TokenCaller(claims["sub"], claims.get("kind", ""), access, claims)

    # -- principals -------------------------------------------------------------------------

    def _cached_principal(self, name: str) -> Principal | None:
        with self._lock:
            hit = self._principals.get(name)
        if hit is not None and time.monotonic() - hit[1] <= self._ttl:
            return hit[0]
        return self.principal(name)

    def principal(self, name: str, *, fresh: bool = False) -> Principal | None:
        """What the identity ``name`` may do now; None if it does not exist or is disabled."""
        if "\x00" in name:
            return None
        with self._lock:
            hit = self._principals.get(name)
        if not fresh and hit is not None and time.monotonic() - hit[1] <= self._ttl:
            return hit[0]
        with self._db.read() as conn:
            row = conn.execute(sa.select(identities).where(identities.c.name == name)).first()
            principal = None
            if row is not None and row.enabled:
                now = utcnow()
                stamps = frozenset(
                    _stamp(c.name, c.created_at)
                    for c in conn.execute(
                        sa.select(credentials).where(credentials.c.identity_id == row.id)
                    ).all()
                    if c.expires_at is None or as_utc(c.expires_at) > now
                )
                principal = Principal(
                    row.name, row.kind, self._permissions(conn, row), row.id, row.token_version, stamps
                )
        with self._lock:
            self._principals[name] = (principal, time.monotonic())
        return principal

    @staticmethod
    def _permissions(conn: sa.Connection, row: sa.Row) -> Permissions:
        if row.kind == ADMIN:
            return EVERYTHING
        if row.kind == TOKEN:
            rules = conn.execute(
                sa.select(scope_map_rules.c.repository, scope_map_rules.c.action).where(
                    scope_map_rules.c.scope_map_id == row.scope_map_id
                )
            ).all()
            return permissions_from_scope_map([(r.repository, r.action) for r in rules])
        assignments = conn.execute(
            sa.select(role_assignments.c.role, role_assignments.c.scope).where(
                role_assignments.c.identity_id == row.id
            )
        ).all()
        return permissions_from_roles([(a.role, a.scope) for a in assignments])


def _stamp(name: str, created_at: datetime) -> str:
    """Identifies one generation of one credential: renewing it makes a new stamp."""
    return f"{name}@{int(as_utc(created_at).timestamp() * 1_000_000)}"
