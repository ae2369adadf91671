"""Soft delete with a real client: skopeo pushes, skopeo deletes, the API restores, skopeo pulls again."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import ContainerTools, DockyardServer, fetch_manifest
from tests.support.images import make_image, sha256, write_oci_layout

pytestmark = pytest.mark.e2e

POLICY = "/api/v1/registry/policies/soft-delete"


def test_a_deleted_image_is_restored_and_pulls_again(
    container_tools: ContainerTools,
    dockyard_server: DockyardServer,
    registry_http: httpx.Client,
    tmp_path: Path,
) -> None:
    image = make_image("e2e-recycle", layers=2)
    source = tmp_path / "source"
    write_oci_layout(source, {"v1": image}, {})
    reference = f"docker://{dockyard_server.host}/recycle/app:v1"
    container_tools.skopeo("copy", "--dest-tls-verify=false", f"oci:{source}:v1", reference)

    assert registry_http.patch(POLICY, json={"status": "enabled"}).status_code == 200
    try:
        container_tools.skopeo("delete", "--tls-verify=false", reference)
        gone = container_tools.skopeo("inspect", "--tls-verify=false", reference, check=False)
        assert gone.returncode != 0

        restored = registry_http.post(f"/api/v1/deleted/recycle/app/_manifests/{image.digest}/restore")
        assert restored.status_code == 200, restored.text
        assert restored.json()["restoredTags"] == ["v1"]
    finally:
        assert registry_http.patch(POLICY, json={"status": "disabled"}).status_code == 200

    pulled = tmp_path / "pulled"
    container_tools.skopeo("copy", "--src-tls-verify=false", reference, f"oci:{pulled}:v1")
    index = json.loads((pulled / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [image.digest]
    for blob in image.blobs:
        assert sha256((pulled / "blobs" / "sha256" / blob.digest.split(":")[1]).read_bytes()) == blob.digest
    assert fetch_manifest(registry_http, "recycle/app", "v1") == image.manifest
