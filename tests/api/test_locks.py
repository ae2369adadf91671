"""Locks (ACR changeableAttributes) on repositories, tags and manifests, through /acr/v1 and /v2."""

from __future__ import annotations

import pytest

from tests.support.auth import create_user
from tests.support.images import make_artifact, make_image
from tests.support.registry import error_codes, push_blob, push_image

REPO = "team/app"
OCI = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def images(client):
    one, two = make_image("locks-one"), make_image("locks-two")
    push_image(client, REPO, one, "v1")
    push_image(client, REPO, two, "v2")
    return one, two


def _patch(client, path, **attributes):
    response = client.patch(f"/acr/v1/{path}", json=attributes)
    assert response.status_code == 200, response.text
    return response.json()


def _put(client, reference, image):
    return client.put(
        f"/v2/{REPO}/manifests/{reference}",
        content=image.manifest,
        headers={"Content-Type": image.media_type},
    )


def _denied(response, attribute):
    assert response.status_code == 403, response.text
    assert error_codes(response) == ["DENIED"]
    assert attribute in response.json()["errors"][0]["message"]


def test_patch_answers_like_get_and_is_partial(client, images):
    body = _patch(client, "team%2Fapp", writeEnabled=False)
    assert body["changeableAttributes"] == {
        "deleteEnabled": True,
        "writeEnabled": False,
        "readEnabled": True,
        "listEnabled": True,
    }
    body = _patch(client, "team%2Fapp", deleteEnabled=False)
    assert body["changeableAttributes"]["writeEnabled"] is False  # untouched by a partial update
    assert client.get("/acr/v1/team/app").json()["changeableAttributes"]["deleteEnabled"] is False
    tag = _patch(client, "team/app/_tags/v1", listEnabled=False)["tag"]
    assert tag["name"] == "v1"
    assert tag["changeableAttributes"]["listEnabled"] is False
    digest = images[0].digest
    manifest = _patch(client, f"team/app/_manifests/{digest}", readEnabled=False)["manifest"]
    assert manifest["digest"] == digest
    assert manifest["changeableAttributes"]["readEnabled"] is False


def test_patch_rejects_bad_bodies_and_unknown_targets(client, images):
    response = client.patch("/acr/v1/team/app", json={"writeEnabled": "no"})
    assert response.status_code == 400
    assert error_codes(response) == ["INVALID_REQUEST"]
    assert client.patch("/acr/v1/team/app", content=b"[1]").status_code == 400
    assert error_codes(client.patch("/acr/v1/team/app/_tags/nope", json={"writeEnabled": False})) == [
        "MANIFEST_UNKNOWN"
    ]
    assert error_codes(client.patch("/acr/v1/nothing", json={"writeEnabled": False})) == ["NAME_UNKNOWN"]


def test_write_locked_tag_cannot_be_overwritten_or_deleted(client, images):
    one, two = images
    _patch(client, "team/app/_tags/v1", writeEnabled=False)
    _denied(_put(client, "v1", two), "writeEnabled")
    assert _put(client, "v1", one).status_code == 201  # the same digest again moves nothing
    _denied(client.delete("/v2/team/app/manifests/v1"), "writeEnabled")
    _denied(client.delete(f"/v2/team/app/manifests/{one.digest}"), "writeEnabled")
    _denied(client.delete("/acr/v1/team/app"), "writeEnabled")
    assert client.get("/acr/v1/team/app/_tags/v1").json()["tag"]["digest"] == one.digest
    assert _put(client, "other", two).status_code == 201  # other tags are free
    _patch(client, "team/app/_tags/v1", writeEnabled=True)
    assert _put(client, "v1", two).status_code == 201
    assert client.delete("/v2/team/app/manifests/v1").status_code == 202


def test_delete_locked_tag_may_move_but_not_be_deleted(client, images):
    one, two = images
    _patch(client, "team/app/_tags/v1", deleteEnabled=False)
    _denied(client.delete("/acr/v1/team/app/_tags/v1"), "deleteEnabled")
    _denied(client.delete(f"/acr/v1/team/app/_manifests/{one.digest}"), "deleteEnabled")
    assert _put(client, "v1", two).status_code == 201
    # The manifest it left is no longer protected by the tag.
    assert client.delete(f"/v2/team/app/manifests/{one.digest}").status_code == 202


@pytest.mark.parametrize("attribute", ["writeEnabled", "deleteEnabled"])
def test_locked_manifest_cannot_be_deleted(client, images, attribute):
    one, two = images
    _patch(client, f"team/app/_manifests/{one.digest}", **{attribute: False})
    _denied(client.delete(f"/v2/team/app/manifests/{one.digest}"), attribute)
    _denied(client.delete("/acr/v1/team/app"), attribute)
    # Tag and manifest attributes are independent (as ACR): the tag may move and be deleted.
    assert _put(client, "v1", two).status_code == 201
    assert client.delete("/v2/team/app/manifests/v1").status_code == 202
    assert client.get(f"/v2/team/app/manifests/{one.digest}").status_code == 200
    _patch(client, f"team/app/_manifests/{one.digest}", **{attribute: True})
    assert client.delete(f"/v2/team/app/manifests/{one.digest}").status_code == 202


def test_write_locked_repository_takes_no_push_and_no_delete(client, images):
    one, _two = images
    _patch(client, "team%2Fapp", writeEnabled=False)
    _denied(client.post(f"/v2/{REPO}/blobs/uploads/"), "writeEnabled")
    _denied(_put(client, "v3", one), "writeEnabled")
    mountable = push_blob(client, "elsewhere", b"mountable")
    mount = client.post(f"/v2/{REPO}/blobs/uploads/", params={"mount": mountable, "from": "elsewhere"})
    _denied(mount, "writeEnabled")
    _denied(client.delete("/v2/team/app/manifests/v1"), "writeEnabled")
    _denied(client.delete(f"/v2/team/app/blobs/{one.blobs[0].digest}"), "writeEnabled")
    _denied(client.delete("/acr/v1/team/app"), "writeEnabled")
    assert client.get("/v2/team/app/manifests/v1").status_code == 200  # pulls go on
    assert client.get("/v2/team/app/tags/list").json()["tags"] == ["v1", "v2"]
    _patch(client, "team%2Fapp", writeEnabled=True)
    assert _put(client, "v3", one).status_code == 201


def test_delete_locked_repository_takes_pushes_but_no_delete(client, images):
    _one, two = images
    _patch(client, "team%2Fapp", deleteEnabled=False)
    assert _put(client, "v1", two).status_code == 201
    _denied(client.delete("/v2/team/app/manifests/v1"), "deleteEnabled")
    _denied(client.delete("/acr/v1/team/app"), "deleteEnabled")


def test_repository_delete_with_a_locked_tag_deletes_nothing(client, images):
    _patch(client, "team/app/_tags/v2", deleteEnabled=False)
    _denied(client.delete("/acr/v1/team/app"), "deleteEnabled")
    assert client.get("/v2/team/app/tags/list").json()["tags"] == ["v1", "v2"]
    assert client.get("/acr/v1/team/app").json()["manifestCount"] == 2
    _patch(client, "team/app/_tags/v2", deleteEnabled=True)
    assert client.delete("/acr/v1/team/app").status_code == 202


def test_read_locked_tag_is_not_pulled_by_that_tag(client, images):
    one, _ = images
    _patch(client, "team/app/_tags/v1", readEnabled=False)
    _denied(client.get("/v2/team/app/manifests/v1"), "readEnabled")
    assert client.head("/v2/team/app/manifests/v1").status_code == 403
    assert client.get(f"/v2/team/app/manifests/{one.digest}").status_code == 200
    assert client.get("/v2/team/app/manifests/v2").status_code == 200
    _patch(client, "team/app/_tags/v1", readEnabled=True)
    assert client.get("/v2/team/app/manifests/v1").status_code == 200


def test_read_locked_manifest_is_not_pulled_by_tag_or_digest(client, images):
    one, _ = images
    assert client.get("/v2/team/app/manifests/v1").status_code == 200  # warm any cache
    _patch(client, f"team/app/_manifests/{one.digest}", readEnabled=False)
    _denied(client.get("/v2/team/app/manifests/v1"), "readEnabled")
    _denied(client.get(f"/v2/team/app/manifests/{one.digest}"), "readEnabled")
    _patch(client, f"team/app/_manifests/{one.digest}", readEnabled=True)
    assert client.get(f"/v2/team/app/manifests/{one.digest}").status_code == 200


def test_read_locked_repository_serves_no_manifest_or_blob(client, images):
    one, _ = images
    layer = one.blobs[0].digest
    assert client.get(f"/v2/team/app/blobs/{layer}").status_code == 200
    _patch(client, "team%2Fapp", readEnabled=False)
    _denied(client.get("/v2/team/app/manifests/v2"), "readEnabled")
    _denied(client.get(f"/v2/team/app/blobs/{layer}"), "readEnabled")
    assert client.head(f"/v2/team/app/blobs/{layer}").status_code == 403
    # Nor may its blobs be mounted into a readable repository.
    mount = client.post("/v2/other/blobs/uploads/", params={"mount": layer, "from": REPO})
    assert mount.status_code == 202  # an ordinary upload session instead of a mount
    assert client.head(f"/v2/other/blobs/{layer}").status_code == 404
    _patch(client, "team%2Fapp", readEnabled=True)
    assert client.get(f"/v2/team/app/blobs/{layer}").status_code == 200


def test_unlisted_items_are_hidden_from_listings_only(client, images):
    one, two = images
    assert client.get("/v2/team/app/tags/list").json()["tags"] == ["v1", "v2"]  # cache the whole list
    _patch(client, "team/app/_tags/v1", listEnabled=False)
    assert client.get("/v2/team/app/tags/list").json()["tags"] == ["v2"]
    assert client.get("/v2/team/app/tags/list", params={"n": 5}).json()["tags"] == ["v2"]
    assert [t["name"] for t in client.get("/acr/v1/team/app/_tags").json()["tags"]] == ["v2"]
    assert client.get("/acr/v1/team/app/_tags/v1").status_code == 200  # still shown when asked for
    assert client.get("/v2/team/app/manifests/v1").status_code == 200  # and still pulled
    _patch(client, f"team/app/_manifests/{two.digest}", listEnabled=False)
    listed = [m["digest"] for m in client.get("/acr/v1/team/app/_manifests").json()["manifests"]]
    assert listed == [one.digest]
    push_image(client, "visible", make_image("visible"), "x")
    _patch(client, "team%2Fapp", listEnabled=False)
    assert client.get("/v2/_catalog").json()["repositories"] == ["visible"]
    assert client.get("/acr/v1/_catalog").json()["repositories"] == ["visible"]
    _patch(client, "team%2Fapp", listEnabled=True)
    _patch(client, "team/app/_tags/v1", listEnabled=True)
    assert client.get("/v2/_catalog").json()["repositories"] == [REPO, "visible"]
    assert client.get("/v2/team/app/tags/list").json()["tags"] == ["v1", "v2"]


def test_changing_locks_needs_metadata_write(client, app, images):
    from starlette.testclient import TestClient

    puller = create_user(client, "puller", "AcrPull")
    contributor = create_user(client, "contrib", "Contributor")
    with TestClient(app) as other:
        refused = other.patch("/acr/v1/team/app", json={"writeEnabled": False}, headers=puller)
        assert refused.status_code == 403
        allowed = other.patch("/acr/v1/team/app", json={"writeEnabled": False}, headers=contributor)
        assert allowed.status_code == 200
    assert client.get("/acr/v1/team/app").json()["changeableAttributes"]["writeEnabled"] is False


def test_unlisted_referrer_is_hidden_from_the_referrers_list(client, images):
    one, _ = images
    subject = {"mediaType": one.media_type, "digest": one.digest, "size": len(one.manifest)}
    signature = make_artifact("application/example.sig", b"signed", subject=subject)
    push_image(client, REPO, signature)
    listed = client.get(f"/v2/team/app/referrers/{one.digest}").json()["manifests"]
    assert [d["digest"] for d in listed] == [signature.digest]
    _patch(client, f"team/app/_manifests/{signature.digest}", listEnabled=False)
    assert client.get(f"/v2/team/app/referrers/{one.digest}").json()["manifests"] == []
