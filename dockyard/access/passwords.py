"""Secrets: generated with the OS's CSPRNG, stored only as argon2id hashes."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

#: One of OWASP's equivalent argon2id settings (7 MiB, 5 passes): ~40 ms to verify here, and little
#: memory per concurrent check; verified logins are cached.
_HASHER = PasswordHasher(time_cost=5, memory_cost=7168, parallelism=1)


def new_secret() -> str:
    """A new password: 43 URL-safe characters, 256 bits."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return _HASHER.hash(secret)


def verify_secret(secret_hash: str, secret: str) -> bool:
    """True if ``secret`` matches; never raises for a wrong or malformed input."""
    try:
        return _HASHER.verify(secret_hash, secret)
    except (VerificationError, InvalidHashError):
        return False
