"""Content digests: grammar, supported algorithms and hashing."""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

from dockyard.oci.errors import ErrorCode, RegistryError

#: The digest grammar of the OCI image spec (descriptor.md).
DIGEST_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")

#: Registered algorithms Dockyard verifies, with the exact shape of their encoded part.
ALGORITHMS: dict[str, re.Pattern[str]] = {
    "sha256": re.compile(r"^[a-f0-9]{64}\Z"),
    "sha512": re.compile(r"^[a-f0-9]{128}\Z"),
}

DEFAULT_ALGORITHM = "sha256"


class Hasher(Protocol):
    """What hashlib objects offer and the upload path uses."""

    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...


def parse_digest(value: str) -> tuple[str, str]:
    """Split a digest into (algorithm, encoded), or raise DIGEST_INVALID / UNSUPPORTED."""
    if not value or len(value) > 256 or not DIGEST_GRAMMAR.match(value):
        raise RegistryError(ErrorCode.DIGEST_INVALID, f"invalid digest {value[:80]!r}", status=400)
    algorithm, encoded = value.split(":", 1)
    pattern = ALGORITHMS.get(algorithm)
    if pattern is None:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            f"unsupported digest algorithm {algorithm!r}; use sha256 or sha512",
            status=400,
        )
    if not pattern.match(encoded):
        raise RegistryError(ErrorCode.DIGEST_INVALID, f"invalid {algorithm} digest {value[:80]!r}")
    return algorithm, encoded


def is_digest(value: str) -> bool:
    """True if ``value`` looks like a digest (has the grammar), whatever its algorithm."""
    return ":" in value and DIGEST_GRAMMAR.match(value) is not None


def new_hasher(algorithm: str = DEFAULT_ALGORITHM) -> Hasher:
    """A fresh incremental hasher for one of ALGORITHMS."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def compute_digest(data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The digest of ``data`` in ``algorithm``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
