"""Repository names, tags and references, with the distribution-spec grammar."""

from __future__ import annotations

import re

from dockyard.oci.digest import is_digest, parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError

NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_GRAMMAR = re.compile(rf"^{NAME_COMPONENT}(?:/{NAME_COMPONENT})*\Z")
TAG_GRAMMAR = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")

#: Clients limit host + port + name to 255 characters; so do we for the name alone.
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name, else raise NAME_INVALID."""
    if len(name) > MAX_NAME_LENGTH or not NAME_GRAMMAR.match(name):
        raise RegistryError(ErrorCode.NAME_INVALID, f"invalid repository name {name[:300]!r}")
    return name


def is_valid_name(name: str) -> bool:
    """True if ``name`` is a valid repository name."""
    return len(name) <= MAX_NAME_LENGTH and NAME_GRAMMAR.match(name) is not None


def validate_tag(tag: str) -> str:
    """Return ``tag`` if valid, else raise MANIFEST_INVALID (the spec has no TAG_INVALID)."""
    if not TAG_GRAMMAR.match(tag):
        raise RegistryError(ErrorCode.MANIFEST_INVALID, f"invalid tag {tag[:200]!r}")
    return tag


def parse_reference(reference: str) -> tuple[str | None, str | None]:
    """Split a manifest reference into (tag, digest); exactly one is set.

    A reference containing ``:`` must be a valid digest, anything else a valid tag.
    """
    if is_digest(reference) or ":" in reference:
        parse_digest(reference)
        return None, reference
    if not TAG_GRAMMAR.match(reference):
        raise RegistryError(ErrorCode.MANIFEST_INVALID, f"invalid tag {reference[:200]!r}")
    return reference, None
