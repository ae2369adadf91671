"""The azure-containerregistry SDK against Dockyard over HTTPS: the challenge, /oauth2/exchange,
/oauth2/token and the /acr/v1 API, with a service principal, a repository-scoped token and anonymously."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from azure.containerregistry import ContainerRegistryClient
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from tests.e2e.support import ADMIN, HttpsServer, push_image, sha256_digest
from tests.support.images import make_image

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


class IdentityTokenCredential:
    """What the SDK asks a credential for: a token it posts to /oauth2/exchange as access_token.

    Dockyard exchanges an identity's own access token, which `GET /oauth2/token` with the
    identity's Basic credentials (and no scope) returns, as `dockyard login --expose-token` does.
    """

    def __init__(self, server: HttpsServer, username: str, password: str) -> None:
        self.server = server
        self.auth = (username, password)
        self.calls = 0

    def get_token(self, *scopes: str, **_kwargs: Any) -> AccessToken:
        self.calls += 1
        with httpx.Client(verify=self.server.trusting_ca(), timeout=10) as http:
            response = http.get(f"{self.server.url}/oauth2/token", auth=self.auth)
        response.raise_for_status()
        return AccessToken(response.json()["access_token"], int(time.time()) + 300)


def _client(server: HttpsServer, credential: IdentityTokenCredential | None) -> ContainerRegistryClient:
    return ContainerRegistryClient(
        server.url, credential, connection_verify=str(server.ca_cert), retry_total=0
    )


def test_sdk_lists_repositories_and_tags(start_https_server: Callable[..., HttpsServer], tmp_path) -> None:
    server = start_https_server(data_dir=tmp_path / "data")
    v1, v2 = make_image("sdk-1"), make_image("sdk-2", architecture="arm64")
    with server.http(timeout=30) as http:
        push_image(http, "sdk/a", "v1", v1)
        push_image(http, "sdk/a", "v2", v2)
        push_image(http, "sdk/b", "v1", v1)
        reader = http.post("/api/v1/service-principals", json={"name": "sdk-reader"}).json()
        assert (
            http.post(
                "/api/v1/role-assignments",
                json={"assignee": "sdk-reader", "role": "AcrPull", "scope": "registry"},
            ).status_code
            == 201
        )
        http.post(
            "/api/v1/scope-maps",
            json={"name": "sdk-a", "actions": {"sdk/a": ["content/read", "metadata/read"]}},
        )
        token = http.post("/api/v1/tokens", json={"name": "sdk-a-token", "scopeMap": "sdk-a"}).json()

    credential = IdentityTokenCredential(server, "sdk-reader", reader["credentials"][0]["value"])
    with _client(server, credential) as client:
        assert sorted(client.list_repository_names()) == ["sdk/a", "sdk/b"]
        tags = {t.name: t.digest for t in client.list_tag_properties("sdk/a")}
        assert tags == {"v1": v1.digest, "v2": v2.digest}
        properties = client.get_manifest_properties("sdk/a", "v2")
        assert properties.digest == v2.digest
        assert properties.architecture == "arm64"
        manifest = client.get_manifest("sdk/a", "v1")
        assert manifest.digest == v1.digest
        repository = client.get_repository_properties("sdk/b")
        assert repository.tag_count == 1
    assert credential.calls >= 5  # the SDK caches no token: one exchange per operation

    token_credential = IdentityTokenCredential(server, "sdk-a-token", token["credentials"][0]["value"])
    with _client(server, token_credential) as client:
        assert [t.name for t in client.list_tag_properties("sdk/a")] == ["v1", "v2"]
        with pytest.raises(ClientAuthenticationError):
            list(client.list_repository_names())  # no catalog for repository-scoped tokens
        with pytest.raises(ClientAuthenticationError):
            list(client.list_tag_properties("sdk/b"))


def test_sdk_anonymous_client(start_https_server: Callable[..., HttpsServer], tmp_path) -> None:
    server = start_https_server(data_dir=tmp_path / "data")
    image = make_image("sdk-anonymous")
    with server.http(timeout=30) as http:
        push_image(http, "open/app", "latest", image)
    with _client(server, None) as client, pytest.raises(ClientAuthenticationError):
        list(client.list_tag_properties("open/app"))
    with server.http(timeout=30) as http:
        assert http.patch("/api/v1/registry", json={"anonymousPullEnabled": True}).status_code == 200
    with _client(server, None) as client:
        assert [t.name for t in client.list_tag_properties("open/app")] == ["latest"]


@pytest.mark.parametrize("size_mib", [5, 50])
def test_sdk_uploads_sets_manifest_and_downloads(
    start_https_server: Callable[..., HttpsServer], tmp_path, size_mib: int
) -> None:
    """Each PATCH goes out first without a token with its whole body; the 401 must still reach the SDK."""
    server = start_https_server(data_dir=tmp_path / "data")
    credential = IdentityTokenCredential(server, *ADMIN)
    data = os.urandom(size_mib * 1024 * 1024)
    config = b'{"architecture":"amd64","os":"linux"}'
    with _client(server, credential) as client:
        digest, size = client.upload_blob("sdk/big", io.BytesIO(data))
        assert (digest, size) == (sha256_digest(data), len(data))
        config_digest, _ = client.upload_blob("sdk/big", io.BytesIO(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}],
        }
        manifest_digest = client.set_manifest("sdk/big", manifest, tag="v1")
        assert client.get_manifest("sdk/big", "v1").digest == manifest_digest
        stream = client.download_blob("sdk/big", digest)
        assert b"".join(stream) == data


def test_sdk_gets_the_413_for_an_oversized_manifest(
    start_https_server: Callable[..., HttpsServer], tmp_path
) -> None:
    server = start_https_server(data_dir=tmp_path / "data")
    credential = IdentityTokenCredential(server, *ADMIN)
    padding = {"org.example.padding": "x" * (5 * 1024 * 1024)}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(b"{}"), "size": 2},
        "layers": [],
        "annotations": padding,
    }
    with _client(server, credential) as client, pytest.raises(HttpResponseError) as failure:
        client.set_manifest("sdk/big", manifest, tag="huge")
    assert failure.value.status_code == 413
    assert "larger than" in str(failure.value)


def test_sdk_sets_and_reads_changeable_attributes(
    start_https_server: Callable[..., HttpsServer], tmp_path
) -> None:
    """update_*_properties send ACR's PATCHes; the locks they set are kept and enforced."""
    server = start_https_server(data_dir=tmp_path / "data")
    v1, v2 = make_image("sdk-lock-1"), make_image("sdk-lock-2")
    with server.http(timeout=30) as http:
        push_image(http, "sdk/lock", "v1", v1)
        push_image(http, "sdk/lock", "v2", v2)
    credential = IdentityTokenCredential(server, *ADMIN)
    with _client(server, credential) as client:
        repository = client.update_repository_properties("sdk/lock", can_list=False)
        assert (repository.can_list, repository.can_write, repository.can_delete) == (False, True, True)
        assert client.get_repository_properties("sdk/lock").can_list is False
        assert list(client.list_repository_names()) == []
        client.update_repository_properties("sdk/lock", can_list=True)

        tag = client.update_tag_properties("sdk/lock", "v1", can_delete=False, can_write=False)
        assert (tag.can_delete, tag.can_write, tag.can_read, tag.digest) == (False, False, True, v1.digest)
        assert client.get_tag_properties("sdk/lock", "v1").can_write is False
        with pytest.raises(HttpResponseError) as refused:
            client.delete_tag("sdk/lock", "v1")
        assert refused.value.status_code == 403
        with pytest.raises(HttpResponseError) as overwrite:
            client.set_manifest("sdk/lock", v2.manifest, tag="v1", media_type=OCI_MANIFEST)
        assert overwrite.value.status_code == 403

        manifest = client.update_manifest_properties("sdk/lock", "v2", can_read=False)
        assert (manifest.digest, manifest.can_read) == (v2.digest, False)
        with pytest.raises(HttpResponseError) as unreadable:
            client.get_manifest("sdk/lock", v2.digest)
        assert unreadable.value.status_code == 403
        client.update_manifest_properties("sdk/lock", v2.digest, can_read=True)
        assert client.get_manifest("sdk/lock", v2.digest).digest == v2.digest

        client.update_tag_properties("sdk/lock", "v1", can_delete=True, can_write=True)
        client.delete_tag("sdk/lock", "v1")
        assert [t.name for t in client.list_tag_properties("sdk/lock")] == ["v2"]
