"""Pure webhook rules: validation of names, URIs, actions, headers and scopes; scope matching."""

from __future__ import annotations

import fnmatch
import re
from urllib.parse import urlsplit

from dockyard.events.services import DISPATCHED_ACTIONS
from dockyard.oci.errors import ErrorCode, RegistryError

NAME = re.compile(r"^[A-Za-z0-9]{5,50}\Z")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}\Z")
#: Headers a webhook may not set: they belong to the HTTP exchange, not to the receiver.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"}
)
SCOPE_PART = re.compile(r"^[a-z0-9._/*-]{1,255}\Z")
TAG_PART = re.compile(r"^[A-Za-z0-9._*-]{1,128}\Z")
PAYLOAD_FORMATS = ("acr", "cloudevents")


def invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID_REQUEST, message)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise invalid("webhook names are 5-50 letters and digits")
    return name


def check_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(uri) > 2048:
        raise invalid("the service URI must be an absolute http:// or https:// URL")
    if any(c in uri for c in "\r\n\t "):
        raise invalid("the service URI must not contain whitespace")
    return uri


def check_actions(actions: list[str]) -> list[str]:
    if not actions:
        raise invalid(f"give at least one action: {', '.join(DISPATCHED_ACTIONS)}")
    unknown = [a for a in actions if a not in DISPATCHED_ACTIONS]
    if unknown:
        raise invalid(f"unknown actions {unknown}; use {', '.join(DISPATCHED_ACTIONS)}")
    return sorted(set(actions))


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    if len(headers) > 50:
        raise invalid("at most 50 custom headers")
    for name, value in headers.items():
        if not isinstance(name, str) or not HEADER_NAME.match(name):
            raise invalid(f"invalid header name {str(name)[:80]!r}")
        if name.lower() in RESERVED_HEADERS:
            raise invalid(f"header {name!r} cannot be set by a webhook")
        if not isinstance(value, str) or len(value) > 4096 or any(c in value for c in "\r\n\0"):
            raise invalid(f"invalid value for header {name!r}")
    return headers


def normalize_scope(scope: str | None) -> str | None:
    """ACR's scope forms: ``repo:tag``, ``repo:*``, ``repo`` (meaning ``repo:latest``); ``*`` wildcards."""
    if scope is None or scope == "":
        return None
    repository, _, tag = scope.partition(":")
    tag = tag or "latest"
    if not SCOPE_PART.match(repository) or not TAG_PART.match(tag):
        raise invalid(f"invalid scope {scope[:200]!r}: use repository:tag, repository:* or a * wildcard")
    return f"{repository}:{tag}"


def scope_matches(scope: str | None, repository: str, tag: str | None) -> bool:
    """Whether an event on ``repository`` (and ``tag``, if it has one) is in a normalised scope.

    An event without a tag (a delete by digest) matches only scopes whose tag part is ``*``.
    """
    if scope is None:
        return True
    repository_pattern, _, tag_pattern = scope.rpartition(":")
    if not fnmatch.fnmatchcase(repository, repository_pattern):
        return False
    if tag is None:
        return tag_pattern == "*"
    return fnmatch.fnmatchcase(tag, tag_pattern)
