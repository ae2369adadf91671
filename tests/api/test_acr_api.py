"""ACR's /acr/v1 metadata API, as the azure-containerregistry SDK and the CLI read it."""

import json
from datetime import datetime

import pytest

from tests.support.images import make_image, make_index, sha256
from tests.support.registry import error_codes, push_blob, push_image, push_manifest


@pytest.fixture
def repository(client):
    amd = make_image("acr-amd")
    arm = make_image("acr-arm", architecture="arm64")
    push_image(client, "team/app", amd, "v1")
    push_image(client, "team/app", arm, "v2")
    index = make_index([amd, arm])
    push_manifest(client, "team/app", "multi", index, "application/vnd.oci.image.index.v1+json")
    return amd, arm


def _parse(value):
    assert value.endswith("Z")
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")


def test_catalog(client, repository):
    push_image(client, "aaa", make_image("first"), "x")
    assert client.get("/acr/v1/_catalog").json() == {"repositories": ["aaa", "team/app"]}
    page = client.get("/acr/v1/_catalog", params={"n": 1})
    assert page.json() == {"repositories": ["aaa"]}
    assert page.headers["link"].startswith("</acr/v1/_catalog?")


def test_repository_properties(client, repository):
    body = client.get("/acr/v1/team%2Fapp").json()
    assert body["imageName"] == "team/app"
    assert body["manifestCount"] == 3
    assert body["tagCount"] == 3
    assert body["changeableAttributes"]["deleteEnabled"] is True
    _parse(body["createdTime"])
    _parse(body["lastUpdateTime"])


def test_tags_with_details_and_order(client, repository):
    amd, arm = repository
    body = client.get("/acr/v1/team/app/_tags").json()
    assert body["imageName"] == "team/app"
    assert [t["name"] for t in body["tags"]] == ["multi", "v1", "v2"]
    assert {t["name"]: t["digest"] for t in body["tags"]}["v1"] == amd.digest
    assert all("changeableAttributes" in t for t in body["tags"])
    newest_first = client.get("/acr/v1/team/app/_tags", params={"orderby": "timedesc"}).json()["tags"]
    assert [t["name"] for t in newest_first] == ["multi", "v2", "v1"]
    oldest_first = client.get("/acr/v1/team/app/_tags", params={"orderby": "timeasc", "n": 2})
    assert [t["name"] for t in oldest_first.json()["tags"]] == ["v1", "v2"]
    link = oldest_first.headers["link"]
    rest = client.get(link[1 : link.index(">")]).json()["tags"]
    assert [t["name"] for t in rest] == ["multi"]
    by_digest = client.get("/acr/v1/team/app/_tags", params={"digest": arm.digest}).json()["tags"]
    assert [t["name"] for t in by_digest] == ["v2"]


def test_bad_orderby_is_400(client, repository):
    assert client.get("/acr/v1/team/app/_tags", params={"orderby": "sideways"}).status_code == 400


def test_one_tag(client, repository):
    amd, _ = repository
    body = client.get("/acr/v1/team/app/_tags/v1").json()
    assert body["tag"]["digest"] == amd.digest
    assert body["tag"]["changeableAttributes"]["writeEnabled"] is True
    assert error_codes(client.get("/acr/v1/team/app/_tags/nope")) == ["MANIFEST_UNKNOWN"]


def test_manifests_with_platform_size_and_tags(client, repository):
    amd, arm = repository
    manifests = client.get("/acr/v1/team/app/_manifests").json()["manifests"]
    by_digest = {m["digest"]: m for m in manifests}
    assert by_digest[amd.digest]["architecture"] == "amd64"
    assert by_digest[amd.digest]["os"] == "linux"
    assert by_digest[amd.digest]["tags"] == ["v1"]
    expected_size = len(amd.manifest) + sum(len(b.data) for b in amd.blobs)
    assert by_digest[amd.digest]["imageSize"] == expected_size
    assert by_digest[arm.digest]["architecture"] == "arm64"
    index = next(m for m in manifests if m["tags"] == ["multi"])
    assert {r["architecture"] for r in index["references"]} == {"amd64", "arm64"}
    single = client.get(f"/acr/v1/team/app/_manifests/{amd.digest}").json()
    assert single["manifest"]["digest"] == amd.digest


def test_manifest_list_pagination(client, repository):
    first = client.get("/acr/v1/team/app/_manifests", params={"n": 2})
    assert len(first.json()["manifests"]) == 2
    link = first.headers["link"]
    second = client.get(link[1 : link.index(">")]).json()["manifests"]
    assert len(second) == 1
    newest = client.get("/acr/v1/team/app/_manifests", params={"orderby": "timedesc"}).json()["manifests"]
    assert newest[0]["tags"] == ["multi"]


def test_delete_tag_manifest_and_repository(client, repository):
    amd, arm = repository
    assert client.delete("/acr/v1/team/app/_tags/v2").status_code == 202
    assert client.get("/v2/team/app/manifests/v2").status_code == 404
    index_digest = client.head("/v2/team/app/manifests/multi").headers["docker-content-digest"]
    assert client.delete(f"/acr/v1/team/app/_manifests/{index_digest}").status_code == 202
    assert client.delete(f"/acr/v1/team/app/_manifests/{amd.digest}").status_code == 202
    assert client.get(f"/v2/team/app/manifests/{amd.digest}").status_code == 404
    deleted = client.delete("/acr/v1/team/app")
    assert deleted.status_code == 202
    assert deleted.json() == {"manifestsDeleted": [arm.digest], "tagsDeleted": []}
    assert error_codes(client.get("/acr/v1/team/app")) == ["NAME_UNKNOWN"]
    assert client.get("/v2/_catalog").json()["repositories"] == []
    assert client.get(f"/v2/team/app/blobs/{amd.config.digest}").status_code == 404


def test_unknown_repository(client):
    for path in ["/acr/v1/nope", "/acr/v1/nope/_tags", "/acr/v1/nope/_manifests"]:
        assert error_codes(client.get(path)) == ["NAME_UNKNOWN"], path


def test_zero_page_size_is_an_empty_page_without_link(client, repository):
    for path, key in [
        ("/acr/v1/_catalog", "repositories"),
        ("/acr/v1/team/app/_tags", "tags"),
        ("/acr/v1/team/app/_manifests", "manifests"),
    ]:
        response = client.get(path, params={"n": 0})
        assert response.status_code == 200, path
        assert response.json()[key] == [], path
        assert "link" not in response.headers, path


def test_the_platform_is_read_from_the_store_when_the_config_was_not_pushed_here(client, dockyard):
    """A manifest push takes os/architecture from its config: from the bytes this process just
    stored, or from the store when another node (or a chunked upload) stored them."""
    recent = dockyard.registry.manifests.recent
    here = make_image("platform-here", architecture="arm64", os_name="windows")
    push_image(client, "plat", here, "here")
    assert recent.get(here.config.digest) == here.config.data
    elsewhere = make_image("platform-elsewhere", architecture="s390x")
    for blob in elsewhere.blobs:
        push_blob(client, "plat", blob.data)
    recent._blobs.clear()  # as on a node that did not receive the config
    push_manifest(client, "plat", "elsewhere", elsewhere.manifest, elsewhere.media_type)
    assert recent.get(elsewhere.config.digest) is None
    by_digest = {m["digest"]: m for m in client.get("/acr/v1/plat/_manifests").json()["manifests"]}
    platform = {digest: (m["os"], m["architecture"]) for digest, m in by_digest.items()}
    assert platform[here.digest] == ("windows", "arm64")
    assert platform[elsewhere.digest] == ("linux", "s390x")


def test_a_config_descriptor_understating_its_size_never_reads_the_blob(client, dockyard, monkeypatch):
    """Attack: a manifest whose config names a large blob with a small declared size, to make the
    registry read the whole blob into memory while it looks for the platform. Refused unread."""
    big = bytes(range(256)) * 4096  # 1 MiB: any stored blob, not pushed by this client's config
    push_blob(client, "plat", big)
    dockyard.registry.manifests.recent._blobs.clear()
    store = dockyard.registry.manifests._store
    reads: list[str] = []
    real_read = store.read
    monkeypatch.setattr(
        store, "read", lambda digest, *a, **k: reads.append(digest) or real_read(digest, *a, **k)
    )
    image = make_image("understated")
    document = json.loads(image.manifest)
    document["config"] = {"mediaType": document["config"]["mediaType"], "digest": sha256(big), "size": 100}
    response = push_manifest(client, "plat", "lie", json.dumps(document).encode(), image.media_type)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]
    assert sha256(big) not in reads
