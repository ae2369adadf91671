"""The identity build runs push with (``system:tasks``, AcrPush on the registry) and per-run credentials.

The identity is a row of kind ``task`` (a name with ``:``, which no user name may contain; the
identity API neither lists nor changes such rows), with one credential whose secret nobody knows
(the argon2 hash of random bytes thrown away). It is created on first use in a transaction of its
own; two nodes racing both try, the unique name keeps one. Each run gets a credential row of its
own (``run-<run id>``, whose secret is thrown away too) and a refresh token bound to it, living the
run's timeout plus ten minutes (never past the configured refresh lifetime), which builders present
as the null-GUID user's password, as ``docker login`` with ACR tokens does. The run's end deletes
the row (``revoke``), which revokes the token: at once on this process, within the principal
cache's lifetime (30 s) on the others. A run whose worker died is revoked when it is recovered, and
a row left past its expiry is deleted then too.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from dockyard.access.models import credentials, identities, role_assignments
from dockyard.access.passwords import hash_secret, new_secret
from dockyard.access.services import AccessServices
from dockyard.access.services.identities import NULL_GUID, SECRET, TASK
from dockyard.builds.interfaces import RegistryAccess
from dockyard.config import Settings, TlsMode
from dockyard.db import utcnow
from dockyard.tls import CA_CERT, effective_mode, is_wildcard, url_host

SYSTEM_IDENTITY = "system:tasks"
#: The name of a run's own credential row: this prefix and its run id.
RUN_CREDENTIAL_PREFIX = "run-"
#: A run's credential outlives its timeout by this much (pushes at the very end, log flushes).
CREDENTIAL_MARGIN_SECONDS = 600


def registry_host(settings: Settings) -> str:
    """``host:port`` builders dial: ``builds_registry``, else ``host``/``port`` (unspecified → 127.0.0.1)."""
    if settings.builds_registry:
        return settings.builds_registry
    host = "127.0.0.1" if is_wildcard(settings.host) or not settings.host else settings.host
    return f"{url_host(host)}:{settings.port}"


class TaskCredentials:
    """Mints per-run registry credentials for the ``system:tasks`` identity."""

    def __init__(self, settings: Settings, access: AccessServices) -> None:
        self._settings = settings
        self._access = access

    def ensure_identity(self) -> None:
        """Create ``system:tasks`` (AcrPush on the registry) unless it exists; safe against races."""
        db = self._access.db

        def exists() -> bool:
            with db.read() as conn:
                query = sa.select(identities.c.id).where(identities.c.name == SYSTEM_IDENTITY)
                return conn.execute(query).first() is not None

        if exists():
            return

        def work(conn: sa.Connection) -> None:
            if conn.execute(sa.select(identities.c.id).where(identities.c.name == SYSTEM_IDENTITY)).first():
                return
            now = utcnow()
            identity_id = conn.execute(
                identities.insert()
                .values(
                    kind=TASK,
                    name=SYSTEM_IDENTITY,
                    enabled=True,
                    description="build runs push with this identity",
                    created_at=now,
                    updated_at=now,
                )
                .returning(identities.c.id)
            ).scalar_one()
            conn.execute(
                credentials.insert().values(
                    identity_id=identity_id,
                    name=SECRET,
                    secret_hash=hash_secret(new_secret()),
                    created_at=now,
                )
            )
            conn.execute(
                role_assignments.insert().values(
                    id=str(uuid.uuid4()),
                    identity_id=identity_id,
                    role="AcrPush",
                    scope="registry",
                    created_at=now,
                )
            )

        try:
            db.run_write(work)
        except sa.exc.IntegrityError:
            if not exists():  # another node created it meanwhile: fine; anything else is an error
                raise

    def mint(self, run_id: str, timeout_seconds: int) -> RegistryAccess:
        """A credential for run ``run_id``: the null-GUID user and a refresh token of ``system:tasks``
        bound to a credential row of the run's own, which ``revoke`` deletes."""
        self.ensure_identity()
        lifetime = timeout_seconds + CREDENTIAL_MARGIN_SECONDS
        name = RUN_CREDENTIAL_PREFIX + run_id
        now = utcnow()

        def work(conn: sa.Connection) -> None:
            identity_id = conn.execute(
                sa.select(identities.c.id).where(identities.c.name == SYSTEM_IDENTITY)
            ).scalar_one()
            conn.execute(
                credentials.delete().where(
                    credentials.c.identity_id == identity_id, credentials.c.name == name
                )
            )
            conn.execute(
                credentials.insert().values(
                    identity_id=identity_id,
                    name=name,
                    secret_hash=hash_secret(new_secret()),
                    expires_at=now + timedelta(seconds=lifetime),
                    created_at=now,
                )
            )

        self._access.db.run_write(work)
        principal = self._access.authenticator.principal(SYSTEM_IDENTITY, fresh=True)
        stamp = next(
            (s for s in (principal.credential_stamps if principal else ()) if s.startswith(name + "@")), None
        )
        if principal is None or stamp is None:
            raise RuntimeError(f"the {SYSTEM_IDENTITY} identity is disabled or its run credential is gone")
        signed_in = replace(principal, credential=stamp, auth_time=None)
        token = self._access.tokens.issue_refresh(signed_in, lifetime=lifetime)
        mode = effective_mode(self._settings)
        ca_file: Path | None = None
        if mode == TlsMode.self_signed:
            ca_file = self._settings.data_dir / "tls" / CA_CERT
        return RegistryAccess(
            host=registry_host(self._settings),
            username=NULL_GUID,
            password=token.token,
            plain_http=mode == TlsMode.off,
            ca_file=ca_file,
        )

    def revoke(self, run_ids: Sequence[str]) -> None:
        """Delete the credentials of runs ``run_ids`` (their refresh tokens stop working), and any run
        credential past its expiry."""
        names = [RUN_CREDENTIAL_PREFIX + run_id for run_id in run_ids]

        def work(conn: sa.Connection) -> int:
            task = sa.select(identities.c.id).where(identities.c.name == SYSTEM_IDENTITY).scalar_subquery()
            spent = sa.and_(
                credentials.c.name.startswith(RUN_CREDENTIAL_PREFIX), credentials.c.expires_at < utcnow()
            )
            return conn.execute(
                credentials.delete().where(
                    credentials.c.identity_id == task, sa.or_(credentials.c.name.in_(names), spent)
                )
            ).rowcount

        if self._access.db.run_write(work):
            self._access.authenticator.principal(SYSTEM_IDENTITY, fresh=True)
