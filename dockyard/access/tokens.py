"""The token service's JWTs: ES256 keys kept in the database, issuing, verifying, rotating.

Access tokens carry Docker's ``access`` claims and live minutes; refresh tokens name an
identity and live hours (the azure-containerregistry SDK re-exchanges ones with more than
five minutes left, and decodes their payload with the non-URL-safe base64 alphabet, so
their payload segment is kept free of ``-`` and ``_``). Verified tokens are cached by
their exact string: verifying a signature costs more than the rest of a request.

Verifying never writes to the database: keys are re-read (at most every
``UNKNOWN_KID_RELOAD_SECONDS`` for a key id this process does not know), and a new key is
only created when one must sign. A token's ``exp`` counts only up to the lifetime now
configured for its kind, and a cached token stops verifying once its key is retired.
"""

from __future__ import annotations

import re
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
IDENTITY_TOKEN = "identity"  # noqa: S105 - a token use, not a secret
VERIFIED_CACHE_SIZE = 10_000
KEY_RELOAD_SECONDS = 60.0
UNKNOWN_KID_RELOAD_SECONDS = 10.0
KID = re.compile(r"^[0-9a-f]{32}\Z")


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


class TokenService:
    """Issues and verifies the registry's JWTs."""

    def __init__(
        self,
        db: Database,
        *,
        service: str,
        access_lifetime: int,
        refresh_lifetime: int,
        refresh_chain: int = 24 * 3600,
    ) -> None:
        self._db = db
        self.service = service
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self.refresh_chain = refresh_chain
        self._keys: _Keys | None = None
        self._keys_loaded_at = float("-inf")
        self._keys_lock = threading.Lock()
        self._unknown_kid_reload_at = 0.0
        self._verified: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self._verified_lock = threading.Lock()

    # -- keys -------------------------------------------------------------------------------

    def _load_keys(self, *, force: bool = False) -> _Keys | None:
        """The keys in force (re-read every KEY_RELOAD_SECONDS); None while the registry has none."""
        with self._keys_lock:
            if not force and time.monotonic() - self._keys_loaded_at < KEY_RELOAD_SECONDS:
                return self._keys
            with self._db.read() as conn:
                self._keys = self._read_keys(conn)
            self._keys_loaded_at = time.monotonic()
            return self._keys

    def _signing_keys(self) -> _Keys:
        keys = self._load_keys()
        if keys is None or not keys.signing_kid:
            with self._keys_lock:
                keys = self._keys = self._db.run_write(self._read_or_create_keys)
                self._keys_loaded_at = time.monotonic()
        return keys

    def ensure_key(self) -> None:
        """Create the first signing key if the registry has none (at start-up, not per request)."""
        self._signing_keys()

    def _read_keys(self, conn: sa.Connection) -> _Keys | None:
        now = utcnow()
        oldest_valid = now - timedelta(seconds=max(self.access_lifetime, self.refresh_lifetime))
        rows = conn.execute(
            sa.select(signing_keys)
            .where(sa.or_(signing_keys.c.retired_at.is_(None), signing_keys.c.retired_at > oldest_valid))
            .order_by(signing_keys.c.created_at)
        ).all()
        if not rows:
            return None
        private = {row.kid: _private(row.private_key) for row in rows}
        active = [row.kid for row in rows if row.retired_at is None]
        signing = active[-1] if active else ""
        return _Keys(
            signing_kid=signing,
            signing_key=private[signing] if signing else next(iter(private.values())),
            verifying={kid: key.public_key() for kid, key in private.items()},
        )

    def _read_or_create_keys(self, conn: sa.Connection) -> _Keys:
        keys = self._read_keys(conn)
        if keys is not None and keys.signing_kid:
            return keys
        signing, pem = _new_key()
        conn.execute(signing_keys.insert().values(kid=signing, private_key=pem, created_at=utcnow()))
        created = self._read_keys(conn)
        assert created is not None
        return created

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
        self.forget_verified()
        return kid

    def forget_verified(self) -> None:
        """Drop every cached verification (after a key rotation)."""
        with self._verified_lock:
            self._verified.clear()

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
        keys = self._signing_keys()
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

    def issue_access(
        self, principal: Principal, access: list[dict[str, Any]], *, identity: bool = False
    ) -> IssuedToken:
        """An access token carrying Docker ``access`` claims (and what revokes it).

        ``identity`` marks a token that stands for the whole identity (asked for with its own
        credentials and no scope): only such a token manages the registry or is exchanged.
        """
        claims = self._claims(principal.name, principal.kind, ACCESS_GRANT, self.access_lifetime)
        claims.update(
            access=access, iid=principal.identity_id, ver=principal.token_version, cred=principal.credential
        )
        if identity:
            claims.update(use=IDENTITY_TOKEN, auth_time=principal.auth_time or claims["iat"])
        return IssuedToken(self._sign(claims), self.access_lifetime)

    def issue_refresh(self, principal: Principal, lifetime: int | None = None) -> IssuedToken:
        """A refresh token for the credential the principal signed in with.

        It ends no later than ``refresh_chain`` seconds after that credential was last checked,
        however often it is exchanged for a new one, and lives ``lifetime`` seconds when that is
        shorter than the configured refresh lifetime (a build run's credential). Its payload segment
        has no ``-`` or ``_`` (see the module doc). InvalidToken when the chain has run out.
        """
        auth_time = principal.auth_time or int(time.time())
        longest = self.refresh_lifetime if lifetime is None else min(lifetime, self.refresh_lifetime)
        lifetime = min(longest, auth_time + self.refresh_chain - int(time.time()))
        if lifetime <= 0:
            raise InvalidToken("sign in again: this chain of refresh tokens has reached its end")
        while True:
            claims = self._claims(principal.name, principal.kind, REFRESH_GRANT, lifetime)
            claims.update(
                iid=principal.identity_id,
                ver=principal.token_version,
                cred=principal.credential,
                auth_time=auth_time,
            )
            token = self._sign(claims)
            payload = token.split(".")[1]
            if "-" not in payload and "_" not in payload:
                return IssuedToken(token, lifetime)

    # -- verifying --------------------------------------------------------------------------

    def lifetime(self, grant: str) -> int:
        """The lifetime now configured for tokens of ``grant``."""
        return self.access_lifetime if grant == ACCESS_GRANT else self.refresh_lifetime

    def verify(self, token: str, grant: str) -> dict[str, Any]:
        """The claims of a valid token of the given grant type, else InvalidToken."""
        with self._verified_lock:
            cached = self._verified.get(token)
        keys = self._load_keys()
        if cached is None or keys is None or cached[0] not in keys.verifying:
            cached = self._verify_signature(token)
            with self._verified_lock:
                self._verified[token] = cached
                while len(self._verified) > VERIFIED_CACHE_SIZE:
                    self._verified.popitem(last=False)
        claims = cached[1]
        if claims.get("grant_type") != grant:
            raise InvalidToken(f"not a {grant}")
        if min(claims["exp"], claims["iat"] + self.lifetime(grant)) <= time.time():
            raise InvalidToken("token expired")
        return claims

    def _verify_signature(self, token: str) -> tuple[str, dict[str, Any]]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        if not isinstance(kid, str) or not KID.match(kid):
            raise InvalidToken("token signed by an unknown key")
        keys = self._load_keys()
        if keys is None or kid not in keys.verifying:
            keys = self._reload_for_unknown_kid()
        key = keys.verifying.get(kid) if keys is not None else None
        if key is None:
            raise InvalidToken("token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.service,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        return kid, claims

    def _reload_for_unknown_kid(self) -> _Keys | None:
        """Re-read the keys (another process may have rotated), at most once per interval: a flood of
        tokens with made-up key ids costs no database work."""
        with self._keys_lock:
            now = time.monotonic()
            if now - self._unknown_kid_reload_at < UNKNOWN_KID_RELOAD_SECONDS:
                return self._keys
            self._unknown_kid_reload_at = now
        return self._load_keys(force=True)


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
