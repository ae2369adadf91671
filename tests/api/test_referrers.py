"""The referrers API: subjects, artifactType reporting and filtering, annotations."""

import json

import pytest

from tests.support import images
from tests.support.images import canonical, make_artifact, make_image, make_index, sha256
from tests.support.registry import error_codes, push_image, push_manifest

SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"


@pytest.fixture
def subject(client):
    image = make_image("subject")
    push_image(client, "team/app", image, "v1")
    return image


def test_referrers_list_descriptors_with_artifact_type_and_annotations(client, subject):
    sbom = make_artifact(SBOM, b"sbom", subject=subject.descriptor(), annotations={"org.example": "sbom"})
    signature = make_artifact(SIGNATURE, b"sig", subject=subject.descriptor())
    push_image(client, "team/app", sbom)
    push_image(client, "team/app", signature)
    response = client.get(f"/v2/team/app/referrers/{subject.digest}")
    assert response.status_code == 200
    assert response.headers["content-type"] == images.OCI_INDEX
    assert "oci-filters-applied" not in response.headers
    index = response.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == images.OCI_INDEX
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert by_digest[sbom.digest] == {
        "mediaType": images.OCI_MANIFEST,
        "size": len(sbom.manifest),
        "digest": sbom.digest,
        "artifactType": SBOM,
        "annotations": {"org.example": "sbom"},
    }
    assert by_digest[signature.digest]["artifactType"] == SIGNATURE
    assert "annotations" not in by_digest[signature.digest]


def test_artifact_type_filter(client, subject):
    push_image(client, "team/app", make_artifact(SBOM, b"sbom", subject=subject.descriptor()))
    push_image(client, "team/app", make_artifact(SIGNATURE, b"sig", subject=subject.descriptor()))
    response = client.get(f"/v2/team/app/referrers/{subject.digest}", params={"artifactType": SBOM})
    assert response.headers["oci-filters-applied"] == "artifactType"
    assert [d["artifactType"] for d in response.json()["manifests"]] == [SBOM]


def test_image_manifest_without_artifact_type_reports_its_config_media_type(client, subject):
    referrer = make_image("ref", subject=subject.descriptor())
    push_image(client, "team/app", referrer)
    (descriptor,) = client.get(f"/v2/team/app/referrers/{subject.digest}").json()["manifests"]
    assert descriptor["artifactType"] == images.OCI_CONFIG


def test_index_referrer_without_artifact_type_omits_it(client, subject):
    child = make_image("child")
    push_image(client, "team/app", child)
    document = json.loads(make_index([child]))
    document["subject"] = subject.descriptor()
    payload = canonical(document)
    assert push_manifest(client, "team/app", sha256(payload), payload, images.OCI_INDEX).status_code == 201
    (descriptor,) = client.get(f"/v2/team/app/referrers/{subject.digest}").json()["manifests"]
    assert descriptor["mediaType"] == images.OCI_INDEX
    assert "artifactType" not in descriptor


def test_referrer_may_be_pushed_before_its_subject(client):
    future = make_image("future")
    referrer = make_artifact(SBOM, b"early", subject=future.descriptor())
    push_image(client, "team/app", referrer)
    listed = client.get(f"/v2/team/app/referrers/{future.digest}").json()["manifests"]
    assert [d["digest"] for d in listed] == [referrer.digest]


def test_no_referrers_is_an_empty_index_not_404(client, subject):
    response = client.get(f"/v2/team/app/referrers/{sha256(b'nothing refers')}")
    assert response.status_code == 200
    assert response.json()["manifests"] == []
    assert client.get(f"/v2/unknown/repo/referrers/{subject.digest}").json()["manifests"] == []


def test_referrers_are_per_repository(client, subject):
    push_image(client, "other/repo", make_artifact(SBOM, b"elsewhere", subject=subject.descriptor()))
    assert client.get(f"/v2/team/app/referrers/{subject.digest}").json()["manifests"] == []


def test_invalid_digest_is_400(client):
    response = client.get("/v2/team/app/referrers/sha256:nothex")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_deleted_referrer_disappears(client, subject):
    referrer = make_artifact(SBOM, b"gone", subject=subject.descriptor())
    push_image(client, "team/app", referrer)
    client.delete(f"/v2/team/app/manifests/{referrer.digest}")
    assert client.get(f"/v2/team/app/referrers/{subject.digest}").json()["manifests"] == []
