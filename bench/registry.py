"""A small OCI distribution client on http.client: cheap per request, keep-alive, no magic.

Used to push blobs and images, mount blobs, populate tags and repositories in
parallel, and walk paginated listings, the same way against every server.

Authentication is the Docker token flow real clients (docker, containerd, skopeo)
use: ``discover_auth`` pings ``/v2/``; a 401 with a ``Bearer realm=…,service=…``
challenge gets a ``TokenAuth``, which asks the realm for a token per set of scopes
(``GET realm?service=…&scope=…`` with HTTP Basic), caches it until shortly before it
expires, and every request then carries ``Authorization: Bearer <token>``. A
registry that answers 200 without credentials (Distribution here) gets no auth.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
LINK_NEXT = re.compile(r"<([^>]+)>\s*;\s*rel=\"?next\"?")
CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
CATALOG_SCOPE = "registry:catalog:*"

#: A cached token is renewed when it has less than this many seconds left (one request's worth).
TOKEN_MARGIN = 15.0


class RegistryFailure(RuntimeError):
    """A registry answered something other than what the workload expects."""

    def __init__(self, message: str, *, status: int = 0, challenge: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.challenge = challenge


def sha256_digest(data: bytes | bytearray | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


@dataclass
class Token:
    value: str
    expires_at: float  # time.monotonic()


class TokenAuth:
    """Bearer tokens from a registry's token service, one per set of scopes, cached (thread-safe).

    ``fetched`` and ``fetch_seconds`` count the token requests and the time spent on them.
    """

    def __init__(self, realm: str, service: str, username: str, password: str) -> None:
        parts = urlsplit(realm)
        if parts.scheme != "http" or not parts.hostname:
            raise RegistryFailure(f"unsupported token realm {realm!r}")
        self.realm = realm
        self.service = service
        self._host = parts.hostname
        self._port = parts.port or 80
        self._path = parts.path or "/"
        basic = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._basic = f"Basic {basic}"
        self._tokens: dict[tuple[str, ...], Token] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.fetched = 0
        self.fetch_seconds = 0.0

    def token(self, scopes: Iterable[str] = (), valid_for: float = TOKEN_MARGIN) -> str:
        """A token granting ``scopes`` that stays valid at least ``valid_for`` more seconds."""
        key = tuple(sorted(set(scopes)))
        with self._lock:
            cached = self._tokens.get(key)
        if cached is not None and cached.expires_at - time.monotonic() >= valid_for:
            return cached.value
        token = self._fetch(key)
        if token.expires_at - time.monotonic() < valid_for:
            raise RegistryFailure(f"tokens live shorter than the {valid_for:.0f} s a workload needs")
        with self._lock:
            self._tokens[key] = token
        return token.value

    def header(self, scopes: Iterable[str] = (), valid_for: float = TOKEN_MARGIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scopes, valid_for)}"}

    def forget(self, scopes: Iterable[str] = ()) -> None:
        with self._lock:
            self._tokens.pop(tuple(sorted(set(scopes))), None)

    def _fetch(self, scopes: tuple[str, ...]) -> Token:
        query = urlencode([("service", self.service), *(("scope", scope) for scope in scopes)])
        started = time.perf_counter()
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
            try:
                conn.request("GET", f"{self._path}?{query}", headers={"Authorization": self._basic})
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        if response.will_close:
            conn.close()
            self._local.conn = None
        if response.status != 200:
            raise RegistryFailure(
                f"token request for {list(scopes)} answered {response.status}: {data[:300]!r}"
            )
        document = json.loads(data)
        value = document.get("token") or document.get("access_token")
        if not value:
            raise RegistryFailure(f"token answer without a token: {data[:300]!r}")
        granted = _scope_actions(str(document.get("scope", "")).split())
        if any(not actions <= granted.get(key, set()) for key, actions in _scope_actions(scopes).items()):
            raise RegistryFailure(f"token service granted {document.get('scope')!r}, not {list(scopes)}")
        lifetime = float(document.get("expires_in") or 60)  # the Docker token spec's default
        with self._lock:
            self.fetched += 1
            self.fetch_seconds += time.perf_counter() - started
        return Token(value, time.monotonic() + lifetime - 5)  # 5 s for clock slack and the round trip


def _scope_actions(scopes: Iterable[str]) -> dict[str, set[str]]:
    """``type:name`` → actions of scope strings such as ``repository:a/b:pull,push``."""
    actions: dict[str, set[str]] = {}
    for scope in scopes:
        resource, _, listed = scope.rpartition(":")
        actions.setdefault(resource, set()).update(a for a in listed.split(",") if a)
    return actions


def discover_auth(
    port: int, credentials: tuple[str, str] | None, host: str = "127.0.0.1"
) -> TokenAuth | None:
    """Ping ``/v2/`` as docker does: None if it answers 200, a TokenAuth for a Bearer challenge."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    if response.status == 200:
        return None
    challenge = response.headers.get("WWW-Authenticate", "")
    if response.status != 401 or not challenge.lower().startswith("bearer "):
        raise RegistryFailure(f"GET /v2/ answered {response.status} with challenge {challenge!r}")
    params = dict(CHALLENGE_PARAM.findall(challenge))
    if "realm" not in params:
        raise RegistryFailure(f"Bearer challenge without a realm: {challenge!r}")
    if credentials is None:
        raise RegistryFailure(f"{host}:{port} wants a token and the bench has no credentials for it")
    auth = TokenAuth(params["realm"], params.get("service", ""), *credentials)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:  # the token must open /v2/
        conn.request("GET", "/v2/", headers=auth.header())
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RegistryFailure(f"GET /v2/ with a Bearer token answered {response.status}")
    return auth


class Client:
    """One keep-alive connection to one registry (not thread-safe: one per thread).

    With ``auth``, each request carries a Bearer token for the scopes it names.
    """

    def __init__(
        self, port: int, host: str = "127.0.0.1", timeout: float = 300.0, auth: TokenAuth | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.auth = auth
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | bytearray | memoryview | None = None,
        headers: dict[str, str] | None = None,
        expect: Iterable[int] = (200,),
        scopes: Iterable[str] = (),
    ) -> Reply:
        headers = dict(headers or {})
        if body is not None:
            headers.setdefault("Content-Length", str(memoryview(body).nbytes))
        elif method in {"POST", "PUT", "PATCH"}:
            headers.setdefault("Content-Length", "0")
        if self.auth is None:
            return self._exchange(method, path, body, headers, expect)
        scopes = tuple(scopes)
        headers.update(self.auth.header(scopes))
        try:
            return self._exchange(method, path, body, headers, expect)
        except RegistryFailure as failure:
            if failure.status != 401 or "invalid_token" not in failure.challenge:
                raise
        # The token was refused (expired early, keys rotated): renew it once, as docker does.
        self.auth.forget(scopes)
        headers.update(self.auth.header(scopes))
        return self._exchange(method, path, body, headers, expect)

    def _exchange(
        self,
        method: str,
        path: str,
        body: bytes | bytearray | memoryview | None,
        headers: dict[str, str],
        expect: Iterable[int],
    ) -> Reply:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed an idle keep-alive connection; retry once on a new one.
                self.close()
                if attempt == 2 or (body is not None and memoryview(body).nbytes > 0):
                    raise
        if response.will_close:
            self.close()
        if response.status not in expect:
            raise RegistryFailure(
                f"{method} {path[:120]} answered {response.status}: {data[:300]!r} (expected {list(expect)})",
                status=response.status,
                challenge=response.headers.get("WWW-Authenticate", ""),
            )
        return Reply(response.status, response.headers, data)

    @staticmethod
    def _location(reply: Reply) -> str:
        location = reply.headers.get("Location")
        if not location:
            raise RegistryFailure("upload answer without a Location header")
        parts = urlsplit(location)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    @staticmethod
    def _with_query(path: str, **params: str) -> str:
        return path + ("&" if "?" in path else "?") + urlencode(params)

    # -- blobs --------------------------------------------------------------------------------

    def start_upload(self, repository: str) -> str:
        reply = self.request(
            "POST", f"/v2/{repository}/blobs/uploads/", expect=(202,), scopes=[push_scope(repository)]
        )
        return self._location(reply)

    def push_monolithic(self, repository: str, data: bytes | bytearray | memoryview, digest: str) -> None:
        """POST to open a session, then one PUT carrying the whole blob."""
        location = self.start_upload(repository)
        self.request(
            "PUT",
            self._with_query(location, digest=digest),
            body=data,
            headers={"Content-Type": "application/octet-stream"},
            expect=(201,),
            scopes=[push_scope(repository)],
        )

    def push_chunked(
        self, repository: str, data: bytes | bytearray | memoryview, digest: str, chunk_size: int
    ) -> int:
        """POST, one PATCH per chunk with Content-Range, then an empty closing PUT. Returns PATCH count."""
        view = memoryview(data)
        location = self.start_upload(repository)
        patches = 0
        for offset in range(0, len(view), chunk_size):
            chunk = view[offset : offset + chunk_size]
            reply = self.request(
                "PATCH",
                location,
                body=chunk,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                },
                expect=(202,),
                scopes=[push_scope(repository)],
            )
            location = self._location(reply)
            patches += 1
        self.request(
            "PUT", self._with_query(location, digest=digest), expect=(201,), scopes=[push_scope(repository)]
        )
        return patches

    def mount(self, repository: str, digest: str, source: str) -> None:
        path = f"/v2/{repository}/blobs/uploads/?" + urlencode({"mount": digest, "from": source})
        self.request("POST", path, expect=(201,), scopes=mount_scopes(repository, source))

    def get_blob(self, repository: str, digest: str) -> bytes:
        """The blob's bytes; a 307 (storage redirect) is followed to the store, without the token."""
        path = f"/v2/{repository}/blobs/{digest}"
        reply = self.request("GET", path, expect=(200, 307), scopes=[pull_scope(repository)])
        if reply.status != 307:
            return reply.body
        location = urlsplit(reply.headers["Location"])
        conn = http.client.HTTPConnection(location.hostname or "127.0.0.1", location.port, timeout=60)
        try:
            conn.request("GET", location.path + (f"?{location.query}" if location.query else ""))
            answer = conn.getresponse()
            body = answer.read()
        finally:
            conn.close()
        if answer.status != 200:
            raise RegistryFailure(f"GET {path} redirected to the store, which answered {answer.status}")
        return body

    # -- manifests ----------------------------------------------------------------------------

    def put_manifest(self, repository: str, reference: str, payload: bytes) -> None:
        self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            body=payload,
            headers={"Content-Type": OCI_MANIFEST},
            expect=(201,),
            scopes=[push_scope(repository)],
        )

    def get_manifest(self, repository: str, reference: str, method: str = "GET") -> Reply:
        return self.request(
            method,
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": OCI_MANIFEST},
            scopes=[pull_scope(repository)],
        )

    # -- listings -----------------------------------------------------------------------------

    def pages(self, path: str, scopes: Iterable[str]) -> list[Reply]:
        """Every page of a paginated listing, following Link rel="next"; the bodies stay undecoded.

        Only the HTTP exchanges: the next page comes from the Link header, so a timer
        around this measures the server and the wire, not the client's JSON decoding.
        """
        scopes = tuple(scopes)
        replies: list[Reply] = []
        next_path: str | None = path
        while next_path:
            reply = self.request("GET", next_path, scopes=scopes)
            replies.append(reply)
            next_path = next_page(reply)
            if len(replies) > 100_000:
                raise RegistryFailure(f"{path} does not stop paginating")
        return replies

    def walk(self, path: str, key: str, scopes: Iterable[str]) -> tuple[list[str], int]:
        """Every item of a paginated listing, following Link rel="next"; and the page count."""
        replies = self.pages(path, scopes)
        return listing_items(replies, key), len(replies)


def mount_scopes(repository: str, source: str) -> list[str]:
    """A cross-repository mount pushes to ``repository`` and reads ``source`` (docker asks for both)."""
    return [push_scope(repository), pull_scope(source)]


def next_page(reply: Reply) -> str | None:
    """The path (and query) of the Link rel="next" target of a listing page, if there is one."""
    link = reply.headers.get("Link")
    match = LINK_NEXT.search(link) if link else None
    if not match:
        return None
    target = urlsplit(match.group(1))
    return target.path + (f"?{target.query}" if target.query else "")


def listing_items(replies: Iterable[Reply], key: str) -> list[str]:
    """Decode listing pages and join their ``key`` lists (``tags``, ``repositories``), checking the shape."""
    items: list[str] = []
    for number, reply in enumerate(replies, 1):
        document = json.loads(reply.body)
        page = (document.get(key) or []) if isinstance(document, dict) else None  # null: an empty page
        if not isinstance(page, list) or not all(isinstance(item, str) for item in page):
            raise RegistryFailure(f"page {number} of the listing has no list of strings under {key!r}")
        items.extend(page)
    return items


def image_config(label: str) -> bytes:
    """A small, valid, unique OCI image config."""
    document = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"bench": label}},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(b"layer").hexdigest()]},
    }
    return json.dumps(document, sort_keys=True).encode()


def image_manifest(config: bytes, layer_digest: str, layer_size: int) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": layer_size}],
    }
    return json.dumps(document, indent=3).encode()


def parallel(
    port: int, jobs: list[Callable[[Client], None]], threads: int = 8, auth: TokenAuth | None = None
) -> float:
    """Run ``jobs`` on ``threads`` threads, each with its own keep-alive client; the seconds it took."""
    local = threading.local()
    clients: list[Client] = []
    lock = threading.Lock()

    def run(job: Callable[[Client], None]) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = Client(port, auth=auth)
            with lock:
                clients.append(client)
        job(client)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(run, job) for job in jobs]:
            future.result()
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    return elapsed
