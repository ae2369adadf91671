"""Header and query helpers the registry routes share."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from starlette.requests import Request

from dockyard.access.policy import Caller, Policy
from dockyard.events.services import Origin
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.names import validate_name

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
# At most 18 digits a number: beyond any blob, and int() refuses 4,300.
CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?([0-9]{1,18})-([0-9]{1,18})(?:/(?:[0-9]{1,18}|\*))?\Z")
RANGE = re.compile(r"^bytes=([0-9]{0,18})-([0-9]{0,18})\Z")


def origin(request: Request, policy: Policy) -> Origin:
    """Who is making this request and how, for the event log and webhooks."""
    caller = request.scope.get("dockyard.caller")
    return Origin(
        host=request.headers.get("host"),
        method=request.method,
        user_agent=request.headers.get("user-agent"),
        actor=caller.name if isinstance(caller, Caller) else None,
        client_ip=policy.client_ip(request.scope),
    )


def repository_name(request: Request) -> str:
    """The validated repository name from the path."""
    return validate_name(request.path_params["name"])


def accept_list(request: Request) -> list[str]:
    """Media types from all Accept headers, parameters removed."""
    types = []
    for header in request.headers.getlist("accept"):
        for item in header.split(","):
            media_type = item.split(";", 1)[0].strip().lower()
            if media_type:
                types.append(media_type)
    return types


def content_range(request: Request) -> tuple[int, int] | None:
    """The chunk's inclusive (start, end) from Content-Range, or None."""
    value = request.headers.get("content-range")
    if value is None:
        return None
    match = CONTENT_RANGE.match(value.strip())
    if not match:
        raise RegistryError(ErrorCode.BLOB_UPLOAD_INVALID, f"malformed Content-Range {value[:100]!r}")
    return int(match.group(1)), int(match.group(2))


def byte_range(request: Request, size: int) -> tuple[int, int] | None:
    """An inclusive (start, end) from a single-range ``Range`` header, or None for the whole blob.

    Multiple ranges or other units are ignored (the whole blob is sent, as RFC 9110
    allows); a range that starts past the end is a 416.
    """
    value = request.headers.get("range")
    if value is None:
        return None
    match = RANGE.match(value.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:  # an empty blob has no last bytes to send (RFC 9110 14.1.2)
            raise _unsatisfiable(size)
        return max(size - suffix, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> RegistryError:
    return RegistryError(
        ErrorCode.BLOB_UNKNOWN,
        "requested range not satisfiable",
        status=416,
        headers={"Content-Range": f"bytes */{size}"},
    )


def page_size(request: Request, name: str = "n") -> int | None:
    """A non-negative integer query parameter, or None if absent."""
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise RegistryError(
            ErrorCode.UNSUPPORTED, f"query parameter {name} must be a non-negative integer", status=400
        )
    return int(value)


def next_link(path: str, n: int | None, last: str, **extra: str) -> str:
    """An RFC 5988 Link header pointing at the next page."""
    query = {k: v for k, v in extra.items() if v}
    if n is not None:
        query["n"] = str(n)
    query["last"] = last
    return f'<{path}?{urlencode(query)}>; rel="next"'
