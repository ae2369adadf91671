import json

import pytest

from dockyard.oci import mediatypes as mt
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.manifests import MAX_MANIFEST_SIZE, parse_manifest
from tests.support.images import canonical, make_artifact, make_image, make_index, sha256


def test_image_manifest_requires_config_and_layers():
    image = make_image("unit", layers=2)
    parsed = parse_manifest(image.manifest, mt.OCI_MANIFEST)
    assert parsed.media_type == mt.OCI_MANIFEST
    assert parsed.artifact_type == mt.OCI_CONFIG
    assert [d.digest for d in parsed.required_blobs] == [b.digest for b in image.blobs]
    assert not parsed.is_index


def test_artifact_type_wins_over_config_media_type():
    artifact = make_artifact(
        "application/vnd.example",
        b"x",
        subject={"mediaType": mt.OCI_MANIFEST, "digest": sha256(b"s"), "size": 1},
    )
    parsed = parse_manifest(artifact.manifest, "")
    assert parsed.artifact_type == "application/vnd.example"
    assert parsed.subject is not None
    assert parsed.subject.digest == sha256(b"s")


def test_index_lists_children_with_platforms():
    amd, arm = make_image("a"), make_image("b", architecture="arm64")
    parsed = parse_manifest(make_index([amd, arm]), mt.OCI_INDEX)
    assert parsed.is_index
    assert [c.platform["architecture"] for c in parsed.children] == ["amd64", "arm64"]
    assert parsed.required_blobs == ()
    assert parsed.artifact_type is None


def test_media_type_is_detected_without_content_type():
    image = make_image("detect")
    document = json.loads(image.manifest)
    del document["mediaType"]
    assert parse_manifest(canonical(document), "application/json").media_type == mt.OCI_MANIFEST
    index = json.loads(make_index([image]))
    del index["mediaType"]
    assert parse_manifest(canonical(index), "").media_type == mt.OCI_INDEX


def test_content_type_parameters_are_ignored():
    image = make_image("params")
    assert parse_manifest(image.manifest, f"{mt.OCI_MANIFEST}; charset=utf-8").media_type == mt.OCI_MANIFEST


@pytest.mark.parametrize(
    "document",
    [
        {"schemaVersion": 2},
        {"schemaVersion": True, "mediaType": mt.OCI_MANIFEST},
        {"schemaVersion": 2, "mediaType": 7},
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": "bad type", "digest": sha256(b""), "size": 0},
        },
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": "a/b", "digest": sha256(b""), "size": True},
        },
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": "a/b", "digest": sha256(b""), "size": 0, "urls": "x"},
        },
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [{"mediaType": "a/b"}]},
    ],
)
def test_invalid_documents(document):
    with pytest.raises(RegistryError) as failure:
        parse_manifest(canonical(document), "")
    assert failure.value.code is ErrorCode.MANIFEST_INVALID


def test_size_limit():
    with pytest.raises(RegistryError) as failure:
        parse_manifest(b" " * (MAX_MANIFEST_SIZE + 1), mt.OCI_MANIFEST)
    assert failure.value.status == 413
