"""The azure-containerregistry SDK against Dockyard over HTTPS: the challenge, /oauth2/exchange,
/oauth2/token and the /acr/v1 API, with a service principal, a repository-scoped token and anonymously."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from azure.containerregistry import ContainerRegistryClient
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from tests.e2e.support import HttpsServer, push_image
from tests.support.images import make_image

pytestmark = pytest.mark.e2e


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
