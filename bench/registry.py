"""A small OCI distribution client on http.client: cheap per request, keep-alive, no magic.

Used to push blobs and images, mount blobs, populate tags and repositories in
parallel, and walk paginated listings, the same way against every server.
"""

from __future__ import annotations

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


class RegistryFailure(RuntimeError):
    """A registry answered something other than what the workload expects."""


def sha256_digest(data: bytes | bytearray | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class Client:
    """One keep-alive connection to one registry (not thread-safe: one per thread)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 300.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
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
    ) -> Reply:
        headers = dict(headers or {})
        if body is not None:
            headers.setdefault("Content-Length", str(memoryview(body).nbytes))
        elif method in {"POST", "PUT", "PATCH"}:
            headers.setdefault("Content-Length", "0")
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
                f"{method} {path[:120]} answered {response.status}: {data[:300]!r} (expected {list(expect)})"
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
        reply = self.request("POST", f"/v2/{repository}/blobs/uploads/", expect=(202,))
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
            )
            location = self._location(reply)
            patches += 1
        self.request("PUT", self._with_query(location, digest=digest), expect=(201,))
        return patches

    def mount(self, repository: str, digest: str, source: str) -> None:
        path = f"/v2/{repository}/blobs/uploads/?" + urlencode({"mount": digest, "from": source})
        self.request("POST", path, expect=(201,))

    def get_blob(self, repository: str, digest: str) -> bytes:
        return self.request("GET", f"/v2/{repository}/blobs/{digest}").body

    # -- manifests ----------------------------------------------------------------------------

    def put_manifest(self, repository: str, reference: str, payload: bytes) -> None:
        self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            body=payload,
            headers={"Content-Type": OCI_MANIFEST},
            expect=(201,),
        )

    def get_manifest(self, repository: str, reference: str, method: str = "GET") -> Reply:
        return self.request(
            method, f"/v2/{repository}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
        )

    # -- listings -----------------------------------------------------------------------------

    def pages(self, path: str) -> list[Reply]:
        """Every page of a paginated listing, following Link rel="next"; the bodies stay undecoded.

        Only the HTTP exchanges: the next page comes from the Link header, so a timer
        around this measures the server and the wire, not the client's JSON decoding.
        """
        replies: list[Reply] = []
        next_path: str | None = path
        while next_path:
            reply = self.request("GET", next_path)
            replies.append(reply)
            next_path = next_page(reply)
            if len(replies) > 100_000:
                raise RegistryFailure(f"{path} does not stop paginating")
        return replies

    def walk(self, path: str, key: str) -> tuple[list[str], int]:
        """Every item of a paginated listing, following Link rel="next"; and the page count."""
        replies = self.pages(path)
        return listing_items(replies, key), len(replies)


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


def parallel(port: int, jobs: list[Callable[[Client], None]], threads: int = 8) -> float:
    """Run ``jobs`` on ``threads`` threads, each with its own keep-alive client; the seconds it took."""
    local = threading.local()
    clients: list[Client] = []
    lock = threading.Lock()

    def run(job: Callable[[Client], None]) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = Client(port)
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
