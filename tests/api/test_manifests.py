"""Manifest push/pull/delete: every media type, validation errors, content negotiation."""

import hashlib
import json
import threading

import pytest

from dockyard.registry.routes.manifests import INLINE_MANIFEST_BYTES
from tests.support import images
from tests.support.images import canonical, make_artifact, make_image, make_index, sha256
from tests.support.registry import error_codes, push_blob, push_image, push_manifest


def test_push_by_tag_and_pull_byte_exact(client):
    image = make_image("exact")
    for blob in image.blobs:
        push_blob(client, "team/app", blob.data)
    response = push_manifest(client, "team/app", "v1", image.manifest, image.media_type)
    assert response.status_code == 201
    assert response.headers["location"] == f"/v2/team/app/manifests/{image.digest}"
    assert response.headers["docker-content-digest"] == image.digest
    for reference in ("v1", image.digest):
        pulled = client.get(f"/v2/team/app/manifests/{reference}", headers={"Accept": images.OCI_MANIFEST})
        assert pulled.status_code == 200
        assert pulled.content == image.manifest
        assert pulled.headers["content-type"] == images.OCI_MANIFEST
        assert pulled.headers["docker-content-digest"] == image.digest


def test_head_manifest(client):
    image = make_image("head")
    push_image(client, "team/app", image, "v1")
    response = client.head("/v2/team/app/manifests/v1")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(image.manifest))
    assert response.headers["docker-content-digest"] == image.digest


def test_manifest_bytes_are_stored_exactly_not_reserialised(client):
    image = make_image("pretty")
    pretty = json.dumps(json.loads(image.manifest), indent=7).encode() + b"\n\n"
    for blob in image.blobs:
        push_blob(client, "team/app", blob.data)
    assert push_manifest(client, "team/app", "pretty", pretty, images.OCI_MANIFEST).status_code == 201
    assert client.get("/v2/team/app/manifests/pretty").content == pretty


def test_push_by_digest(client):
    image = make_image("by-digest")
    digest = push_image(client, "team/app", image)
    assert client.get(f"/v2/team/app/manifests/{digest}").content == image.manifest
    assert client.get("/v2/team/app/tags/list").json()["tags"] == []


def test_push_by_wrong_digest_is_digest_invalid(client):
    image = make_image("wrong")
    for blob in image.blobs:
        push_blob(client, "team/app", blob.data)
    response = push_manifest(client, "team/app", sha256(b"other"), image.manifest, images.OCI_MANIFEST)
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_sha512_manifest_digest(client):
    image = make_image("sha512")
    for blob in image.blobs:
        push_blob(client, "team/app", blob.data)
    digest = "sha512:" + hashlib.sha512(image.manifest).hexdigest()
    response = push_manifest(client, "team/app", digest, image.manifest, images.OCI_MANIFEST)
    assert response.status_code == 201
    assert response.headers["docker-content-digest"] == digest
    assert client.get(f"/v2/team/app/manifests/{digest}").content == image.manifest


def test_docker_schema2_manifest_and_manifest_list(client):
    amd = make_image("d-amd", docker=True)
    arm = make_image("d-arm", docker=True, architecture="arm64")
    push_image(client, "team/docker", amd)
    push_image(client, "team/docker", arm)
    listing = make_index([amd, arm], docker=True)
    response = push_manifest(client, "team/docker", "multi", listing, images.DOCKER_LIST)
    assert response.status_code == 201
    pulled = client.get("/v2/team/docker/manifests/multi", headers={"Accept": images.DOCKER_LIST})
    assert pulled.content == listing
    assert pulled.headers["content-type"] == images.DOCKER_LIST


def test_oci_index_needs_its_children(client):
    amd = make_image("i-amd")
    arm = make_image("i-arm", architecture="arm64")
    push_image(client, "team/index", amd)
    index = make_index([amd, arm])
    response = push_manifest(client, "team/index", "multi", index, images.OCI_INDEX)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
    assert response.json()["errors"][0]["detail"]["digest"] == arm.digest
    push_image(client, "team/index", arm)
    assert push_manifest(client, "team/index", "multi", index, images.OCI_INDEX).status_code == 201


def test_missing_blob_is_manifest_blob_unknown_and_stores_nothing(client):
    image = make_image("missing")
    push_blob(client, "team/app", image.config.data)
    response = push_manifest(client, "new/repo", "v1", image.manifest, image.media_type)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
    assert client.get("/v2/new/repo/tags/list").status_code == 404
    response = push_manifest(client, "team/app", "v1", image.manifest, image.media_type)
    assert response.json()["errors"][0]["detail"]["digest"] == image.layers[0].digest
    assert client.get("/v2/team/app/manifests/v1").status_code == 404


def test_blob_size_must_match_the_descriptor(client):
    image = make_image("size")
    for blob in image.blobs:
        push_blob(client, "team/app", blob.data)
    document = json.loads(image.manifest)
    document["layers"][0]["size"] += 1
    response = push_manifest(client, "team/app", "v1", canonical(document), images.OCI_MANIFEST)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]


def _valid_manifest():
    config = images.Blob(images.OCI_CONFIG, b"{}")
    return {"schemaVersion": 2, "mediaType": images.OCI_MANIFEST, "config": config.descriptor(), "layers": []}


@pytest.mark.parametrize(
    ("payload", "content_type"),
    [
        (b"not json", images.OCI_MANIFEST),
        (b"[1, 2]", images.OCI_MANIFEST),
        (canonical({**_valid_manifest(), "schemaVersion": 1}), images.OCI_MANIFEST),
        (
            canonical({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}),
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
        (canonical({k: v for k, v in _valid_manifest().items() if k != "config"}), images.OCI_MANIFEST),
        (
            canonical(
                {**_valid_manifest(), "config": {"mediaType": "x/y", "digest": "sha256:abc", "size": 1}}
            ),
            images.OCI_MANIFEST,
        ),
        (
            canonical(
                {**_valid_manifest(), "config": {"mediaType": "x/y", "digest": sha256(b"{}"), "size": -1}}
            ),
            images.OCI_MANIFEST,
        ),
        (canonical({**_valid_manifest(), "layers": "nope"}), images.OCI_MANIFEST),
        (canonical(_valid_manifest()), images.DOCKER_MANIFEST),
        (
            canonical({**_valid_manifest(), "mediaType": "application/vnd.example.unknown+json"}),
            "application/vnd.example.unknown+json",
        ),
        (
            canonical({"schemaVersion": 2, "manifests": "nope", "mediaType": images.OCI_INDEX}),
            images.OCI_INDEX,
        ),
        (canonical({**_valid_manifest(), "annotations": {"a": 1}}), images.OCI_MANIFEST),
    ],
    ids=[
        "not-json",
        "not-object",
        "schema-version-1",
        "docker-schema1",
        "no-config",
        "bad-digest",
        "negative-size",
        "layers-not-list",
        "content-type-mismatch",
        "unknown-media-type",
        "index-not-list",
        "bad-annotations",
    ],
)
def test_invalid_manifests_are_manifest_invalid(client, payload, content_type):
    push_blob(client, "team/app", b"{}")
    response = push_manifest(client, "team/app", "bad", payload, content_type)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]
    assert client.get("/v2/team/app/manifests/bad").status_code == 404


def test_deeply_nested_json_is_manifest_invalid(client):
    payload = b'{"schemaVersion": 2, "config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = push_manifest(client, "team/app", "deep", payload, images.OCI_MANIFEST)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]
    assert "nested too deeply" in response.json()["errors"][0]["message"]


def test_an_integer_too_long_for_python_is_manifest_invalid(client):
    payload = b'{"schemaVersion": ' + b"9" * 5000 + b"}"
    response = push_manifest(client, "team/app", "huge", payload, images.OCI_MANIFEST)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]


def test_a_deeply_nested_config_blob_is_stored_without_a_platform(client):
    config = images.Blob(images.OCI_CONFIG, b"[" * 100_000 + b"]" * 100_000)
    push_blob(client, "team/app", config.data)
    document = {**_valid_manifest(), "config": config.descriptor()}
    response = push_manifest(client, "team/app", "deep", canonical(document), images.OCI_MANIFEST)
    assert response.status_code == 201
    listed = client.get("/acr/v1/team/app/_manifests").json()["manifests"]
    assert [(m["digest"], m.get("architecture")) for m in listed] == [(sha256(canonical(document)), None)]


def test_schema1_is_refused_with_a_clear_message(client):
    payload = canonical({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []})
    response = push_manifest(
        client, "team/app", "old", payload, "application/vnd.docker.distribution.manifest.v1+json"
    )
    assert "schema 1" in response.json()["errors"][0]["message"]


def test_manifest_over_4_mib_is_413(client):
    document = _valid_manifest()
    document["annotations"] = {"padding": "x" * (4 * 1024 * 1024)}
    response = push_manifest(client, "team/app", "huge", canonical(document), images.OCI_MANIFEST)
    assert response.status_code == 413


def test_invalid_tag_and_reference(client):
    image = make_image("tags")
    for blob in image.blobs:
        push_blob(client, "team/app", blob.data)
    for reference in ["-leading-dash", "x" * 129, "has+plus"]:
        response = push_manifest(client, "team/app", reference, image.manifest, images.OCI_MANIFEST)
        assert response.status_code == 400, reference
        assert error_codes(response) == ["MANIFEST_INVALID"], reference
    response = push_manifest(client, "team/app", "sha256:short", image.manifest, images.OCI_MANIFEST)
    assert error_codes(response) == ["DIGEST_INVALID"]


@pytest.mark.parametrize(
    "reference", [".INVALID_MANIFEST_NAME", "-leading-dash", "x" * 129, "has+plus", "sha256:short", "md5:abc"]
)
def test_pulling_a_malformed_reference_is_manifest_unknown(client, reference):
    push_image(client, "team/app", make_image("malformed"), "v1")
    response = client.get(f"/v2/team/app/manifests/{reference}")
    assert response.status_code == 404
    assert error_codes(response) == ["MANIFEST_UNKNOWN"]
    head = client.head(f"/v2/team/app/manifests/{reference}")
    assert (head.status_code, head.content) == (404, b"")
    assert error_codes(client.get(f"/v2/nope/manifests/{reference}")) == ["NAME_UNKNOWN"]


def test_retagging_moves_the_tag(client):
    one, two = make_image("one"), make_image("two")
    push_image(client, "team/app", one, "latest")
    push_image(client, "team/app", two, "latest")
    assert client.get("/v2/team/app/manifests/latest").headers["docker-content-digest"] == two.digest
    assert client.get(f"/v2/team/app/manifests/{one.digest}").status_code == 200


def test_same_manifest_many_tags_and_idempotent_push(client):
    image = make_image("many")
    push_image(client, "team/app", image, "a")
    push_image(client, "team/app", image, "b")
    push_image(client, "team/app", image, "b")
    assert client.get("/v2/team/app/tags/list").json()["tags"] == ["a", "b"]


def test_artifact_with_empty_config(client):
    artifact = make_artifact("application/vnd.example.sbom.v1", b'{"sbom": true}')
    push_image(client, "team/artifacts", artifact, "sbom")
    pulled = client.get("/v2/team/artifacts/manifests/sbom")
    assert json.loads(pulled.content)["artifactType"] == "application/vnd.example.sbom.v1"


def test_foreign_layers_with_urls_need_not_be_pushed(client):
    image = make_image("foreign", docker=True)
    push_blob(client, "team/app", image.config.data)
    document = json.loads(image.manifest)
    document["layers"] = [
        {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": sha256(b"windows base"),
            "size": 12,
            "urls": ["https://example.invalid/layer"],
        }
    ]
    response = push_manifest(client, "team/app", "win", canonical(document), images.DOCKER_MANIFEST)
    assert response.status_code == 201


def test_foreign_layers_as_large_as_int64_allows(client):
    image = make_image("foreign-huge", docker=True)
    push_blob(client, "team/app", image.config.data)
    document = json.loads(image.manifest)
    document["layers"] = [
        {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": sha256(name),
            "size": 2**63 - 1,
            "urls": ["https://example.invalid/layer"],
        }
        for name in (b"one", b"two")
    ]
    response = push_manifest(client, "team/app", "huge", canonical(document), images.DOCKER_MANIFEST)
    assert response.status_code == 201
    document["layers"][0]["size"] = 2**63
    response = push_manifest(client, "team/app", "huger", canonical(document), images.DOCKER_MANIFEST)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]


def test_unknown_repository_and_unknown_manifest(client):
    assert error_codes(client.get("/v2/nope/manifests/latest")) == ["NAME_UNKNOWN"]
    push_image(client, "team/app", make_image("x"), "v1")
    assert error_codes(client.get("/v2/team/app/manifests/v2")) == ["MANIFEST_UNKNOWN"]
    assert error_codes(client.get(f"/v2/team/app/manifests/{sha256(b'q')}")) == ["MANIFEST_UNKNOWN"]


class TestContentNegotiation:
    @pytest.fixture
    def index(self, client):
        amd = make_image("n-amd")
        arm = make_image("n-arm", architecture="arm64")
        push_image(client, "team/multi", arm)
        push_image(client, "team/multi", amd)
        index = make_index([arm, amd])
        assert push_manifest(client, "team/multi", "latest", index, images.OCI_INDEX).status_code == 201
        return index, amd

    def test_index_is_served_to_clients_that_accept_it(self, client, index):
        payload, _ = index
        accept = f"{images.OCI_MANIFEST}, {images.OCI_INDEX}"
        response = client.get("/v2/team/multi/manifests/latest", headers={"Accept": accept})
        assert response.content == payload
        assert client.get("/v2/team/multi/manifests/latest").content == payload

    def test_clients_that_only_take_image_manifests_get_linux_amd64(self, client, index):
        _, amd = index
        response = client.get("/v2/team/multi/manifests/latest", headers={"Accept": images.OCI_MANIFEST})
        assert response.status_code == 200
        assert response.content == amd.manifest
        assert response.headers["docker-content-digest"] == amd.digest

    def test_by_digest_the_stored_manifest_is_always_served(self, client, index):
        payload, _ = index
        response = client.get(
            f"/v2/team/multi/manifests/{sha256(payload)}", headers={"Accept": images.OCI_MANIFEST}
        )
        assert response.content == payload

    def test_unacceptable_type_is_manifest_unknown(self, client):
        push_image(client, "team/app", make_image("oci"), "v1")
        response = client.get("/v2/team/app/manifests/v1", headers={"Accept": images.DOCKER_MANIFEST})
        assert response.status_code == 404
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]

    def test_wildcard_and_parameters(self, client):
        push_image(client, "team/app", make_image("oci"), "v1")
        for accept in ["*/*", f"{images.OCI_MANIFEST};q=0.9", f"{images.DOCKER_MANIFEST}, */*;q=0.1"]:
            assert client.get("/v2/team/app/manifests/v1", headers={"Accept": accept}).status_code == 200


class TestDelete:
    def test_delete_by_digest_removes_manifest_and_its_tags(self, client):
        image = make_image("del")
        push_image(client, "team/app", image, "v1")
        push_image(client, "team/app", image, "v2")
        assert client.delete(f"/v2/team/app/manifests/{image.digest}").status_code == 202
        assert client.get(f"/v2/team/app/manifests/{image.digest}").status_code == 404
        assert client.get("/v2/team/app/manifests/v1").status_code == 404
        assert client.get("/v2/team/app/tags/list").json()["tags"] == []

    def test_delete_by_tag_only_untags(self, client):
        image = make_image("untag")
        push_image(client, "team/app", image, "v1")
        assert client.delete("/v2/team/app/manifests/v1").status_code == 202
        assert client.get("/v2/team/app/manifests/v1").status_code == 404
        assert client.get(f"/v2/team/app/manifests/{image.digest}").status_code == 200

    def test_delete_unknown(self, client):
        assert error_codes(client.delete("/v2/nope/manifests/v1")) == ["NAME_UNKNOWN"]
        push_image(client, "team/app", make_image("k"), "v1")
        assert error_codes(client.delete("/v2/team/app/manifests/v9")) == ["MANIFEST_UNKNOWN"]
        assert error_codes(client.delete(f"/v2/team/app/manifests/{sha256(b'z')}")) == ["MANIFEST_UNKNOWN"]

    def test_delete_of_an_index_child_is_refused(self, client):
        amd = make_image("c-amd")
        push_image(client, "team/multi", amd, "amd")
        push_manifest(client, "team/multi", "multi", make_index([amd]), images.OCI_INDEX)
        response = client.delete(f"/v2/team/multi/manifests/{amd.digest}")
        assert response.status_code == 409
        assert error_codes(response) == ["DENIED"]
        index_digest = client.head("/v2/team/multi/manifests/multi").headers["docker-content-digest"]
        assert client.delete(f"/v2/team/multi/manifests/{index_digest}").status_code == 202
        assert client.delete(f"/v2/team/multi/manifests/{amd.digest}").status_code == 202


def test_subject_is_acknowledged_with_oci_subject(client):
    image = make_image("subject")
    push_image(client, "team/app", image, "v1")
    signature = make_artifact("application/vnd.example.signature", b"sig", subject=image.descriptor())
    for blob in signature.blobs:
        push_blob(client, "team/app", blob.data)
    response = push_manifest(client, "team/app", signature.digest, signature.manifest, images.OCI_MANIFEST)
    assert response.status_code == 201
    assert response.headers["oci-subject"] == image.digest


def test_small_pushes_are_written_on_the_event_loop_and_large_manifests_in_a_thread(
    client, dockyard, monkeypatch
):
    """On a SQLite file the closing PUT of a small blob and a small manifest's PUT write on the loop
    (no thread hop, no queueing on the write lock); a large manifest is parsed in a thread, so it
    cannot hold up every other request. PostgreSQL always writes in threads."""
    threads: dict[str, list[int]] = {"close": [], "put": []}
    manifests, uploads = dockyard.registry.manifests, dockyard.registry.uploads
    real_put, real_close = manifests.put, uploads.close_stored

    def put(*args, **kwargs):
        threads["put"].append(threading.get_ident())
        return real_put(*args, **kwargs)

    def close_stored(*args, **kwargs):
        threads["close"].append(threading.get_ident())
        return real_close(*args, **kwargs)

    monkeypatch.setattr(manifests, "put", put)
    monkeypatch.setattr(uploads, "close_stored", close_stored)
    small = make_image("inline")
    push_image(client, "team/app", small, "small")
    large = make_image("large", annotations={f"note.{i}": "x" * 100 for i in range(200)})
    assert len(large.manifest) > INLINE_MANIFEST_BYTES
    push_image(client, "team/app", large, "large")
    loop = dockyard.db._inline_thread
    assert loop is not None
    on_loop = dockyard.db.writes_inline
    assert (threads["close"][0] == loop) is on_loop
    assert (threads["put"][0] == loop) is on_loop
    assert threads["put"][-1] != loop
    for tag, image in (("small", small), ("large", large)):
        assert client.get(
            f"/v2/team/app/manifests/{tag}", headers={"Accept": images.OCI_MANIFEST}
        ).content == (image.manifest)


def test_a_manifests_references_are_recorded_in_one_statement_however_many(client, dockyard, monkeypatch):
    """Every layer and child is recorded (with its media type, size and platform); on PostgreSQL
    the layers go to the server in one statement, the children in another, not one per row."""
    import sqlalchemy as sa

    from dockyard import prepared
    from dockyard.registry.models import manifest_blobs, manifest_children

    image = make_image("many layers", layers=6)
    other = make_image("other platform", architecture="arm64")
    for each in (image, other):
        push_image(client, "team/app", each, tag=each.config.digest[7:19])
    sent = []
    queue = prepared._queue

    def counted(cursor, sql, arguments):
        sent.append(sql.split()[2])
        queue(cursor, sql, arguments)

    monkeypatch.setattr(prepared, "_queue", counted)
    push_image(client, "team/app", image, tag="v1")  # the manifest exists: nothing recorded again
    index = make_index([image, other])
    assert push_manifest(client, "team/app", "multi", index, images.OCI_INDEX).status_code == 201
    manifest = make_image("one more", layers=6)
    for blob in manifest.blobs:
        push_blob(client, "team/app", blob.data)
    assert push_manifest(client, "team/app", "v2", manifest.manifest, manifest.media_type).status_code == 201
    recorded = [name for name in sent if name.startswith("manifest_")]
    assert recorded == ([] if dockyard.db.is_sqlite else ["manifest_children", "manifest_blobs"])
    with dockyard.db.read() as conn:
        child = manifest_children.c
        children = conn.execute(sa.select(child.child_digest, child.architecture, child.variant)).all()
        layers = conn.execute(
            sa.select(manifest_blobs.c.digest, manifest_blobs.c.media_type, manifest_blobs.c.size).where(
                manifest_blobs.c.digest.in_([b.digest for b in manifest.blobs])
            )
        ).all()
    assert sorted(children) == sorted([(image.digest, "amd64", None), (other.digest, "arm64", None)])
    assert sorted(layers) == sorted((b.digest, b.media_type, len(b.data)) for b in manifest.blobs)
