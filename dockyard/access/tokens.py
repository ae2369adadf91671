"""The token service's JWTs: ES256 keys kept in the database, issuing, verifying, rotating.

Access tokens carry Docker's ``access`` claims and live minutes; refresh tokens name an
identity and live hours (the azure-containerregistry SDK re-exchanges ones with more than
five minutes left, and decodes their payload with the non-URL-safe base64 alphabet, so
their payload segment is kept free of ``-`` and ``_``). Verified tokens are cached by
their exact string: verifying a signature costs more than the rest of a request.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dockyard.access.models import signing_keys
from dockyard.access.permissions import Principal
from dockyard.db import Database, as_utc, utcnow

ISSUER = "dockyard"
ALGORITHM = "ES256"
ACCESS_GRANT = "access_token"
REFRESH_GRANT = "refresh_token"
VERIFIED_CACHE_SIZE = 10_000
KEY_RELOAD_SECONDS = 60.0


class InvalidToken(Exception):
    """A token that is malformed, expired, tampered with, foreign-signed or of the wrong kind."""


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int


@dataclass
class _Keys:
    signing_kid: str
    signing_key: ec.EllipticCurvePrivateKey
    verifying: dict[str, ec.EllipticCurvePublicKey]
    loaded_at: float


class TokenService:
    """Issues and verifies the registry's JWTs."""

    def __init__(self, db: Database, *, service: str, access_lifetime: int, refresh_lifetime: int) -> None:
        self._db = db
        self.service = service
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self._keys: _Keys | None = None
        self._keys_lock = threading.Lock()
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._verified_lock = threading.Lock()

    # -- keys -------------------------------------------------------------------------------

    def _load_keys(self, *, force: bool = False) -> _Keys:
        with self._keys_lock:
            keys = self._keys
            if keys is not None and not force and time.monotonic() - keys.loaded_at < KEY_RELOAD_SECONDS:
                return keys
            keys = self._keys = self._db.run_write(self._read_or_create_keys)
            return keys

    def _read_or_create_keys(self, conn: sa.Connection) -> _Keys:
        now = utcnow()
        oldest_valid = now - timedelta(seconds=max(self.access_lifetime, self.refresh_lifetime))
        rows = conn.execute(
            sa.select(signing_keys)
            .where(sa.or_(signing_keys.c.retired_at.is_(None), signing_keys.c.retired_at > oldest_valid))
            .order_by(signing_keys.c.created_at)
        ).all()
        private = {row.kid: _private(row.private_key) for row in rows}
        active = [row.kid for row in rows if row.retired_at is None]
        if active:
            signing = active[-1]
        else:
            signing, pem = _new_key()
            conn.execute(signing_keys.insert().values(kid=signing, private_key=pem, created_at=now))
            private[signing] = _private(pem)
        return _Keys(
            signing_kid=signing,
            signing_key=private[signing],
            verifying={kid: key.public_key() for kid, key in private.items()},
            loaded_at=time.monotonic(),
        )

    def rotate(self) -> str:
        """Start signing with a new key; older keys keep verifying until their tokens expire."""
        kid, pem = _new_key()
        now = utcnow()

        def work(conn: sa.Connection) -> None:
            conn.execute(
                signing_keys.update().where(signing_keys.c.retired_at.is_(None)).values(retired_at=now)
            )
            conn.execute(signing_keys.insert().values(kid=kid, private_key=pem, created_at=now))

        self._db.run_write(work)
        self._load_keys(force=True)
        return kid

    def key_list(self) -> list[dict[str, Any]]:
        """Every key with when it was created and retired (none of their secrets)."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(signing_keys.c.kid, signing_keys.c.created_at, signing_keys.c.retired_at).order_by(
                    signing_keys.c.created_at
                )
            ).all()
        return [
            {
                "kid": row.kid,
                "createdTime": as_utc(row.created_at),
                "retiredTime": as_utc(row.retired_at) if row.retired_at else None,
            }
            for row in rows
        ]

    # -- issuing ----------------------------------------------------------------------------

    def _sign(self, claims: dict[str, Any]) -> str:
        keys = self._load_keys()
        return jwt.encode(claims, keys.signing_key, algorithm=ALGORITHM, headers={"kid": keys.signing_kid})

    def _claims(self, subject: str, kind: str, grant: str, lifetime: int) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": ISSUER,
            "sub": subject,
            "aud": self.service,
            "iat": now,
            "nbf": now - 5,
            "exp": now + lifetime,
            "jti": str(uuid.uuid4()),
            "grant_type": grant,
            "kind": kind,
            "version": "1.0",
        }

    def issue_access(self, principal: Principal, access: list[dict[str, Any]]) -> IssuedToken:
        """An access token carrying Docker ``access`` claims (and what revokes it when exchanged)."""
        claims = self._claims(principal.name, principal.kind, ACCESS_GRANT, self.access_lifetime)
        claims.update(
            access=access, iid=principal.identity_id, ver=principal.token_version, cred=principal.credential
        )
        return IssuedToken(self._sign(claims), self.access_lifetime)

    def issue_refresh(self, principal: Principal) -> IssuedToken:
        """A refresh token for the credential the principal signed in with.

        Its payload segment has no ``-`` or ``_`` (see the module doc).
        """
        while True:
            claims = self._claims(principal.name, principal.kind, REFRESH_GRANT, self.refresh_lifetime)
            claims.update(iid=principal.identity_id, ver=principal.token_version, cred=principal.credential)
            token = self._sign(claims)
            payload = token.split(".")[1]
            if "-" not in payload and "_" not in payload:
                return IssuedToken(token, self.refresh_lifetime)

    # -- verifying --------------------------------------------------------------------------

    def verify(self, token: str, grant: str) -> dict[str, Any]:
        """The claims of a valid token of the given grant type, else InvalidToken."""
        with self._verified_lock:
            cached = self._verified.get(token)
        if cached is None:
            cached = self._verify_signature(token)
            with self._verified_lock:
                self._verified[token] = cached
                while len(self._verified) > VERIFIED_CACHE_SIZE:
                    self._verified.popitem(last=False)
        if cached["exp"] <= time.time():
            raise InvalidToken("token expired")
        if cached.get("grant_type") != grant:
            raise InvalidToken(f"not a {grant}")
        return cached

    def _verify_signature(self, token: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        keys = self._load_keys()
        if kid not in keys.verifying:
            keys = self._load_keys(force=True)
        key = keys.verifying.get(kid)
        if key is None:
            raise InvalidToken("token signed by an unknown key")
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.service,
                issuer=ISSUER,
                options={"require": ["exp", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None


def _new_key() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return uuid.uuid4().hex, pem


def _private(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key
