"""The upstream client against real registries: Distribution (plain HTTP, no auth) and a second
`dockyard serve` (the Docker token flow with credentials)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dockyard.config import Settings
from dockyard.oci.mediatypes import MANIFEST_TYPES
from dockyard.upstream.client import HttpUpstream, open_upstream, parse_challenge, parse_source
from dockyard.upstream.interfaces import (
    Credentials,
    UpstreamDenied,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRef,
    UpstreamUnavailable,
)
from tests.e2e.support import ADMIN_PASSWORD, ADMIN_USERNAME, DockyardServer, push_image, put_manifest
from tests.support.distribution import Distribution, distribution, push_to, put_raw
from tests.support.images import make_artifact, make_image, make_index
from tests.support.postgres import free_port

ADMIN_CREDENTIALS = Credentials(ADMIN_USERNAME, ADMIN_PASSWORD)


def settings_for(tmp_path: Path, *insecure: str, allowed: tuple[str, ...] = ("127.0.0.0/8",)) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        insecure_upstreams=list(insecure),
        upstream_allowed_networks=list(allowed),
        upstream_timeout_seconds=5.0,
    )


@pytest.fixture(scope="module")
def upstream_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with distribution(tmp_path_factory.mktemp("distribution")) as server:
        yield server


def test_parse_source() -> None:
    assert parse_source("docker.io/nginx") == UpstreamRef("registry-1.docker.io", "library/nginx", "latest")
    assert parse_source("docker.io/bitnami/redis:7") == UpstreamRef(
        "registry-1.docker.io", "bitnami/redis", "7"
    )
    digest = "sha256:" + "a" * 64
    assert parse_source(f"localhost:5000/a/b@{digest}") == UpstreamRef("localhost:5000", "a/b", digest)
    assert parse_source("Reg.Example.com/app:v1.2") == UpstreamRef("reg.example.com", "app", "v1.2")
    for bad in (
        "nginx",
        "nginx:latest",
        "library/nginx",
        "docker.io/",
        "reg.io/App",
        "reg.io/a:b:c",
        "reg.io/a@sha256:12",
        "reg.io/a:-x",
        "",
        "reg.io/a b",
    ):
        with pytest.raises(ValueError, match=r"source|digest|tag|repository|registry"):
            parse_source(bad)


def test_parse_challenge() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a:pull"'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.io/token",
        "service": "registry.io",
        "scope": "repository:a:pull",
    }
    assert parse_challenge('Basic realm="x"') is not None
    assert parse_challenge("Negotiate abc") is None


def test_distribution_index_and_blobs(upstream_registry: Distribution, tmp_path: Path) -> None:
    images = [make_image("up-amd", architecture="amd64"), make_image("up-arm", architecture="arm64")]
    with httpx.Client(base_url=upstream_registry.url) as http:
        for image in images:
            push_to(http, "team/app", image.digest, image)
        index = make_index(images)
        index_digest = put_raw(http, "team/app", "v1", index, "application/vnd.oci.image.index.v1+json")
    client = open_upstream(upstream_registry.host, None, settings_for(tmp_path, upstream_registry.host))
    try:
        head = client.head_manifest("team/app", "v1", MANIFEST_TYPES)
        assert head.digest == index_digest
        assert head.size == len(index)
        fetched = client.get_manifest("team/app", "v1", MANIFEST_TYPES)
        assert fetched.payload == index
        assert fetched.digest == index_digest
        assert fetched.media_type == "application/vnd.oci.image.index.v1+json"
        by_digest = client.get_manifest("team/app", images[1].digest, MANIFEST_TYPES)
        assert by_digest.payload == images[1].manifest
        layer = images[0].layers[0]
        with client.open_blob("team/app", layer.digest) as blob:
            data = b"".join(blob.chunks)
        assert blob.size == len(layer.data)
        assert data == layer.data
        assert client.list_tags("team/app") == ["v1"]
        assert client.referrers("team/app", index_digest) == []  # no referrers API, no fallback tag
        with pytest.raises(UpstreamNotFound):
            client.get_manifest("team/app", "missing", MANIFEST_TYPES)
        with pytest.raises(UpstreamNotFound):
            client.head_manifest("team/app", "missing", MANIFEST_TYPES)
        with pytest.raises(UpstreamNotFound), client.open_blob("team/app", "sha256:" + "0" * 64):
            pass
    finally:
        client.close()


def test_referrers_tag_schema_fallback(upstream_registry: Distribution, tmp_path: Path) -> None:
    image = make_image("subject-fallback")
    with httpx.Client(base_url=upstream_registry.url) as http:
        subject = push_to(http, "refs/app", "v1", image)
        signature = make_artifact("application/vnd.example.sig", b"sig", subject=image.descriptor())
        push_to(http, "refs/app", signature.digest, signature)
        document = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [signature.descriptor(artifactType="application/vnd.example.sig")],
        }
        fallback = json.dumps(document).encode()
        put_manifest(
            http, "refs/app", subject.replace(":", "-"), fallback, "application/vnd.oci.image.index.v1+json"
        )
    client = open_upstream(upstream_registry.host, None, settings_for(tmp_path, upstream_registry.host))
    try:
        referrers = client.referrers("refs/app", subject)
        assert [r["digest"] for r in referrers] == [signature.digest]
    finally:
        client.close()


def test_token_flow_with_credentials(dockyard_server: DockyardServer, tmp_path: Path) -> None:
    image = make_image("token-flow")
    tagged = make_artifact("application/vnd.example.sbom", b"sbom", subject=image.descriptor())
    with dockyard_server.http() as http:
        digest = push_image(http, "upstream-client/app", "v1", image)
        push_image(http, "upstream-client/app", tagged.digest, tagged)
    settings = settings_for(tmp_path, dockyard_server.host)
    client = open_upstream(dockyard_server.host, ADMIN_CREDENTIALS, settings)
    try:
        assert client.get_manifest("upstream-client/app", "v1", MANIFEST_TYPES).digest == digest
        assert client._challenge is not None
        assert client._challenge.scheme == "bearer"
        token = client._tokens["repository:upstream-client/app:pull"]
        with client.open_blob("upstream-client/app", image.layers[0].digest) as blob:
            assert b"".join(blob.chunks) == image.layers[0].data
        assert client._tokens["repository:upstream-client/app:pull"] == token  # reused, not fetched again
        assert [r["digest"] for r in client.referrers("upstream-client/app", digest)] == [tagged.digest]
        assert "v1" in client.list_tags("upstream-client/app")
    finally:
        client.close()


def test_wrong_password_is_denied(dockyard_server: DockyardServer, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, dockyard_server.host)
    client = open_upstream(dockyard_server.host, Credentials(ADMIN_USERNAME, "wrong-password"), settings)
    try:
        with pytest.raises(UpstreamDenied) as caught:
            client.get_manifest("upstream-client/app", "v1", MANIFEST_TYPES)
        assert "wrong-password" not in str(caught.value)
    finally:
        client.close()
    anonymous = open_upstream(dockyard_server.host, None, settings)
    try:
        with pytest.raises(UpstreamDenied):
            anonymous.head_manifest("upstream-client/app", "v1", MANIFEST_TYPES)
    finally:
        anonymous.close()


def test_loopback_refused_unless_allowed(upstream_registry: Distribution, tmp_path: Path) -> None:
    client = open_upstream(
        upstream_registry.host, None, settings_for(tmp_path, upstream_registry.host, allowed=())
    )
    try:
        with pytest.raises(UpstreamError) as caught:
            client.list_tags("team/app")
        assert not isinstance(caught.value, UpstreamUnavailable)
        assert "loopback" in str(caught.value)
        assert "upstream_allowed_networks" in str(caught.value)
    finally:
        client.close()


def test_plain_http_only_for_insecure_hosts(upstream_registry: Distribution, tmp_path: Path) -> None:
    client = open_upstream(upstream_registry.host, None, settings_for(tmp_path))
    try:
        assert client.base.scheme == "https"
        with pytest.raises(UpstreamUnavailable):  # the TLS handshake with a plain-HTTP server fails
            client.list_tags("team/app")
    finally:
        client.close()
    forced = HttpUpstream(upstream_registry.host, scheme="http", allowed=())
    try:
        with pytest.raises(UpstreamError, match="insecure_upstreams"):
            forced.list_tags("team/app")
    finally:
        forced.close()


class _Scripted(threading.Thread):
    """A tiny HTTP server answering every request with one scripted response (status, headers, body)."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(daemon=True)
        import http.server

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append(dict(self.headers))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value.replace("{port}", str(outer.port)))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args: object) -> None:
                return

        self.port = free_port()
        self.seen: list[dict[str, str]] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)

    def run(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "headers", "expected", "retry_after"),
    [
        (503, {"Retry-After": "7"}, UpstreamUnavailable, 7.0),
        (429, {}, UpstreamUnavailable, None),
        (403, {}, UpstreamDenied, None),
        (404, {}, UpstreamNotFound, None),
    ],
)
def test_error_mapping(
    tmp_path: Path,
    status: int,
    headers: dict[str, str],
    expected: type[UpstreamError],
    retry_after: float | None,
) -> None:
    body = b'{"errors":[{"code":"X","message":"' + b"m" * 5000 + b'"}]}'
    server = _Scripted(status, headers, body)
    server.start()
    client = open_upstream(
        f"127.0.0.1:{server.port}", None, settings_for(tmp_path, f"127.0.0.1:{server.port}")
    )
    try:
        with pytest.raises(expected) as caught:
            client.get_manifest("a", "v1", MANIFEST_TYPES)
        assert len(str(caught.value)) < 400  # never the whole upstream body
        if retry_after is not None:
            assert isinstance(caught.value, UpstreamUnavailable)
            assert caught.value.retry_after == retry_after
    finally:
        client.close()
        server.stop()


def test_digest_mismatch_is_refused(tmp_path: Path) -> None:
    payload = b'{"schemaVersion":2}'
    server = _Scripted(
        200,
        {
            "Docker-Content-Digest": "sha256:" + "1" * 64,
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
        },
        payload,
    )
    server.start()
    client = open_upstream(
        f"127.0.0.1:{server.port}", None, settings_for(tmp_path, f"127.0.0.1:{server.port}")
    )
    try:
        with pytest.raises(UpstreamError, match="does not match"):
            client.get_manifest("a", "v1", MANIFEST_TYPES)
        good = "sha256:" + hashlib.sha256(payload).hexdigest()
        with pytest.raises(UpstreamError, match="does not match"):
            client.get_manifest("a", "sha256:" + "2" * 64, MANIFEST_TYPES)
        assert good != "sha256:" + "2" * 64
    finally:
        client.close()
        server.stop()


def test_redirect_drops_authorization_for_another_host(tmp_path: Path) -> None:
    target = _Scripted(200, {}, b"blob-bytes")
    target.start()
    # "localhost" and "127.0.0.1" are different origins: the redirect must not carry the credentials.
    origin = _Scripted(307, {"Location": f"http://localhost:{target.port}/presigned?sig=1"}, b"")
    origin.start()
    host = f"127.0.0.1:{origin.port}"
    settings = settings_for(tmp_path, host, "localhost")
    client = open_upstream(host, Credentials("u", "p"), settings)
    client._challenge = parse_challenge('Basic realm="x"')
    try:
        with client.open_blob("a", "sha256:" + "3" * 64) as blob:
            assert b"".join(blob.chunks) == b"blob-bytes"
        assert origin.seen[0].get("Authorization", "").startswith("Basic ")
        assert "Authorization" not in target.seen[0]
    finally:
        client.close()
        origin.stop()
        target.stop()


def test_upstream_down_is_unavailable(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    client = open_upstream(host, None, settings_for(tmp_path, host))
    try:
        with pytest.raises(UpstreamUnavailable) as caught:
            client.get_manifest("a", "v1", MANIFEST_TYPES)
        assert caught.value.status is None
    finally:
        client.close()
