"""Pure webhook rules: validation of names, URIs, actions, headers and scopes; scope matching."""

from __future__ import annotations

import fnmatch
import ipaddress
import re

import httpx

from dockyard.events.services import DISPATCHED_ACTIONS
from dockyard.oci.errors import ErrorCode, RegistryError

NAME = re.compile(r"^[A-Za-z0-9]{5,50}\Z")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}\Z")
#: Printable ASCII, spaces and tabs inside but not at either end (HTTP clients refuse those).
HEADER_VALUE = re.compile(r"^(?:[\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?)?\Z")
#: Headers a webhook may not set: they belong to the HTTP exchange, not to the receiver.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"}
)
SCOPE_PART = re.compile(r"^[a-z0-9._/*-]{1,255}\Z")
TAG_PART = re.compile(r"^[A-Za-z0-9._*-]{1,128}\Z")
PAYLOAD_FORMATS = ("acr", "cloudevents")
MAX_URI = 2048
#: A DNS name as httpx sends it (IDNA-encoded), unless the host is an IP address.
HOST_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?\Z")
MAX_HEADERS = 50
MAX_HEADER_VALUE = 4096


def invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID_REQUEST, message)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise invalid("webhook names are 5-50 letters and digits")
    return name


def check_uri(uri: str) -> str:
    """An absolute http(s) URL with a host, at most MAX_URI characters, parsed as deliveries parse it."""
    if not isinstance(uri, str):
        raise invalid("the service URI must be a string")
    if len(uri) > MAX_URI:
        raise invalid(f"the service URI is longer than {MAX_URI} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in uri):
        raise invalid("the service URI must not contain whitespace or control characters")
    try:
        url = httpx.URL(uri)
        port = url.port
        host = url.host  # decodes IDNA (punycode), which can fail on its own
    except (httpx.InvalidURL, ValueError):  # UnicodeError and idna's errors are ValueErrors
        raise invalid("the service URI is not a valid URL") from None
    if url.scheme not in ("http", "https") or not host:
        raise invalid("the service URI must be an absolute http:// or https:// URL with a host")
    if not _valid_host(url.raw_host.decode("ascii")):
        raise invalid("the service URI's host is not a valid host name or IP address")
    if port is not None and not 1 <= port <= 65535:
        raise invalid("the service URI's port must be 1-65535")
    return uri


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return HOST_NAME.match(host) is not None
    return True


def check_actions(actions: list[str]) -> list[str]:
    if not isinstance(actions, list):
        raise invalid("actions must be a list")
    if not actions:
        raise invalid(f"give at least one action: {', '.join(DISPATCHED_ACTIONS)}")
    unknown = [a for a in actions if a not in DISPATCHED_ACTIONS]
    if unknown:
        raise invalid(f"unknown actions {unknown}; use {', '.join(DISPATCHED_ACTIONS)}")
    return sorted(set(actions))


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """At most MAX_HEADERS custom headers; token names, not reserved; printable ASCII string values."""
    if not isinstance(headers, dict):
        raise invalid("customHeaders maps header names to string values")
    if len(headers) > MAX_HEADERS:
        raise invalid(f"at most {MAX_HEADERS} custom headers")
    for name, value in headers.items():
        if not isinstance(name, str) or not HEADER_NAME.match(name):
            raise invalid(f"invalid header name {str(name)[:80]!r}")
        if name.lower() in RESERVED_HEADERS:
            raise invalid(f"header {name!r} cannot be set by a webhook")
        if not isinstance(value, str):
            raise invalid(f"the value of header {name!r} must be a string")
        if len(value) > MAX_HEADER_VALUE:
            raise invalid(f"the value of header {name!r} is longer than {MAX_HEADER_VALUE} characters")
        if not HEADER_VALUE.match(value):  # what an HTTP client can send: no é, no U+2028
            raise invalid(
                f"the value of header {name!r} must be printable ASCII, without line breaks, NUL, "
                "or spaces at either end"
            )
    return dict(headers)


def normalize_scope(scope: str | None) -> str | None:
    """ACR's scope forms: ``repo:tag``, ``repo:*``, ``repo`` (meaning ``repo:latest``); ``*`` wildcards."""
    if scope is None or scope == "":
        return None
    if not isinstance(scope, str):
        raise invalid("the scope must be a string")
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
