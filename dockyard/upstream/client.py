"""The upstream registry client (httpx, synchronous): the Docker token flow, Basic credentials,
blob redirects, verified manifest digests, and errors mapped to ``UpstreamError`` subclasses.

``parse_source`` reads ``registry/repository[:tag|@digest]``; ``open_upstream`` builds a client
from Settings (TLS with the system CAs plus ``upstream_ca_file``; plain HTTP only for hosts in
``insecure_upstreams``; connections refused to loopback, link-local and cloud metadata addresses
unless ``upstream_allowed_networks`` allows them).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import math
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from dockyard import __version__
from dockyard.oci.digest import ALGORITHMS, DIGEST_GRAMMAR
from dockyard.oci.manifests import MAX_MANIFEST_SIZE
from dockyard.oci.mediatypes import INDEXES, OCI_INDEX
from dockyard.oci.names import MAX_NAME_LENGTH, NAME_GRAMMAR, TAG_GRAMMAR
from dockyard.upstream.addresses import GuardedTransport, RefusedAddress
from dockyard.upstream.interfaces import (
    BlobStream,
    Credentials,
    FetchedManifest,
    ManifestHead,
    UpstreamDenied,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRef,
    UpstreamUnavailable,
)
from dockyard.webhooks.addresses import IPNetwork, networks

if TYPE_CHECKING:
    from dockyard.config import Settings

DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_HOST = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])(?::\d{1,5})?\Z"
)
#: How much of an upstream's error body is kept in a message.
SNIPPET = 200
#: Redirects followed per request (S3/Azure presigned URLs need one).
MAX_REDIRECTS = 5
#: Seconds a token is assumed valid when the token endpoint does not say (the Docker spec's 60).
DEFAULT_TOKEN_SECONDS = 60
CHUNK = 1024 * 1024
#: An answer's body must bring at least this many bytes (or its end) per read timeout: a per-read
#: timeout alone lets an upstream dripping a byte at a time hold a request for ever.
MIN_PROGRESS = CHUNK


def parse_source(text: str) -> UpstreamRef:
    """``registry/repository[:tag|@digest]`` → UpstreamRef (``docker.io`` → registry-1.docker.io with
    ``library/`` for one-part names; default tag ``latest``); ValueError explains bad input."""
    source = text.strip()
    if not source or len(source) > 1024 or any(c.isspace() for c in source):
        raise ValueError(f"invalid source {text[:100]!r}: expected registry/repository[:tag|@digest]")
    rest, at, digest = source.partition("@")
    if at and not (DIGEST_GRAMMAR.match(digest) and _digest_supported(digest)):
        raise ValueError(f"invalid digest {digest[:100]!r} in source {text[:100]!r}")
    registry, slash, path = rest.partition("/")
    registry = registry.lower()
    if not slash or not path or not ("." in registry or ":" in registry or registry == "localhost"):
        raise ValueError(
            f"source {text[:100]!r} must name its registry, e.g. docker.io/library/nginx:latest "
            "or myregistry.example.com/team/app@sha256:…"
        )
    if not _HOST.match(registry):
        raise ValueError(f"invalid registry host {registry[:100]!r} in source {text[:100]!r}")
    tag = ""
    last_slash = path.rfind("/")
    if ":" in path[last_slash + 1 :]:
        path, _, tag = path.rpartition(":")
        if not TAG_GRAMMAR.match(tag):
            raise ValueError(f"invalid tag {tag[:140]!r} in source {text[:100]!r}")
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if len(path) > MAX_NAME_LENGTH or not NAME_GRAMMAR.match(path):
        raise ValueError(f"invalid repository name {path[:100]!r} in source {text[:100]!r}")
    return UpstreamRef(registry=registry, repository=path, reference=digest if at else (tag or "latest"))


def _digest_supported(digest: str) -> bool:
    algorithm, _, encoded = digest.partition(":")
    pattern = ALGORITHMS.get(algorithm)
    return pattern is not None and pattern.match(encoded) is not None


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str  # "bearer" or "basic"
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """``Bearer realm="…",service="…",scope="…"`` or ``Basic realm="…"`` → Challenge, else None."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "basic"):
        return None
    params = {
        m.group(1).lower(): (m.group(2) or m.group(3) or "").replace('\\"', '"')
        for m in _PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpUpstream:
    """One upstream registry over HTTP(S); safe to share between threads."""

    def __init__(
        self,
        registry: str,
        credentials: Credentials | None = None,
        *,
        scheme: str = "https",
        ssl_context: ssl.SSLContext | None = None,
        allowed: tuple[IPNetwork, ...] = (),
        insecure_hosts: frozenset[str] = frozenset(),
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.base = httpx.URL(f"{scheme}://{registry}")
        self._credentials = credentials
        self._insecure = insecure_hosts
        self._clock = clock
        self._timeout = timeout
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=8)
        self._http = httpx.Client(
            transport=GuardedTransport(allowed, ssl_context or ssl.create_default_context(), limits),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            headers={"User-Agent": f"dockyard/{__version__}"},
            trust_env=False,
        )

    # -- the protocol -------------------------------------------------------------------------

    def head_manifest(self, repository: str, reference: str, accept: tuple[str, ...]) -> ManifestHead:
        """The manifest's digest, media type and size, from a HEAD (a GET when it gives no digest)."""
        response = self._request("HEAD", f"/v2/{repository}/manifests/{reference}", repository, accept=accept)
        response.close()
        self._check(response, f"manifest {repository}:{reference}")
        digest = response.headers.get("docker-content-digest", "")
        if ":" in reference and digest and digest != reference:
            raise UpstreamError(
                f"the upstream answered digest {digest[:80]} for {reference}", code="DIGEST_INVALID"
            )
        if not digest and ":" in reference:
            digest = reference
        if not digest or not DIGEST_GRAMMAR.match(digest):
            fetched = self.get_manifest(repository, reference, accept)
            return ManifestHead(fetched.digest, fetched.media_type, len(fetched.payload))
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return ManifestHead(digest, media_type, int(response.headers.get("content-length") or 0))

    def get_manifest(self, repository: str, reference: str, accept: tuple[str, ...]) -> FetchedManifest:
        """The manifest's bytes, their digest verified (against the reference, or Docker-Content-Digest)."""
        response = self._request("GET", f"/v2/{repository}/manifests/{reference}", repository, accept=accept)
        try:
            self._check(response, f"manifest {repository}:{reference}")
            payload = self._read_capped(response, MAX_MANIFEST_SIZE, "manifest")
        finally:
            response.close()
        expected = reference if ":" in reference else response.headers.get("docker-content-digest", "")
        if expected and not _digest_supported(expected):
            raise UpstreamError(
                f"the upstream sent an unusable digest {expected[:80]!r}", code="DIGEST_INVALID"
            )
        algorithm = expected.partition(":")[0] if expected else "sha256"
        digest = f"{algorithm}:{hashlib.new(algorithm, payload).hexdigest()}"
        if expected and digest != expected:
            raise UpstreamError(
                f"manifest {repository}:{reference} does not match its digest {expected[:80]} (got {digest})",
                code="DIGEST_INVALID",
            )
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if not media_type or media_type in ("application/json", "application/octet-stream"):
            try:
                document = json.loads(payload)
            except ValueError:
                document = {}
            media_type = (
                str(document.get("mediaType") or media_type) if isinstance(document, dict) else media_type
            )
        return FetchedManifest(digest=digest, media_type=media_type, payload=payload)

    @contextmanager
    def open_blob(self, repository: str, digest: str) -> Iterator[BlobStream]:
        """Stream a blob (redirects followed; Authorization never sent to another host)."""
        response = self._request("GET", f"/v2/{repository}/blobs/{digest}", repository)
        try:
            self._check(response, f"blob {digest[:80]} in {repository}")
            length = response.headers.get("content-length")
            size = int(length) if length and length.isdigit() else None
            yield BlobStream(size=size, chunks=self._chunks(response))
        finally:
            response.close()

    def referrers(self, repository: str, digest: str) -> list[dict[str, Any]]:
        """The subject's referrers: the referrers API, else the ``<alg>-<hex>`` tag schema, else []."""
        response = self._request(
            "GET", f"/v2/{repository}/referrers/{digest}", repository, accept=(OCI_INDEX,)
        )
        try:
            if response.status_code == 200 and "json" in response.headers.get("content-type", ""):
                document = json.loads(self._read_capped(response, MAX_MANIFEST_SIZE, "referrers list"))
                return _descriptors(document)
            if response.status_code not in (400, 404, 405, 501):
                self._check(response, f"referrers of {digest[:80]}")
        except ValueError:
            raise UpstreamError(
                "the upstream's referrers list is not JSON", code="MANIFEST_INVALID"
            ) from None
        finally:
            response.close()
        try:
            fallback = self.get_manifest(repository, digest.replace(":", "-", 1), INDEXES)
        except UpstreamNotFound:
            return []
        try:
            return _descriptors(json.loads(fallback.payload))
        except ValueError:
            return []

    def list_tags(self, repository: str) -> list[str]:
        """Every tag of the repository (paginated with the Link header)."""
        tags: list[str] = []
        path: str | None = f"/v2/{repository}/tags/list?n=1000"
        while path is not None:
            response = self._request("GET", path, repository)
            try:
                self._check(response, f"tags of {repository}")
                document = json.loads(self._read_capped(response, 16 * MAX_MANIFEST_SIZE, "tag list"))
            except ValueError:
                raise UpstreamError("the upstream's tag list is not JSON", code="UNSUPPORTED") from None
            finally:
                response.close()
            tags.extend(str(tag) for tag in (document.get("tags") or []) if isinstance(tag, str))
            link = response.links.get("next", {}).get("url")
            path = link if link and link.startswith("/v2/") else None
        return tags

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- HTTP and the token flow ----------------------------------------------------------------

    def _request(
        self, method: str, path: str, repository: str, *, accept: tuple[str, ...] = ()
    ) -> httpx.Response:
        """Send with the right credentials; on a 401, answer its challenge once and send again."""
        scope = f"repository:{repository}:pull"
        headers = {"Accept": ", ".join(accept)} if accept else {}
        url = self.base.join(path)
        response = self._send(method, url, headers, self._authorization(scope, None))
        if response.status_code != 401:
            return response
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        response.close()
        if challenge is None:
            raise UpstreamDenied("the upstream asked for credentials without a usable challenge", status=401)
        with self._lock:
            self._challenge = challenge
            self._tokens.pop(scope, None)
        response = self._send(method, url, headers, self._authorization(scope, challenge))
        if response.status_code == 401:
            response.close()
            who = "these credentials" if self._credentials else "anonymous access"
            raise UpstreamDenied(
                f"the upstream refused {who} for {repository}", status=401, code="UNAUTHORIZED"
            )
        return response

    def _authorization(self, scope: str, challenge: Challenge | None) -> str | None:
        """The Authorization header for ``scope``: a cached or new Bearer token, or Basic, or None.

        ``challenge`` is the one this request was just answered with (its ``scope`` is asked for);
        without it, a challenge seen earlier is answered ahead (for our own scope only)."""
        asked = challenge.params.get("scope") if challenge is not None else None
        with self._lock:
            challenge = challenge or self._challenge
            if challenge is None:
                return None
            if challenge.scheme == "basic":
                return self._basic()
            cached = self._tokens.get(scope)
            if cached is not None and cached[1] > self._clock():
                return f"Bearer {cached[0]}"
        token, seconds = self._fetch_token(challenge, asked or scope)
        with self._lock:
            self._tokens[scope] = (token, self._clock() + max(seconds - 5, 1))
        return f"Bearer {token}"

    def _basic(self) -> str | None:
        if self._credentials is None:
            return None
        pair = f"{self._credentials.username}:{self._credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _fetch_token(self, challenge: Challenge, scope: str) -> tuple[str, float]:
        realm = challenge.params.get("realm", "")
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL:
            url = httpx.URL("")
        if url.scheme not in ("http", "https") or not url.host:
            raise UpstreamError(
                f"the upstream's token realm {realm[:100]!r} is not a URL", code="UNSUPPORTED"
            )
        params = [("scope", s) for s in scope.split(" ") if s]
        if challenge.params.get("service"):
            params.insert(0, ("service", challenge.params["service"]))
        if self._credentials is not None:
            params.append(("account", self._credentials.username))
        headers = {}
        basic = self._basic()
        if basic is not None:
            headers["Authorization"] = basic
        response = self._send("GET", url.copy_merge_params(params), headers, None, keep_auth=True)
        try:
            if response.status_code in (401, 403):
                raise UpstreamDenied(
                    "the upstream's token service refused "
                    + ("these credentials" if self._credentials else "anonymous access"),
                    status=response.status_code,
                    code="UNAUTHORIZED",
                )
            self._check(response, "token")
            document = json.loads(self._read_capped(response, 1024 * 1024, "token"))
        except ValueError:
            raise UpstreamError("the upstream's token answer is not JSON", code="UNSUPPORTED") from None
        finally:
            response.close()
        token = document.get("token") or document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise UpstreamError("the upstream's token answer has no token", code="UNSUPPORTED")
        expires = document.get("expires_in")
        seconds = (
            float(expires) if isinstance(expires, int | float) and expires > 0 else DEFAULT_TOKEN_SECONDS
        )
        return token, seconds

    def _send(
        self,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        authorization: str | None,
        *,
        keep_auth: bool = False,
    ) -> httpx.Response:
        """One request, following redirects; Authorization goes only to the registry's own origin
        (or, with ``keep_auth``, the URL first asked). Transport failures → UpstreamUnavailable."""
        origin = (self.base.scheme, self.base.host, self.base.port)
        if keep_auth:
            origin = (url.scheme, url.host, url.port)
        for _ in range(MAX_REDIRECTS + 1):
            if (
                url.scheme == "http"
                and url.host not in self._insecure
                and url.netloc.decode() not in self._insecure
            ):
                raise UpstreamError(
                    f"refused plain HTTP to {url.host} (not in insecure_upstreams)", code="DENIED"
                )
            send_headers = dict(headers)
            if authorization is not None and (url.scheme, url.host, url.port) == origin:
                send_headers["Authorization"] = authorization
            try:
                response = self._http.send(
                    self._http.build_request(method, url, headers=send_headers), stream=True
                )
            except httpx.TransportError as exc:
                raise _transport_error(url, exc) from None
            if response.status_code not in (301, 302, 303, 307, 308) or "location" not in response.headers:
                return response
            response.close()
            url = url.join(response.headers["location"])
            if response.status_code == 303:
                method = "GET" if method != "HEAD" else "HEAD"
        raise UpstreamUnavailable(f"too many redirects from {self.registry}")

    def _check(self, response: httpx.Response, what: str) -> None:
        """Raise the UpstreamError a non-2xx answer means (with a short snippet of its message)."""
        status = response.status_code
        if 200 <= status < 300:
            return
        code, message = self._error_detail(response)
        text = f"{what}: the upstream answered {status}" + (f" ({message})" if message else "")
        if status == 404:
            raise UpstreamNotFound(text, status=status, code=code or "NOT_FOUND")
        if status in (401, 403):
            raise UpstreamDenied(text, status=status, code=code or "DENIED")
        if status == 429 or status >= 500:
            raise UpstreamUnavailable(
                text, status=status, retry_after=_retry_after(response.headers.get("retry-after"))
            )
        raise UpstreamError(text, status=status, code=code)

    def _error_detail(self, response: httpx.Response) -> tuple[str | None, str]:
        if response.request.method == "HEAD":
            return None, ""
        try:
            body = self._read_capped(response, 4096, "error", truncate=True)
        except UpstreamError:
            return None, ""
        try:
            errors = json.loads(body).get("errors") or []
            first = errors[0] if errors and isinstance(errors[0], dict) else {}
            code = str(first.get("code") or "") or None
            return code, str(first.get("message") or code or "")[:SNIPPET]
        except (ValueError, AttributeError):
            text = body[:SNIPPET].decode("utf-8", "replace")
            return None, "".join(c if c.isprintable() else " " for c in text).strip()

    def _read_capped(
        self, response: httpx.Response, limit: int, what: str, *, truncate: bool = False
    ) -> bytes:
        buffer = bytearray()
        try:
            for chunk in self._paced(response):
                buffer += chunk
                if len(buffer) > limit:
                    if truncate:
                        return bytes(buffer[:limit])
                    raise UpstreamError(
                        f"the upstream's {what} is larger than {limit} bytes", code="SIZE_INVALID"
                    )
        except httpx.TransportError as exc:
            raise _transport_error(response.request.url, exc) from None
        return bytes(buffer)

    def _chunks(self, response: httpx.Response) -> Iterator[bytes]:
        buffer = bytearray()
        try:
            for piece in self._paced(response):
                buffer += piece
                if len(buffer) >= CHUNK:
                    yield bytes(buffer)
                    buffer.clear()
        except httpx.TransportError as exc:
            raise _transport_error(response.request.url, exc) from None
        if buffer:
            yield bytes(buffer)

    def _paced(self, response: httpx.Response) -> Iterator[bytes]:
        """The body as it arrives; UpstreamUnavailable when less than MIN_PROGRESS bytes (and not the
        end) came within one read timeout, however steadily they trickle."""
        started, received = time.monotonic(), 0
        for piece in response.iter_bytes():
            received += len(piece)
            now = time.monotonic()
            if received >= MIN_PROGRESS:
                started, received = now, 0
            elif now - started > self._timeout:
                raise UpstreamUnavailable(
                    f"the connection to {response.request.url.host} is too slow "
                    f"(less than {MIN_PROGRESS // 1024} KiB in {self._timeout:g} s)"
                )
            yield piece


def _transport_error(url: httpx.URL, exc: httpx.TransportError) -> UpstreamError:
    if isinstance(exc.__cause__, RefusedAddress) or (
        isinstance(exc, httpx.ConnectError) and "refused to connect:" in str(exc)
    ):
        return UpstreamError(str(exc), code="DENIED")
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):  # not transient: no stale copy should hide it
        return UpstreamError(
            f"the certificate of {url.host} is not trusted (upstream_ca_file can add a CA)", code="UNTRUSTED"
        )
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return UpstreamUnavailable(f"the connection to {url.host} {kind}: {type(exc).__name__}")


def _descriptors(document: object) -> list[dict[str, Any]]:
    if not isinstance(document, dict):
        return []
    return [d for d in document.get("manifests") or [] if isinstance(d, dict)]


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()  # the system's CAs
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def open_upstream(registry: str, credentials: Credentials | None, settings: Settings) -> HttpUpstream:
    """A client for ``registry`` (``host[:port]``) configured from Settings (TLS, insecure hosts,
    allowed networks, timeout). Close it when done."""
    insecure = frozenset(host.lower() for host in settings.insecure_upstreams)
    host = registry.lower()
    scheme = "http" if host in insecure or host.rsplit(":", 1)[0] in insecure else "https"
    ca_file = str(settings.upstream_ca_file) if settings.upstream_ca_file else None
    try:
        return HttpUpstream(
            host,
            credentials,
            scheme=scheme,
            ssl_context=_ssl_context(ca_file),
            allowed=networks(settings.upstream_allowed_networks),
            insecure_hosts=insecure,
            timeout=settings.upstream_timeout_seconds,
        )
    except httpx.InvalidURL as exc:  # e.g. 0177.0.0.1, which no URL parser takes
        raise UpstreamError(f"invalid registry host {registry[:100]!r}: {exc}", code="UNSUPPORTED") from None
