"""podman (private vfs store) pulls what skopeo pushed and pushes it back under a new name."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import ContainerTools, DockyardServer, fetch_blob, fetch_manifest
from tests.support.images import make_image, write_oci_layout

pytestmark = pytest.mark.e2e


def test_pull_then_push_under_new_name(
    container_tools: ContainerTools,
    dockyard_server: DockyardServer,
    registry_http: httpx.Client,
    tmp_path: Path,
) -> None:
    host = dockyard_server.host
    image = make_image("podman-source", layers=2)
    write_oci_layout(tmp_path / "layout", {"src": image})
    container_tools.skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'layout'}:src",
        f"docker://{host}/podman/source:v1",
    )
    store = tmp_path / "store"
    policy = f"--signature-policy={container_tools.policy}"

    container_tools.podman(store, "pull", "--tls-verify=false", policy, f"{host}/podman/source:v1")
    inspected = json.loads(
        container_tools.podman(store, "image", "inspect", f"{host}/podman/source:v1").stdout
    )
    assert inspected[0]["Id"] == image.config.digest.split(":", 1)[1]
    assert inspected[0]["Labels"] == {"seed": "podman-source"}

    container_tools.podman(
        store, "push", "--tls-verify=false", policy, f"{host}/podman/source:v1", f"{host}/podman/pushed:new"
    )

    tags = registry_http.get("/v2/podman/pushed/tags/list")
    assert tags.status_code == 200
    assert tags.json() == {"name": "podman/pushed", "tags": ["new"]}
    manifest = json.loads(fetch_manifest(registry_http, "podman/pushed", "new"))
    # podman recompresses layers, but the config (the image's identity) is the same bytes.
    assert manifest["config"]["digest"] == image.config.digest
    assert fetch_blob(registry_http, "podman/pushed", image.config.digest) == image.config.data
    assert len(manifest["layers"]) == 2
    for descriptor in [manifest["config"], *manifest["layers"]]:
        head = registry_http.head(f"/v2/podman/pushed/blobs/{descriptor['digest']}")
        assert head.status_code == 200
        assert int(head.headers["content-length"]) == descriptor["size"]
        assert len(fetch_blob(registry_http, "podman/pushed", descriptor["digest"])) == descriptor["size"]
