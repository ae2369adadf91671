"""Locks as real clients meet them: skopeo cannot overwrite a write-locked tag, skopeo and podman
cannot pull a read-locked image, and unlocking restores both."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.support import ContainerTools, DockyardServer
from tests.support.images import make_image, write_oci_layout

pytestmark = pytest.mark.e2e


def _patch(http: httpx.Client, path: str, **attributes: bool) -> None:
    response = http.patch(f"/acr/v1/{path}", json=attributes)
    assert response.status_code == 200, response.text


def test_skopeo_cannot_overwrite_a_write_locked_tag(
    container_tools: ContainerTools,
    dockyard_server: DockyardServer,
    registry_http: httpx.Client,
    tmp_path: Path,
) -> None:
    host = dockyard_server.host
    first, second = make_image("locks-skopeo-1"), make_image("locks-skopeo-2")
    write_oci_layout(tmp_path / "layout", {"first": first, "second": second})
    source = f"oci:{tmp_path / 'layout'}"
    target = f"docker://{host}/locks/skopeo:v1"
    container_tools.skopeo("copy", "--dest-tls-verify=false", f"{source}:first", target)
    _patch(registry_http, "locks/skopeo/_tags/v1", writeEnabled=False)

    refused = container_tools.skopeo(
        "copy", "--dest-tls-verify=false", f"{source}:second", target, check=False
    )
    assert refused.returncode != 0
    assert "writeEnabled=false" in refused.stderr, refused.stderr
    assert "denied" in refused.stderr.lower()
    tag = registry_http.get("/acr/v1/locks/skopeo/_tags/v1").json()["tag"]
    assert tag["digest"] == first.digest

    _patch(registry_http, "locks/skopeo/_tags/v1", writeEnabled=True)
    container_tools.skopeo("copy", "--dest-tls-verify=false", f"{source}:second", target)
    assert registry_http.get("/acr/v1/locks/skopeo/_tags/v1").json()["tag"]["digest"] == second.digest


def test_a_read_locked_image_is_not_pulled(
    container_tools: ContainerTools,
    dockyard_server: DockyardServer,
    registry_http: httpx.Client,
    tmp_path: Path,
) -> None:
    host = dockyard_server.host
    image = make_image("locks-pull", layers=2)
    write_oci_layout(tmp_path / "layout", {"src": image})
    container_tools.skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:src", f"docker://{host}/locks/pull:v1"
    )
    _patch(registry_http, "locks/pull/_tags/v1", readEnabled=False)
    copied = container_tools.skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{host}/locks/pull:v1",
        f"oci:{tmp_path / 'out'}:v1",
        check=False,
    )
    assert copied.returncode != 0
    assert "readEnabled=false" in copied.stderr, copied.stderr

    _patch(registry_http, "locks/pull/_tags/v1", readEnabled=True)
    _patch(registry_http, "locks/pull", readEnabled=False)  # the whole repository: blobs too
    store = tmp_path / "store"
    policy = f"--signature-policy={container_tools.policy}"
    pulled = container_tools.podman_unchecked(
        store, "pull", "--tls-verify=false", policy, f"{host}/locks/pull:v1"
    )
    assert pulled.returncode != 0
    assert "readEnabled=false" in pulled.stderr, pulled.stderr
    blob = registry_http.get(f"/v2/locks/pull/blobs/{image.layers[0].digest}")
    assert blob.status_code == 403

    _patch(registry_http, "locks/pull", readEnabled=True)
    container_tools.podman(store, "pull", "--tls-verify=false", policy, f"{host}/locks/pull:v1")
