"""Pure parts of the upstream client: source references and WWW-Authenticate challenges."""

from __future__ import annotations

import pytest

from dockyard.upstream.client import _retry_after, parse_challenge, parse_source
from dockyard.upstream.interfaces import UpstreamRef


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


def test_retry_after() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
