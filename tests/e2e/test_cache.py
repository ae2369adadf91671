"""The pull-through cache with real clients and real upstreams: skopeo pulls through `dockyard serve`
from CNCF Distribution (plain HTTP) and from a second, private `dockyard serve` via a credential set.

Prints the first-pull (through the upstream) and later-pull (local) times it measures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import ADMIN_PASSWORD, ADMIN_USERNAME, ContainerTools, DockyardServer, fetch_manifest
from tests.support.distribution import Distribution
from tests.support.images import make_image, make_index, write_oci_layout

pytestmark = pytest.mark.e2e

#: Settings that let the cache reach the test upstreams (plain HTTP on 127.0.0.1).
UPSTREAM_ENV = {
    "DOCKYARD_INSECURE_UPSTREAMS": "127.0.0.1",
    "DOCKYARD_UPSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
}


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Distribution]:
    running = Distribution(tmp_path / "upstream").start()
    yield running
    running.stop()


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, list]:
    """An OCI layout with a 3-layer image of ~6 MiB (`single`) and a two-platform index (`multi`)."""
    single = make_image("cache-e2e", layers=3, layer_size=2 * 1024 * 1024)
    amd = make_image("cache-amd", architecture="amd64")
    arm = make_image("cache-arm", architecture="arm64")
    path = tmp_path / "layout"
    write_oci_layout(path, {"single": single}, {"multi": (make_index([amd, arm]), [amd, arm])})
    return path, [single, amd, arm]


def create_rule(server: DockyardServer, name: str, source: str, target: str, cred: str | None = None) -> None:
    body = {"name": name, "sourceRepository": source, "targetRepository": target}
    if cred:
        body["credentialSetName"] = cred
    with server.http(timeout=30) as http:
        created = http.post("/api/v1/cache-rules", json=body)
    assert created.status_code == 201, created.text


def timed_copy(tools: ContainerTools, *args: str) -> float:
    started = time.perf_counter()
    tools.skopeo("copy", "--src-tls-verify=false", *args)
    return time.perf_counter() - started


def test_skopeo_pulls_through_the_cache_and_later_without_the_upstream(
    start_server, container_tools: ContainerTools, upstream: Distribution, layout, tmp_path: Path
) -> None:
    path, (single, _amd, arm) = layout
    tools = container_tools
    tools.skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{path}:single", f"docker://{upstream.host}/team/app:v1"
    )
    tools.skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{path}:multi",
        f"docker://{upstream.host}/team/multi:v1",
    )
    server = start_server(data_dir=tmp_path / "cache-data", env=UPSTREAM_ENV)
    tools.authorize(server.host)
    create_rule(server, "team-cache", f"{upstream.host}/team/*", "hub/*")

    first = timed_copy(tools, f"docker://{server.host}/hub/app:v1", f"oci:{tmp_path / 'out1'}:app")
    multi = timed_copy(
        tools, "--all", f"docker://{server.host}/hub/multi:v1", f"oci:{tmp_path / 'out2'}:multi"
    )
    upstream.stop()
    later = timed_copy(tools, f"docker://{server.host}/hub/app:v1", f"oci:{tmp_path / 'out3'}:app")
    later_multi = timed_copy(
        tools, "--all", f"docker://{server.host}/hub/multi:v1", f"oci:{tmp_path / 'out4'}:multi"
    )
    with server.http(timeout=30) as http:
        assert fetch_manifest(http, "hub/app", "v1") == single.manifest
        assert fetch_manifest(http, "hub/multi", arm.digest) == arm.manifest
        # a push into the cache target is refused, one elsewhere works
    refused = tools.skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{path}:single",
        f"docker://{server.host}/hub/app:v2",
        check=False,
    )
    assert refused.returncode != 0
    assert "denied" in refused.stderr.lower()
    tools.skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{path}:single", f"docker://{server.host}/own/app:v1"
    )
    print(  # the measurements the report quotes
        f"\ncache timings: first pull {first:.2f}s, later pull {later:.2f}s (6 MiB image, 3 layers); "
        f"index --all first {multi:.2f}s, later {later_multi:.2f}s"
    )


def test_a_private_upstream_through_a_credential_set(
    start_server, container_tools: ContainerTools, layout, tmp_path: Path
) -> None:
    path, (single, _amd, _arm) = layout
    tools = container_tools
    private = start_server(data_dir=tmp_path / "private-data")
    tools.authorize(private.host)
    tools.skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{path}:single", f"docker://{private.host}/secret/app:v1"
    )
    with httpx.Client(base_url=private.url, timeout=30) as anonymous:
        assert anonymous.get("/v2/secret/app/manifests/v1").status_code == 401
    server = start_server(data_dir=tmp_path / "cache-data", env=UPSTREAM_ENV)
    tools.authorize(server.host)
    with server.http(timeout=30) as http:
        made = http.post(
            "/api/v1/credential-sets",
            json={
                "name": "private-set",
                "loginServer": private.host,
                "username": ADMIN_USERNAME,
                "password": ADMIN_PASSWORD,
            },
        )
        assert made.status_code == 201, made.text
        assert ADMIN_PASSWORD not in made.text
    create_rule(server, "private-cache", f"{private.host}/secret/app", "mirror/app", "private-set")
    create_rule(server, "nocred-cache", f"{private.host}/secret/app", "nocred/app")
    tools.skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{server.host}/mirror/app:v1",
        f"oci:{tmp_path / 'out'}:app",
    )
    with server.http(timeout=30) as http:
        assert fetch_manifest(http, "mirror/app", "v1") == single.manifest
        refused = http.get("/v2/nocred/app/manifests/v1", headers={"Accept": single.media_type})
        assert refused.status_code == 403, refused.text
