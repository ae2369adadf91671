"""The oras Python SDK: artifacts, Helm-shaped charts and referrers (checked over raw HTTP)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import httpx
import oras.client
import oras.oci
import pytest

from tests.e2e.support import ADMIN, DockyardServer, fetch_blob, fetch_manifest, push_image, sha256_digest
from tests.support.images import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, make_image

pytestmark = pytest.mark.e2e

DATA_CONFIG = "application/vnd.dockyard.e2e.config.v1+json"
DATA_LAYER = "application/vnd.dockyard.e2e.data.v1"
SIGNATURE_CONFIG = "application/vnd.dockyard.e2e.signature.config.v1+json"
SBOM_TYPE = "application/vnd.dockyard.e2e.sbom.v1+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"


@pytest.fixture
def oras_client(dockyard_server: DockyardServer) -> oras.client.OrasClient:
    """Plain HTTP, no authentication."""
    client = oras.client.OrasClient(hostname=dockyard_server.host, insecure=True, auth_backend="basic")
    client.auth.set_basic_auth(*ADMIN)
    return client


def test_push_and_pull_artifact_with_config_media_type(
    oras_client: oras.client.OrasClient,
    dockyard_server: DockyardServer,
    registry_http: httpx.Client,
    tmp_path: Path,
) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"dockyard e2e payload\n" * 1000)
    config = tmp_path / "config.json"
    config.write_text('{"purpose": "e2e"}')
    target = f"{dockyard_server.host}/oras/artifact:v1"

    response = oras_client.push(
        target,
        files=[f"{payload}:{DATA_LAYER}"],
        manifest_config=f"{config}:{DATA_CONFIG}",
        manifest_annotations={"org.opencontainers.image.title": "e2e artifact"},
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201

    manifest = json.loads(fetch_manifest(registry_http, "oras/artifact", "v1"))
    assert manifest["config"]["mediaType"] == DATA_CONFIG
    assert manifest["config"]["digest"] == sha256_digest(config.read_bytes())
    assert [layer["mediaType"] for layer in manifest["layers"]] == [DATA_LAYER]
    assert fetch_blob(registry_http, "oras/artifact", manifest["config"]["digest"]) == config.read_bytes()

    assert oras_client.get_tags(target) == ["v1"]
    out = tmp_path / "out"
    pulled = oras_client.pull(target=target, outdir=str(out))
    assert [Path(p).name for p in pulled] == ["payload.bin"]
    assert (out / "payload.bin").read_bytes() == payload.read_bytes()


def test_push_artifact_with_artifact_type(
    oras_client: oras.client.OrasClient,
    dockyard_server: DockyardServer,
    registry_http: httpx.Client,
    tmp_path: Path,
) -> None:
    """An OCI 1.1 artifact: artifactType set, empty config, pushed through the SDK's blob/manifest calls."""
    payload = tmp_path / "notes.txt"
    payload.write_bytes(b"release notes\n")
    target = f"{dockyard_server.host}/oras/typed:v1"
    container = oras_client.get_container(target)
    layer = oras.oci.NewLayer(str(payload), media_type="text/plain")
    layer["annotations"] = {"org.opencontainers.image.title": "notes.txt"}
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"{}")
    config = {"mediaType": OCI_EMPTY, "digest": sha256_digest(b"{}"), "size": 2}
    assert oras_client.upload_blob(str(empty), container, config).status_code in (200, 201)
    assert oras_client.upload_blob(str(payload), container, layer).status_code in (200, 201)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dockyard.e2e.notes.v1",
        "config": config,
        "layers": [layer],
    }
    assert oras_client.upload_manifest(manifest, container).status_code == 201

    fetched = oras_client.get_manifest(target)
    assert fetched["artifactType"] == "application/vnd.dockyard.e2e.notes.v1"
    detail = registry_http.get(
        f"/acr/v1/oras/typed/_manifests/{sha256_digest(fetch_manifest(registry_http, 'oras/typed', 'v1'))}"
    )
    assert detail.status_code == 200
    assert detail.json()["manifest"]["artifactType"] == "application/vnd.dockyard.e2e.notes.v1"
    pulled = oras_client.pull(target=target, outdir=str(tmp_path / "out"))
    assert [Path(p).read_bytes() for p in pulled] == [b"release notes\n"]


def _referrers(http: httpx.Client, repository: str, digest: str, **params: str) -> httpx.Response:
    response = http.get(f"/v2/{repository}/referrers/{digest}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == OCI_INDEX
    body = response.json()
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == OCI_INDEX
    return response


def test_referrers_of_an_image(
    oras_client: oras.client.OrasClient,
    dockyard_server: DockyardServer,
    registry_http: httpx.Client,
    tmp_path: Path,
) -> None:
    repository = "oras/app"
    image = make_image("oras-subject")
    subject_digest = push_image(registry_http, repository, "v1", image)
    subject = oras.oci.Subject(mediaType=image.media_type, digest=subject_digest, size=len(image.manifest))

    assert _referrers(registry_http, repository, subject_digest).json()["manifests"] == []

    # A signature-like referrer: its artifactType is its config's media type.
    signature = tmp_path / "signature.sig"
    signature.write_bytes(b"not really a signature")
    sig_config = tmp_path / "sig-config.json"
    sig_config.write_text("{}")
    response = oras_client.push(
        f"{dockyard_server.host}/{repository}:sig",
        files=[f"{signature}:application/vnd.dockyard.e2e.signature.v1"],
        manifest_config=f"{sig_config}:{SIGNATURE_CONFIG}",
        manifest_annotations={"org.example.signed-by": "e2e"},
        subject=subject,
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201
    assert response.headers.get("OCI-Subject") == subject_digest
    sig_digest = response.headers["Docker-Content-Digest"]

    # An SBOM-like referrer with an explicit artifactType.
    container = oras_client.get_container(f"{dockyard_server.host}/{repository}:sbom")
    sbom = tmp_path / "sbom.json"
    sbom.write_text('{"packages": []}')
    sbom_layer = oras.oci.NewLayer(str(sbom), media_type="application/spdx+json")
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"{}")
    empty_config = {"mediaType": OCI_EMPTY, "digest": sha256_digest(b"{}"), "size": 2}
    assert oras_client.upload_blob(str(empty), container, empty_config).status_code in (200, 201)
    assert oras_client.upload_blob(str(sbom), container, sbom_layer).status_code in (200, 201)
    sbom_manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM_TYPE,
        "config": empty_config,
        "layers": [sbom_layer],
        "subject": {"mediaType": image.media_type, "digest": subject_digest, "size": len(image.manifest)},
    }
    response = oras_client.upload_manifest(sbom_manifest, container)
    assert response.status_code == 201
    assert response.headers.get("OCI-Subject") == subject_digest
    sbom_digest = response.headers["Docker-Content-Digest"]

    listed = _referrers(registry_http, repository, subject_digest)
    assert "OCI-Filters-Applied" not in listed.headers
    by_digest = {d["digest"]: d for d in listed.json()["manifests"]}
    assert set(by_digest) == {sig_digest, sbom_digest}
    for digest, artifact_type in ((sig_digest, SIGNATURE_CONFIG), (sbom_digest, SBOM_TYPE)):
        descriptor = by_digest[digest]
        payload = fetch_manifest(registry_http, repository, digest)
        assert descriptor["mediaType"] == OCI_MANIFEST
        assert descriptor["size"] == len(payload)
        assert descriptor["artifactType"] == artifact_type
    assert by_digest[sig_digest]["annotations"] == {"org.example.signed-by": "e2e"}

    filtered = _referrers(registry_http, repository, subject_digest, artifactType=SBOM_TYPE)
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in filtered.json()["manifests"]] == [sbom_digest]

    filtered = _referrers(registry_http, repository, subject_digest, artifactType=SIGNATURE_CONFIG)
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in filtered.json()["manifests"]] == [sig_digest]

    nothing = _referrers(registry_http, repository, subject_digest, artifactType="application/x-none")
    assert nothing.headers["OCI-Filters-Applied"] == "artifactType"
    assert nothing.json()["manifests"] == []

    # The referrers are ordinary manifests too: the subject itself is untouched and has none of its own.
    assert fetch_manifest(registry_http, repository, "v1") == image.manifest
    assert _referrers(registry_http, repository, sig_digest).json()["manifests"] == []


def _chart_archive() -> bytes:
    files = {
        "mychart/Chart.yaml": b"apiVersion: v2\nname: mychart\nversion: 0.1.0\n",
        "mychart/values.yaml": b"replicaCount: 1\n",
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


def test_push_and_pull_helm_shaped_chart(
    oras_client: oras.client.OrasClient,
    dockyard_server: DockyardServer,
    registry_http: httpx.Client,
    tmp_path: Path,
) -> None:
    chart = tmp_path / "mychart-0.1.0.tgz"
    chart.write_bytes(_chart_archive())
    chart_config = tmp_path / "chart-config.json"
    chart_config.write_text(json.dumps({"name": "mychart", "version": "0.1.0", "apiVersion": "v2"}))
    target = f"{dockyard_server.host}/oras/charts/mychart:0.1.0"

    response = oras_client.push(
        target,
        files=[f"{chart}:{HELM_CHART}"],
        manifest_config=f"{chart_config}:{HELM_CONFIG}",
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201
    digest = response.headers["Docker-Content-Digest"]

    manifest = json.loads(fetch_manifest(registry_http, "oras/charts/mychart", "0.1.0"))
    assert manifest["config"]["mediaType"] == HELM_CONFIG
    assert [layer["mediaType"] for layer in manifest["layers"]] == [HELM_CHART]
    assert (
        fetch_blob(registry_http, "oras/charts/mychart", manifest["layers"][0]["digest"])
        == chart.read_bytes()
    )

    detail = registry_http.get(f"/acr/v1/oras/charts/mychart/_manifests/{digest}")
    assert detail.status_code == 200
    assert detail.json()["manifest"]["configMediaType"] == HELM_CONFIG
    assert detail.json()["manifest"]["tags"] == ["0.1.0"]

    pulled = oras_client.pull(target=target, outdir=str(tmp_path / "out"))
    assert [Path(p).read_bytes() for p in pulled] == [chart.read_bytes()]
