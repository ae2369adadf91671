"""skopeo against `dockyard serve`: copy in and out (images, indexes), inspect, list-tags, delete."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import ContainerTools, DockyardServer, fetch_blob, fetch_manifest, get_manifest
from tests.support.images import Image, make_image, make_index, sha256, write_oci_layout

pytestmark = pytest.mark.e2e


@dataclass
class Layout:
    path: Path
    single: Image
    members: list[Image]
    index: bytes


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """An OCI layout with an image (`single`) and a two-platform index (`multi`)."""
    single = make_image("skopeo-single", layers=2)
    amd = make_image("skopeo-amd", architecture="amd64")
    arm = make_image("skopeo-arm", architecture="arm64")
    index = make_index([amd, arm])
    path = tmp_path_factory.mktemp("skopeo") / "layout"
    write_oci_layout(path, {"single": single}, {"multi": (index, [amd, arm])})
    return Layout(path, single, [amd, arm], index)


@pytest.fixture(scope="module")
def pushed(container_tools: ContainerTools, dockyard_server: DockyardServer, layout: Layout) -> Layout:
    """The layout's image copied to skopeo/app:v1 and its index (with --all) to skopeo/multi:v1."""
    host = dockyard_server.host
    container_tools.skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{layout.path}:single", f"docker://{host}/skopeo/app:v1"
    )
    container_tools.skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{layout.path}:multi",
        f"docker://{host}/skopeo/multi:v1",
    )
    return layout


def _blob_files(layout_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (layout_path / "blobs" / "sha256").iterdir()}


def _refs(layout_path: Path) -> dict[str, str]:
    index = json.loads((layout_path / "index.json").read_text())
    return {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}


def test_copy_in_stores_exact_bytes(pushed: Layout, registry_http: httpx.Client) -> None:
    assert fetch_manifest(registry_http, "skopeo/app", "v1") == pushed.single.manifest
    for blob in pushed.single.blobs:
        assert fetch_blob(registry_http, "skopeo/app", blob.digest) == blob.data

    assert fetch_manifest(registry_http, "skopeo/multi", "v1") == pushed.index
    for member in pushed.members:
        assert fetch_manifest(registry_http, "skopeo/multi", member.digest) == member.manifest
        for blob in member.blobs:
            assert fetch_blob(registry_http, "skopeo/multi", blob.digest) == blob.data


def test_copy_out_round_trips_digests_and_bytes(
    pushed: Layout, container_tools: ContainerTools, dockyard_server: DockyardServer, tmp_path: Path
) -> None:
    host = dockyard_server.host
    out = tmp_path / "out"
    container_tools.skopeo(
        "copy", "--src-tls-verify=false", f"docker://{host}/skopeo/app:v1", f"oci:{out}:single"
    )
    container_tools.skopeo(
        "copy", "--all", "--src-tls-verify=false", f"docker://{host}/skopeo/multi:v1", f"oci:{out}:multi"
    )
    assert _refs(out) == {"single": pushed.single.digest, "multi": sha256(pushed.index)}
    # Every manifest, config and layer comes back byte for byte, and nothing else does.
    assert _blob_files(out) == _blob_files(pushed.path)


def test_inspect_raw_is_what_was_pushed(
    pushed: Layout, container_tools: ContainerTools, dockyard_server: DockyardServer
) -> None:
    host = dockyard_server.host
    raw = container_tools.skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/skopeo/app:v1")
    assert raw.stdout.encode() == pushed.single.manifest
    raw_index = container_tools.skopeo(
        "inspect", "--raw", "--tls-verify=false", f"docker://{host}/skopeo/multi:v1"
    )
    assert raw_index.stdout.encode() == pushed.index

    details = json.loads(
        container_tools.skopeo("inspect", "--tls-verify=false", f"docker://{host}/skopeo/app:v1").stdout
    )
    assert details["Digest"] == pushed.single.digest
    assert details["Architecture"] == "amd64"
    assert details["Os"] == "linux"
    assert details["Layers"] == [layer.digest for layer in pushed.single.layers]
    assert details["Labels"] == {"seed": "skopeo-single"}


def test_list_tags(layout: Layout, container_tools: ContainerTools, dockyard_server: DockyardServer) -> None:
    host = dockyard_server.host
    for tag in ("v2", "latest", "v1"):
        container_tools.skopeo(
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout.path}:single",
            f"docker://{host}/skopeo/tags:{tag}",
        )
    listed = json.loads(
        container_tools.skopeo("list-tags", "--tls-verify=false", f"docker://{host}/skopeo/tags").stdout
    )
    assert listed["Repository"] == f"{host}/skopeo/tags"
    assert listed["Tags"] == ["latest", "v1", "v2"]


def test_delete_removes_the_manifest(
    layout: Layout,
    container_tools: ContainerTools,
    dockyard_server: DockyardServer,
    registry_http: httpx.Client,
) -> None:
    host = dockyard_server.host
    container_tools.skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{layout.path}:single", f"docker://{host}/skopeo/del:v1"
    )
    assert get_manifest(registry_http, "skopeo/del", "v1").status_code == 200

    container_tools.skopeo("delete", "--tls-verify=false", f"docker://{host}/skopeo/del:v1")

    assert get_manifest(registry_http, "skopeo/del", "v1").status_code == 404
    gone = get_manifest(registry_http, "skopeo/del", layout.single.digest)
    assert gone.status_code == 404
    assert gone.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    tags = registry_http.get("/v2/skopeo/del/tags/list")
    assert tags.status_code == 200
    assert tags.json()["tags"] == []


def test_delete_index_before_its_children(
    layout: Layout,
    container_tools: ContainerTools,
    dockyard_server: DockyardServer,
    registry_http: httpx.Client,
) -> None:
    host = dockyard_server.host
    repo = "skopeo/del-multi"
    container_tools.skopeo(
        "copy", "--all", "--dest-tls-verify=false", f"oci:{layout.path}:multi", f"docker://{host}/{repo}:v1"
    )
    child = layout.members[0].digest
    refused = container_tools.skopeo(
        "delete", "--tls-verify=false", f"docker://{host}/{repo}@{child}", check=False
    )
    assert refused.returncode != 0, "deleting a manifest an index still lists must be refused"
    assert fetch_manifest(registry_http, repo, child) == layout.members[0].manifest

    container_tools.skopeo("delete", "--tls-verify=false", f"docker://{host}/{repo}:v1")
    assert get_manifest(registry_http, repo, "v1").status_code == 404
    container_tools.skopeo("delete", "--tls-verify=false", f"docker://{host}/{repo}@{child}")
    assert get_manifest(registry_http, repo, child).status_code == 404
    # The other child was not touched.
    assert fetch_manifest(registry_http, repo, layout.members[1].digest) == layout.members[1].manifest
