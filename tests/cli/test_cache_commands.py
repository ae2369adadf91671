"""`dockyard cache …` and `dockyard credential-set …` against a real `dockyard serve` and a real upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import Cli
from tests.support.cache_upstreams import push_upstream
from tests.support.distribution import Distribution
from tests.support.images import make_image

pytestmark = pytest.mark.e2e

PASSWORD = "cli-upstream-password-123"
#: Settings that let a server reach the test upstreams (plain HTTP on 127.0.0.1).
UPSTREAM_ENV = {
    "DOCKYARD_INSECURE_UPSTREAMS": "127.0.0.1",
    "DOCKYARD_UPSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
}


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Distribution]:
    running = Distribution(tmp_path / "upstream").start()
    yield running
    running.stop()


def test_credential_sets_round_trip_without_showing_the_password(admin: Cli) -> None:
    created = admin.json(
        "credential-set", "create", "-n", "cliset-one", "-l", "docker.io", "-u", "bob", "-p", PASSWORD
    )
    assert created["loginServer"] == "registry-1.docker.io"
    assert PASSWORD not in str(created)
    from_stdin = admin.ok(
        "credential-set",
        "create",
        "-n",
        "cliset-two",
        "-l",
        "ghcr.io",
        "-u",
        "amy",
        "-p",
        "-",
        "-o",
        "json",
        input=PASSWORD,
    )
    assert PASSWORD not in from_stdin.stdout
    names = [s["name"] for s in admin.json("credential-set", "list")]
    assert {"cliset-one", "cliset-two"} <= set(names)
    updated = admin.json("credential-set", "update", "-n", "cliset-two", "-u", "amy2")
    assert updated["username"] == "amy2"
    assert admin.json("credential-set", "show", "-n", "cliset-two")["username"] == "amy2"
    admin.fails("credential-set", "update", "-n", "cliset-two", code=2)
    admin.ok("credential-set", "delete", "-n", "cliset-two", "--yes")
    admin.fails("credential-set", "show", "-n", "cliset-two")


def test_cache_rules_round_trip_and_a_pull_through_them(
    cli: Cli, start_server, tmp_path: Path, upstream: Distribution
) -> None:
    # a server of its own: it must be allowed to reach a plain-HTTP upstream on loopback
    registry = start_server(data_dir=tmp_path / "data", env=UPSTREAM_ENV)
    admin = Cli(folder=cli.folder, registry=registry.url)
    admin.login()
    image = make_image("cli-cache")
    with httpx.Client(base_url=upstream.url, timeout=30) as http:
        push_upstream(http, "team/cli", image, "v1")
    admin.ok(
        "credential-set", "create", "-n", "cliset-rule", "-l", upstream.host, "-u", "anyone", "-p", PASSWORD
    )
    created = admin.json(
        "cache", "create", "-n", "clirule-one", "-s", f"{upstream.host}/team/cli", "-t", "clicache/app"
    )
    assert created["targetRepository"] == "clicache/app"
    assert created["credentialSetName"] is None
    updated = admin.json("cache", "update", "-n", "clirule-one", "-c", "cliset-rule")
    assert updated["credentialSetName"] == "cliset-rule"
    admin.fails("credential-set", "delete", "-n", "cliset-rule", "--yes")  # in use
    assert (
        admin.json("cache", "update", "-n", "clirule-one", "--remove-cred-set")["credentialSetName"] is None
    )
    admin.fails("cache", "update", "-n", "clirule-one", code=2)
    assert "clirule-one" in [r["name"] for r in admin.json("cache", "list")]
    assert admin.json("cache", "show", "-n", "clirule-one")["sourceRepository"] == f"{upstream.host}/team/cli"
    admin.fails(
        "cache", "create", "-n", "clirule-two", "-s", f"{upstream.host}/x", "-t", "clicache/app"
    )  # same target
    with registry.http(timeout=30) as http:
        pulled = http.get("/v2/clicache/app/manifests/v1", headers={"Accept": image.media_type})
        assert pulled.status_code == 200, pulled.text
        assert pulled.content == image.manifest
        assert pulled.headers["x-dockyard-origin"] == "upstream"
    admin.ok("cache", "delete", "-n", "clirule-one", "--yes")
    admin.fails("cache", "show", "-n", "clirule-one")
    admin.ok("credential-set", "delete", "-n", "cliset-rule", "--yes")
