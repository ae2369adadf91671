"""Where a context URL points, for deciding where a task's git access token may go (pure).

A token is only ever sent to the origin (scheme, host, port) it was given for, and over plain HTTP
only to a host ``insecure_upstreams`` allows (as tarball contexts).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418, "oci": 443}
#: The origin of contexts that reach no host: a local repository and ``/dev/null``.
LOCAL = "local"


def context_origin(context: str) -> str:
    """``scheme://host:port`` of a context (``#ref:folder`` ignored), ``LOCAL`` for an absolute
    path; anything else (scp-like ``host:path``, a URL no parser takes) is its own origin."""
    url = context.partition("#")[0].strip()
    if "://" in url:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port or DEFAULT_PORTS.get(scheme)
        except ValueError:
            return f"unparsed:{url}"
        return f"{scheme}://{(parts.hostname or '').lower()}:{port}"
    if url.startswith("/"):
        return LOCAL
    return f"unparsed:{url}"


def plain_http_allowed(host: str, port: int | None, insecure_upstreams: Iterable[str]) -> bool:
    """Whether ``insecure_upstreams`` (hosts or ``host:port``) lets plain HTTP reach ``host:port``
    (no port: 80)."""
    insecure = {entry.lower() for entry in insecure_upstreams}
    host = host.lower()
    return host in insecure or f"{host}:{port or 80}" in insecure


def plain_http_refused(context: str, insecure_upstreams: Iterable[str]) -> str | None:
    """The host:port of an ``http://`` context ``insecure_upstreams`` does not allow; else None."""
    url = context.partition("#")[0].strip()
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return None
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        return url[:200]
    if plain_http_allowed(host, port, insecure_upstreams):
        return None
    return f"{host}:{port}" if port else host
