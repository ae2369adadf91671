"""buildah builds busybox images from scratch and pushes them, and a two-platform index, to Dockyard."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import ContainerTools, DockyardServer, fetch_blob, fetch_manifest
from tests.support.images import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

pytestmark = pytest.mark.e2e

BUSYBOX = Path("/bin/busybox")
CMD = ["/bin/busybox", "echo", "hello from dockyard"]
LOCAL = "localhost/dockyard-e2e/busybox"


def _busybox() -> bytes:
    if not BUSYBOX.is_file():
        pytest.fail("/bin/busybox is missing: apt-get install -y busybox-static", pytrace=False)
    return BUSYBOX.read_bytes()


def _layer_files(layer: bytes) -> dict[str, bytes]:
    """The regular files in a (possibly gzip'd) tar layer."""
    if layer[:2] == b"\x1f\x8b":
        layer = gzip.decompress(layer)
    files = {}
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[member.name.lstrip("./")] = extracted.read()
    return files


def _check_busybox_image(
    http: httpx.Client, repository: str, reference: str, arch: str, busybox: bytes
) -> None:
    """The image's manifest, config and layer are served and hold busybox for ``arch``."""
    manifest = json.loads(fetch_manifest(http, repository, reference))
    assert manifest["mediaType"] in (OCI_MANIFEST, DOCKER_MANIFEST)
    config = json.loads(fetch_blob(http, repository, manifest["config"]["digest"]))
    assert config["architecture"] == arch
    assert config["os"] == "linux"
    assert config["config"]["Cmd"] == CMD
    assert config["config"]["Labels"]["built-for"] == arch
    assert len(manifest["layers"]) == 1
    layer = fetch_blob(http, repository, manifest["layers"][0]["digest"])
    assert len(layer) == manifest["layers"][0]["size"]
    assert _layer_files(layer)["bin/busybox"] == busybox


def test_build_push_image_and_index(
    container_tools: ContainerTools,
    dockyard_server: DockyardServer,
    registry_http: httpx.Client,
    tmp_path: Path,
) -> None:
    busybox = _busybox()
    host = dockyard_server.host
    store = tmp_path / "store"
    policy = f"--signature-policy={container_tools.policy}"

    def buildah(*args: str) -> str:
        return container_tools.buildah(store, *args).stdout.strip()

    for arch in ("amd64", "arm64"):
        container = buildah("from", policy, "--name", f"bb-{arch}", "scratch")
        assert container == f"bb-{arch}"
        buildah("copy", container, str(BUSYBOX), "/bin/busybox")
        config = ["--cmd", json.dumps(CMD), "--arch", arch, "--os", "linux", "--label", f"built-for={arch}"]
        buildah("config", *config, container)
        buildah("commit", policy, container, f"{LOCAL}:{arch}")

    # One image on its own.
    buildah("push", policy, "--tls-verify=false", f"{LOCAL}:amd64", f"docker://{host}/buildah/busybox:amd64")
    _check_busybox_image(registry_http, "buildah/busybox", "amd64", "amd64", busybox)

    # Both as a two-platform index.
    buildah("manifest", "create", f"{LOCAL}:list")
    for arch in ("amd64", "arm64"):
        buildah("manifest", "add", f"{LOCAL}:list", f"{LOCAL}:{arch}")
    target = f"docker://{host}/buildah/busybox:multi"
    buildah("manifest", "push", "--all", policy, "--tls-verify=false", f"{LOCAL}:list", target)

    index = json.loads(fetch_manifest(registry_http, "buildah/busybox", "multi"))
    assert index["mediaType"] in (OCI_INDEX, DOCKER_LIST)
    platforms = {m["platform"]["architecture"]: m for m in index["manifests"]}
    assert sorted(platforms) == ["amd64", "arm64"]
    for arch, descriptor in platforms.items():
        assert descriptor["platform"]["os"] == "linux"
        assert (
            len(fetch_manifest(registry_http, "buildah/busybox", descriptor["digest"])) == descriptor["size"]
        )
        _check_busybox_image(registry_http, "buildah/busybox", descriptor["digest"], arch, busybox)

    tags = registry_http.get("/v2/buildah/busybox/tags/list")
    assert tags.status_code == 200
    assert tags.json()["tags"] == ["amd64", "multi"]
