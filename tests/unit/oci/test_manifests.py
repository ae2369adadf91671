import json

import pytest

from dockyard.oci import mediatypes as mt
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.manifests import MAX_MANIFEST_SIZE, Descriptor, parse_manifest
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


# -- the cases mutation testing found unguarded -------------------------------------------------

EMPTY = sha256(b"")
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
FOREIGN = mt.DOCKER_FOREIGN_LAYERS[0]
NONDISTRIBUTABLE = mt.OCI_LAYER_NONDISTRIBUTABLE[0]


def _descriptor(media_type: str = LAYER, data: bytes = b"", **extra):
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def _manifest(**fields):
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": _descriptor(mt.OCI_CONFIG, b"{}"),
        "layers": [_descriptor(LAYER, b"layer")],
        **fields,
    }


def _index(**fields):
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [_descriptor(mt.OCI_MANIFEST)],
        **fields,
    }


def _parse(document, content_type: str = ""):
    return parse_manifest(canonical(document), content_type)


def _refused(document, content_type: str = "") -> str:
    with pytest.raises(RegistryError) as failure:
        _parse(document, content_type)
    assert failure.value.code is ErrorCode.MANIFEST_INVALID
    assert failure.value.status == 400
    return failure.value.message


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (-1, "config: size must be a non-negative int64"),
        (1.5, "config: size must be a non-negative int64"),
        (2.0, "config: size must be a non-negative int64"),
        ("2", "config: size must be a non-negative int64"),
        (None, "config: size must be a non-negative int64"),
        (False, "config: size must be a non-negative int64"),
        (2**63, "config: size must be a non-negative int64"),
    ],
)
def test_descriptor_sizes_must_be_int64(size, message):
    assert _refused(_manifest(config={**_descriptor(mt.OCI_CONFIG), "size": size})) == message


@pytest.mark.parametrize("size", [0, 1, 2**63 - 1])
def test_descriptor_sizes_in_range_are_kept(size):
    parsed = _parse(_manifest(config={**_descriptor(mt.OCI_CONFIG), "size": size}))
    assert parsed.config is not None
    assert parsed.config.size == size


@pytest.mark.parametrize("version", [3, "2", 2.0, 0, None, True, [2]])
def test_schema_version_must_be_the_integer_2(version):
    document = _manifest(schemaVersion=version) if version is not None else _manifest()
    if version is None:
        del document["schemaVersion"]
    assert _refused(document) == "schemaVersion must be 2"


SCHEMA1 = "Docker image manifest schema 1 is not supported; push schema 2 or OCI"


def test_schema_version_1_is_named():
    assert _refused(_manifest(schemaVersion=1)) == SCHEMA1
    for media_type in mt.DOCKER_SCHEMA1:
        assert _refused(_manifest(), f"{media_type.upper()}; x=y; z=w") == SCHEMA1


def test_content_type_is_optional_and_its_parameters_are_dropped():
    document = {k: v for k, v in _manifest().items() if k != "mediaType"}
    assert parse_manifest(canonical(document)).media_type == mt.OCI_MANIFEST
    with_parameters = f"{mt.DOCKER_MANIFEST}; charset=utf-8; q=1"
    assert _parse(document, with_parameters).media_type == mt.DOCKER_MANIFEST


def test_long_media_types_are_cut_to_100_characters_in_messages():
    long_type = "a/" + "b" * 150
    assert _refused(_manifest(layers=[_descriptor(long_type)])) == (
        f"layers[0]: invalid mediaType {long_type[:100]!r}"
    )
    unknown = "application/vnd." + "x" * 100
    document = {k: v for k, v in _manifest().items() if k != "mediaType"}
    assert _refused(document, unknown) == f"unsupported manifest media type {unknown[:100]!r}"


@pytest.mark.parametrize(
    ("where", "document"),
    [
        ("config", _manifest(config={"digest": EMPTY, "size": 0})),
        ("layers[1]", _manifest(layers=[_descriptor(), {"digest": EMPTY, "size": 0}])),
        ("manifests[0]", _index(manifests=[{"digest": EMPTY, "size": 0}])),
        ("subject", _manifest(subject={"digest": EMPTY, "size": 0})),
    ],
)
def test_a_descriptor_without_media_type_is_invalid(where, document):
    assert _refused(document) == f"{where}: mediaType is required"


@pytest.mark.parametrize(
    ("descriptor", "message"),
    [
        ("x", "layers[0] must be an object"),
        (None, "layers[0] must be an object"),
        ({**_descriptor(), "mediaType": 5}, "layers[0]: mediaType must be a string"),
        ({**_descriptor(), "mediaType": "nonsense"}, "layers[0]: invalid mediaType 'nonsense'"),
        ({**_descriptor(), "mediaType": "a/b c"}, "layers[0]: invalid mediaType 'a/b c'"),
        ({**_descriptor(), "mediaType": "a/" + "b" * 128}, "layers[0]: invalid mediaType"),
        ({**_descriptor(), "mediaType": "-a/b"}, "layers[0]: invalid mediaType '-a/b'"),
        ({**_descriptor(), "mediaType": "a/b\n"}, "layers[0]: invalid mediaType 'a/b\\n'"),
        ({"mediaType": LAYER, "size": 0}, "layers[0]: digest is required"),
        ({**_descriptor(), "digest": "sha256:abc"}, "layers[0]: invalid sha256 digest 'sha256:abc'"),
        ({**_descriptor(), "digest": 7}, "layers[0]: digest must be a string"),
        ({**_descriptor(), "urls": "https://x"}, "layers[0]: urls must be a list of strings"),
        ({**_descriptor(), "urls": [1]}, "layers[0]: urls must be a list of strings"),
        ({**_descriptor(), "platform": "linux"}, "layers[0]: platform must be an object"),
        ({**_descriptor(), "artifactType": 1}, "layers[0]: artifactType must be a string"),
        ({**_descriptor(), "annotations": []}, "layers[0]: annotations must map strings to strings"),
        ({**_descriptor(), "annotations": {"a": 1}}, "layers[0]: annotations must map strings to strings"),
    ],
)
def test_invalid_descriptors_name_where_and_why(descriptor, message):
    assert _refused(_manifest(layers=[descriptor])).startswith(message)


def test_a_descriptor_keeps_everything_the_registry_acts_on():
    layer = _descriptor(
        FOREIGN,
        b"base",
        urls=["https://example.invalid/base"],
        platform={"os": "windows"},
        artifactType="application/vnd.example",
        annotations={"k": "v"},
    )
    parsed = _parse(_manifest(layers=[layer]))
    assert parsed.layers == (
        Descriptor(
            media_type=FOREIGN,
            digest=sha256(b"base"),
            size=4,
            urls=("https://example.invalid/base",),
            platform={"os": "windows"},
            artifact_type="application/vnd.example",
            annotations={"k": "v"},
        ),
    )
    plain = _parse(_manifest()).layers[0]
    assert (plain.urls, plain.platform, plain.artifact_type, plain.annotations) == ((), None, None, None)
    assert _parse(_manifest(layers=[_descriptor(urls=None)])).layers[0].urls == ()


@pytest.mark.parametrize(
    ("media_type", "urls", "external"),
    [
        (FOREIGN, ["https://example.invalid/l"], True),
        (mt.DOCKER_FOREIGN_LAYERS[1], ["https://example.invalid/l"], True),
        (NONDISTRIBUTABLE, ["https://example.invalid/l"], True),
        (mt.OCI_LAYER_NONDISTRIBUTABLE[2], ["https://example.invalid/l"], True),
        (FOREIGN, [], False),
        (LAYER, ["https://example.invalid/l"], False),
        (LAYER, [], False),
    ],
)
def test_only_foreign_layers_with_urls_skip_the_blob_check(media_type, urls, external):
    config = _descriptor(mt.OCI_CONFIG, b"{}")
    layer = _descriptor(media_type, b"layer", urls=urls)
    parsed = _parse(_manifest(config=config, layers=[layer]))
    assert parsed.layers[0].is_external is external
    wanted = [config["digest"]] if external else [config["digest"], layer["digest"]]
    assert [d.digest for d in parsed.required_blobs] == wanted


def test_an_image_manifest_keeps_config_layers_subject_and_annotations():
    config = _descriptor(mt.DOCKER_CONFIG, b"{}")
    subject = _descriptor(mt.OCI_MANIFEST, b"subject")
    document = _manifest(
        mediaType=mt.DOCKER_MANIFEST,
        config=config,
        layers=[_descriptor(LAYER, b"a"), _descriptor(LAYER, b"b")],
        subject=subject,
        annotations={"org.opencontainers.image.title": "t"},
    )
    parsed = _parse(document, mt.DOCKER_MANIFEST)
    assert parsed.media_type == mt.DOCKER_MANIFEST
    assert parsed.config == Descriptor(mt.DOCKER_CONFIG, sha256(b"{}"), 2)
    assert parsed.artifact_type == mt.DOCKER_CONFIG
    assert [d.digest for d in parsed.layers] == [sha256(b"a"), sha256(b"b")]
    assert parsed.children == ()
    assert parsed.subject == Descriptor(mt.OCI_MANIFEST, sha256(b"subject"), 7)
    assert parsed.annotations == {"org.opencontainers.image.title": "t"}
    assert not parsed.is_index
    bare = _parse(_manifest(layers=[]))
    assert (bare.layers, bare.subject, bare.annotations) == ((), None, None)
    assert _parse({k: v for k, v in _manifest().items() if k != "layers"}).layers == ()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({k: v for k, v in _manifest().items() if k != "config"}, "config must be an object"),
        (_manifest(layers={"0": _descriptor()}), "layers must be a list"),
        (_manifest(artifactType=["a/b"]), "manifest: artifactType must be a string"),
        (_manifest(annotations={"a": ["b"]}), "manifest: annotations must map strings to strings"),
        (_manifest(subject="sha256:x"), "subject must be an object"),
        (_index(manifests={}), "manifests must be a list"),
        ({k: v for k, v in _index().items() if k != "manifests"}, "manifests must be a list"),
        (_index(artifactType=5), "index: artifactType must be a string"),
        (_index(annotations="x"), "index: annotations must map strings to strings"),
        (_index(manifests=[_descriptor(), "x"]), "manifests[1] must be an object"),
    ],
)
def test_invalid_manifest_fields_are_named(document, message):
    assert _refused(document) == message


def test_an_index_keeps_children_artifact_type_subject_and_annotations():
    child = _descriptor(mt.OCI_MANIFEST, b"child", platform={"os": "linux", "architecture": "arm64"})
    subject = _descriptor(mt.OCI_MANIFEST, b"subject")
    parsed = _parse(
        _index(
            manifests=[child],
            artifactType="application/vnd.example.bundle",
            subject=subject,
            annotations={"a": "b"},
        )
    )
    assert parsed.is_index
    assert parsed.artifact_type == "application/vnd.example.bundle"
    assert parsed.annotations == {"a": "b"}
    assert parsed.subject == Descriptor(mt.OCI_MANIFEST, sha256(b"subject"), 7)
    assert parsed.children == (
        Descriptor(mt.OCI_MANIFEST, sha256(b"child"), 5, platform={"os": "linux", "architecture": "arm64"}),
    )
    assert (parsed.config, parsed.layers, parsed.required_blobs) == (None, (), ())
    docker = _parse(_index(mediaType=mt.DOCKER_MANIFEST_LIST), mt.DOCKER_MANIFEST_LIST)
    assert (docker.media_type, docker.is_index, docker.annotations, docker.subject) == (
        mt.DOCKER_MANIFEST_LIST,
        True,
        None,
        None,
    )
    assert _parse(_index(manifests=[])).children == ()


@pytest.mark.parametrize("content_type", ["", "application/json", "application/octet-stream", "text/plain"])
def test_generic_content_types_defer_to_the_declared_media_type(content_type):
    assert _parse(_index(), content_type).media_type == mt.OCI_INDEX
    assert _parse(_manifest(), f" {content_type.upper()} ; charset=utf-8").media_type == mt.OCI_MANIFEST


def test_a_specific_content_type_must_match_the_declared_media_type():
    message = _refused(_manifest(), mt.OCI_INDEX)
    assert message == (
        f"Content-Type {mt.OCI_INDEX!r} does not match the manifest's mediaType {mt.OCI_MANIFEST!r}"
    )
    assert _parse(_manifest(), mt.OCI_MANIFEST.upper()).media_type == mt.OCI_MANIFEST


def test_without_a_declared_media_type_the_content_type_or_the_shape_decides():
    document = {k: v for k, v in _manifest().items() if k != "mediaType"}
    assert _parse(document, mt.DOCKER_MANIFEST).media_type == mt.DOCKER_MANIFEST
    assert _parse(document, "text/plain").media_type == mt.OCI_MANIFEST
    assert _parse({**document, "mediaType": ""}, "").media_type == mt.OCI_MANIFEST
    index = {k: v for k, v in _index().items() if k != "mediaType"}
    assert _parse(index, "application/json").media_type == mt.OCI_INDEX
    assert _parse(index, mt.DOCKER_MANIFEST_LIST).media_type == mt.DOCKER_MANIFEST_LIST
    assert _refused({"schemaVersion": 2}) == (
        "cannot tell the manifest's media type: set mediaType or Content-Type"
    )
    assert _refused({**document, "mediaType": 5}) == "mediaType must be a string"
    assert _refused(document, "application/vnd.example+json") == (
        "unsupported manifest media type 'application/vnd.example+json'"
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xfe{", "manifest is not valid JSON"),
        (b"{", "manifest is not valid JSON"),
        (b"[]", "manifest must be a JSON object"),
        (b'"manifest"', "manifest must be a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "manifest JSON is nested too deeply"),
        (b'{"schemaVersion": ' + b"9" * 5000 + b"}", "manifest is not valid JSON"),
    ],
)
def test_payloads_that_are_not_json_objects(payload, message):
    with pytest.raises(RegistryError) as failure:
        parse_manifest(payload, mt.OCI_MANIFEST)
    assert failure.value.code is ErrorCode.MANIFEST_INVALID
    assert failure.value.message.startswith(message)


def test_the_size_limit_is_exactly_4_mib():
    document = canonical(_manifest())
    padded = document + b" " * (MAX_MANIFEST_SIZE - len(document))
    assert MAX_MANIFEST_SIZE == 4 * 1024 * 1024
    assert parse_manifest(padded, mt.OCI_MANIFEST).media_type == mt.OCI_MANIFEST
    with pytest.raises(RegistryError) as failure:
        parse_manifest(padded + b" ", mt.OCI_MANIFEST)
    assert (failure.value.code, failure.value.status) == (ErrorCode.MANIFEST_INVALID, 413)
    assert failure.value.message == f"manifest is larger than the {MAX_MANIFEST_SIZE} byte limit"


def test_media_type_grammar_limits():
    longest = "a" * 127 + "/" + "b+json" + "c" * 121
    assert _parse(_manifest(layers=[_descriptor(longest)])).layers[0].media_type == longest
    assert _parse(_manifest(layers=[_descriptor("A1!#$&^_.+-/z")])).layers[0].media_type == "A1!#$&^_.+-/z"
    assert "invalid mediaType" in _refused(_manifest(layers=[_descriptor("a" * 128 + "/b")]))
