"""Soft delete (the recycle bin), restore and its expiry, through the management API."""

import base64
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dockyard.db import utcnow
from dockyard.events.models import repository_events
from dockyard.lifecycle.models import recycled_manifests
from dockyard.registry.models import repository_blobs
from tests.support.auth import create_user
from tests.support.images import make_artifact, make_image, make_index
from tests.support.registry import error_codes, push_blob, push_image, push_manifest

POLICY = "/api/v1/registry/policies/soft-delete"
INDEX = "application/vnd.oci.image.index.v1+json"


def enable(client, days=7):
    response = client.patch(POLICY, json={"status": "enabled", "retentionDays": days})
    assert response.status_code == 200, response.text
    return response.json()


def bin_of(client, repository="team/app"):
    response = client.get(f"/api/v1/deleted/{repository}/_manifests")
    assert response.status_code == 200, response.text
    return response.json()["manifests"]


def restore(client, digest, repository="team/app", **body):
    return client.post(f"/api/v1/deleted/{repository}/_manifests/{digest}/restore", json=body)


def kept_blobs(dockyard):
    lifecycle = dockyard.service("lifecycle")
    with dockyard.db.read() as conn:
        return {d for source in lifecycle.kept_blobs for d in conn.execute(source()).scalars()}


def test_policy_is_off_by_default_and_validated(client):
    shown = client.get(POLICY).json()
    assert shown["status"] == "disabled"
    assert shown["retentionDays"] == 7
    for bad in ({"retentionDays": 0}, {"retentionDays": 91}, {"status": "on"}, {"retentionDays": "7"}):
        response = client.patch(POLICY, json=bad)
        assert response.status_code == 400, bad
        assert error_codes(response) == ["INVALID_REQUEST"]
    assert enable(client, 30)["retentionDays"] == 30
    both = client.get("/api/v1/registry/policies").json()
    assert both["softDeletePolicy"]["status"] == "enabled"
    assert both["retentionPolicy"]["status"] == "disabled"


def test_without_soft_delete_a_delete_is_final(client, dockyard):
    image = make_image("final")
    digest = push_image(client, "team/app", image, "v1")
    assert client.delete(f"/v2/team/app/manifests/{digest}").status_code == 202
    assert bin_of(client) == []
    assert restore(client, digest).status_code == 404


def test_delete_by_digest_goes_to_the_bin_and_restores_with_its_tags(client, dockyard):
    enable(client)
    image = make_image("binned")
    digest = push_image(client, "team/app", image, "v1")
    push_manifest(client, "team/app", "stable", image.manifest, image.media_type)
    assert client.delete(f"/v2/team/app/manifests/{digest}").status_code == 202
    assert client.get("/v2/team/app/manifests/v1").status_code == 404

    [entry] = bin_of(client)
    assert entry["digest"] == digest
    assert entry["tags"] == ["stable", "v1"]
    assert entry["expiresTime"] > entry["deletedTime"]
    tags = client.get("/api/v1/deleted/team/app/_tags").json()["tags"]
    assert [(t["tag"], t["digest"]) for t in tags] == [("stable", digest), ("v1", digest)]
    assert {b.digest for b in image.blobs} <= kept_blobs(dockyard)

    response = restore(client, digest)
    assert response.status_code == 200, response.text
    assert response.json() == {"digest": digest, "restoredTags": ["stable", "v1"], "skippedTags": []}
    pulled = client.get("/v2/team/app/manifests/v1", headers={"Accept": image.media_type})
    assert pulled.status_code == 200
    assert pulled.content == image.manifest
    assert bin_of(client) == []
    assert not kept_blobs(dockyard)
    with dockyard.db.read() as conn:
        actions = conn.execute(
            sa.select(repository_events.c.action, repository_events.c.tag)
            .where(repository_events.c.digest == digest)
            .order_by(repository_events.c.id)
        ).all()
    assert [a for a, _ in actions][-4:] == ["delete", "push", "push", "push"]
    assert {t for _, t in actions[-3:]} == {None, "stable", "v1"}


def test_restore_takes_back_a_moved_tag_only_with_force(client):
    enable(client)
    first, second = make_image("first"), make_image("second")
    digest = push_image(client, "team/app", first, "v1")
    push_manifest(client, "team/app", "old", first.manifest, first.media_type)
    assert client.delete(f"/v2/team/app/manifests/{digest}").status_code == 202
    other = push_image(client, "team/app", second, "v1")

    body = restore(client, digest).json()
    assert body["restoredTags"] == ["old"]
    assert body["skippedTags"] == ["v1"]
    assert client.get("/acr/v1/team/app/_tags/v1").json()["tag"]["digest"] == other

    assert client.delete(f"/v2/team/app/manifests/{digest}").status_code == 202
    body = restore(client, digest, force=True).json()
    assert body["restoredTags"] == ["old"]
    assert body["skippedTags"] == []
    assert client.delete(f"/v2/team/app/manifests/{digest}").status_code == 202
    body = restore(client, digest, tag="v1", force=True).json()
    assert body["restoredTags"] == ["v1"]
    assert client.get("/acr/v1/team/app/_tags/v1").json()["tag"]["digest"] == digest


def test_untag_is_not_a_soft_delete(client):
    enable(client)
    push_image(client, "team/app", make_image("untag"), "v1")
    assert client.delete("/v2/team/app/manifests/v1").status_code == 202
    assert bin_of(client) == []


def test_whole_repository_goes_to_the_bin_and_comes_back(client, dockyard):
    enable(client)
    image = make_image("whole")
    digest = push_image(client, "team/app", image, "v1")
    assert client.delete("/acr/v1/team/app").status_code == 202
    assert client.get("/api/v1/deleted-repositories").json() == {"repositories": ["team/app"]}
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(repository_blobs)).scalar_one() == 0

    assert restore(client, digest).status_code == 200
    assert client.get("/api/v1/deleted-repositories").json() == {"repositories": []}
    for blob in image.blobs:
        assert client.get(f"/v2/team/app/blobs/{blob.digest}").content == blob.data


def test_index_restore_is_not_recursive_and_a_referrer_needs_its_subject(client):
    enable(client)
    amd, arm = make_image("amd"), make_image("arm", architecture="arm64")
    push_image(client, "team/app", amd)
    push_image(client, "team/app", arm)
    index = make_index([amd, arm])
    assert push_manifest(client, "team/app", "multi", index, INDEX).status_code == 201
    signature = make_artifact("application/vnd.example.sig", b"sig", subject=amd.descriptor())
    sig_digest = push_image(client, "team/app", signature)
    assert client.delete("/acr/v1/team/app").status_code == 202

    index_digest = next(m["digest"] for m in bin_of(client) if m["mediaType"] == INDEX)
    response = restore(client, sig_digest)
    assert response.status_code == 409
    assert error_codes(response) == ["DENIED"]
    assert client.get("/acr/v1/team/app").status_code == 404  # a refused restore created nothing
    response = restore(client, index_digest)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]

    for image in (amd, arm):
        assert restore(client, image.digest).status_code == 200
    assert restore(client, index_digest).json()["restoredTags"] == ["multi"]
    assert restore(client, sig_digest).status_code == 200
    assert bin_of(client) == []


def test_pushing_a_binned_digest_again_is_allowed(client):
    enable(client)
    image = make_image("again")
    digest = push_image(client, "team/app", image, "v1")
    assert client.delete(f"/v2/team/app/manifests/{digest}").status_code == 202
    push_image(client, "team/app", image, "v2")
    response = restore(client, digest)
    assert response.status_code == 200
    assert sorted(client.get("/v2/team/app/tags/list").json()["tags"]) == ["v1", "v2"]


def test_expired_entries_are_purged_with_the_current_days(client, dockyard):
    enable(client, days=3)
    image = make_image("expire")
    digest = push_image(client, "team/app", image, "v1")
    assert client.delete(f"/v2/team/app/manifests/{digest}").status_code == 202
    recycle = dockyard.service("lifecycle").recycle
    assert recycle.bin.purge_expired(utcnow() + timedelta(days=2)) == 0
    enable(client, days=1)  # the purge uses the policy's current value, as ACR's does
    assert recycle.bin.purge_expired(utcnow() + timedelta(days=2)) == 1
    assert bin_of(client) == []
    assert not kept_blobs(dockyard)
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(recycled_manifests)).scalar_one() == 0


def test_the_expiry_job_is_scheduled(dockyard):
    names = {schedule.name for schedule in dockyard.runtime.schedules}
    assert {"lifecycle.expire-recycle-bin", "lifecycle.retention"} <= names


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", POLICY),
        ("POST", "/api/v1/deleted/team/app/_manifests/sha256:" + "a" * 64 + "/restore"),
    ],
)
def test_anonymous_callers_are_refused(anonymous, method, path):
    response = anonymous.request(method, path, json={})
    assert response.status_code == 401


def test_a_reader_sees_the_bin_and_only_a_contributor_restores(client, anonymous):
    enable(client)
    digest = push_image(client, "team/app", make_image("roles"), "v1")
    assert client.delete(f"/v2/team/app/manifests/{digest}").status_code == 202
    reader = create_user(client, "auditor", "Reader")
    deleter = create_user(client, "cleaner", "AcrDelete")
    contributor = create_user(client, "maintainer", "Contributor")
    listed = anonymous.get("/api/v1/deleted/team/app/_manifests", headers=reader)
    assert [m["digest"] for m in listed.json()["manifests"]] == [digest]
    path = f"/api/v1/deleted/team/app/_manifests/{digest}/restore"
    for refused in (reader, deleter):
        response = anonymous.post(path, json={}, headers=refused)
        assert response.status_code == 403
        assert error_codes(response) == ["DENIED"]
    assert anonymous.patch(POLICY, json={"status": "disabled"}, headers=reader).status_code == 403
    assert anonymous.post(path, json={}, headers=contributor).status_code == 200


# -- paging the bin's listings -----------------------------------------------------------------------


def pages(client, path, key, n):
    """Each page of ``path`` with ``?n=``, following the Link headers to the end."""
    found, url, params = [], path, ({"n": n} if n else None)
    while url:
        response = client.get(url, params=params)
        assert response.status_code == 200, response.text
        found.append(response.json()[key])
        link = response.headers.get("link")
        url, params = (link[link.index("<") + 1 : link.index(">")] if link else None), None
        assert link is None or link.endswith('; rel="next"')
    return found


def fill_bin(client, repository, count, tags=lambda i: [f"t{i:02d}"], batch=""):
    """Push ``count`` manifests sharing one config and layer, tagged by ``tags(i)``; return their digests."""
    base = make_image("paging")
    for blob in base.blobs:
        push_blob(client, repository, blob.data)
    digests = []
    for i in range(count):
        image = make_image("paging", annotations={"i": f"{repository}-{batch}{i}"})
        for reference in tags(i) or [image.digest]:
            response = push_manifest(client, repository, reference, image.manifest, image.media_type)
            assert response.status_code == 201, response.text
        digests.append(image.digest)
    return digests


def test_paging_the_bin_returns_every_entry_once_in_order(client):
    enable(client)
    # three deleted one by one, each with "latest": one tag name on several bin entries
    alone = []
    for i in range(3):
        alone += fill_bin(client, "team/app", 1, tags=lambda _, i=i: [f"v{i}", "latest"], batch=f"a{i}")
        assert client.delete(f"/v2/team/app/manifests/{alone[-1]}").status_code == 202
    # twenty more in one repository delete: one deletion time, ordered by digest; every fourth untagged
    fill_bin(client, "team/app", 20, tags=lambda i: [] if i % 4 == 0 else [f"t{i:02d}"], batch="b")
    assert client.delete("/acr/v1/team/app").status_code == 202

    whole = client.get("/api/v1/deleted/team/app/_manifests")
    assert "link" not in whole.headers
    everything = whole.json()["manifests"]
    assert len(everything) == len({m["digest"] for m in everything}) == 23
    keys = [(m["deletedTime"], m["digest"]) for m in everything]
    assert keys == sorted(sorted(keys, key=lambda k: k[1]), key=lambda k: k[0], reverse=True)
    assert {m["digest"] for m in everything[-3:]} == set(alone)  # deleted first, listed last
    paged = pages(client, "/api/v1/deleted/team/app/_manifests", "manifests", 4)
    assert [len(page) for page in paged] == [4, 4, 4, 4, 4, 3]
    assert [m for page in paged for m in page] == everything

    all_tags = client.get("/api/v1/deleted/team/app/_tags").json()["tags"]
    names = [t["tag"] for t in all_tags]
    assert names == sorted(names)
    assert names.count("latest") == 3
    assert len(names) == 3 + 3 + 15
    tag_pages = pages(client, "/api/v1/deleted/team/app/_tags", "tags", 2)
    assert [t for page in tag_pages for t in page] == all_tags
    assert all(len({t["tag"] for t in page}) == 2 for page in tag_pages[:-1])
    [latest_page] = [page for page in tag_pages if any(t["tag"] == "latest" for t in page)]
    assert [t["digest"] for t in latest_page if t["tag"] == "latest"] == alone[::-1]  # newest first


def test_a_bin_cursor_is_stable_under_restores_and_new_deletions(client):
    enable(client)
    digests = fill_bin(client, "team/app", 12)
    for digest in digests:
        assert client.delete(f"/v2/team/app/manifests/{digest}").status_code == 202
    listed = [m["digest"] for m in bin_of(client)]
    first = client.get("/api/v1/deleted/team/app/_manifests", params={"n": 4})
    assert [m["digest"] for m in first.json()["manifests"]] == listed[:4]
    link = first.headers["link"]
    # meanwhile: one entry already seen and one not yet seen are restored, a new one is deleted
    for digest in (listed[1], listed[9]):
        assert restore(client, digest).status_code == 200
    [late] = fill_bin(client, "team/app", 1, tags=lambda i: ["late"], batch="late")
    assert client.delete(f"/v2/team/app/manifests/{late}").status_code == 202
    rest = pages(client, link[link.index("<") + 1 : link.index(">")], "manifests", None)
    assert [m["digest"] for page in rest for m in page] == [d for d in listed[4:] if d != listed[9]]


def test_deleted_repositories_page_by_name(client):
    enable(client)
    for name in ("bin/r3", "bin/r0", "bin/r4", "bin/r1", "bin/r2"):
        fill_bin(client, name, 1)
        assert client.delete(f"/acr/v1/{name}").status_code == 202
    paged = pages(client, "/api/v1/deleted-repositories", "repositories", 2)
    assert paged == [["bin/r0", "bin/r1"], ["bin/r2", "bin/r3"], ["bin/r4"]]
    after = client.get("/api/v1/deleted-repositories", params={"last": "bin/r1"})
    assert after.json() == {"repositories": ["bin/r2", "bin/r3", "bin/r4"]}


def test_the_default_page_is_100_and_n_at_most_1000(client, dockyard):
    enable(client)
    moment = utcnow()
    with dockyard.db.write() as conn:
        conn.execute(
            recycled_manifests.insert(),
            [
                {
                    "repository": "team/app",
                    "digest": f"sha256:{i:064x}",
                    "media_type": "application/vnd.oci.image.manifest.v1+json",
                    "size": 2,
                    "total_size": 2,
                    "payload": b"{}",
                    "tags": [f"t{i:03d}"],
                    "deleted_at": moment - timedelta(seconds=i // 10),  # ties of ten
                }
                for i in range(105)
            ],
        )
    for path, key in (
        ("/api/v1/deleted/team/app/_manifests", "manifests"),
        ("/api/v1/deleted/team/app/_tags", "tags"),
    ):
        first = client.get(path)
        assert len(first.json()[key]) == 100
        assert 'rel="next"' in first.headers["link"]
        assert len(client.get(path, params={"n": 1000}).json()[key]) == 105
        assert [len(page) for page in pages(client, path, key, 100)] == [100, 5]


@pytest.mark.parametrize(
    "path",
    ["/api/v1/deleted-repositories", "/api/v1/deleted/team/app/_manifests", "/api/v1/deleted/team/app/_tags"],
)
def test_bad_n_and_last_are_400s(client, path):
    for bad in ("0", "1001", "-1", "ten", "1e3", "٣"):
        response = client.get(path, params={"n": bad})
        assert response.status_code == 400, bad
        assert error_codes(response) == ["UNSUPPORTED"]
    cursor = "garbage!" if path.endswith("_manifests") else "x" * 256
    for bad, code in ((cursor, "UNSUPPORTED"), ("line\nbreak", "UNSUPPORTED"), ("a\x00b", "INVALID_REQUEST")):
        response = client.get(path, params={"last": bad})
        assert response.status_code == 400, bad
        assert error_codes(response) == [code]
    assert client.get(path, params={"n": "1000"}).status_code == 200


def test_a_forged_manifest_cursor_is_refused(client):
    def encoded(text):
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    digest = "sha256:" + "a" * 64
    for bad in (
        encoded(f"2024-01-01T00:00:00 {digest}"),  # no time zone
        encoded("2024-01-01T00:00:00+00:00 sha256:short"),
        encoded(f"yesterday {digest}"),
        encoded(f"2024-01-01T00:00:00+00:00{digest}"),
        "%%%",
    ):
        response = client.get("/api/v1/deleted/team/app/_manifests", params={"last": bad})
        assert response.status_code == 400, bad
        assert error_codes(response) == ["UNSUPPORTED"]
    fine = encoded(f"2024-01-01T00:00:00.000000+00:00 {digest}")
    assert client.get("/api/v1/deleted/team/app/_manifests", params={"last": fine}).json()["manifests"] == []


def test_a_purge_that_untags_then_deletes_a_manifest_bins_it_with_those_tags(client, dockyard):
    """purge untags first, then deletes the manifests left untagged: the bin records the tags the
    run took off, so a restore undoes a mistaken purge (new-user pass, helper-56). A tag the run
    kept is not recorded for a manifest that still had it."""
    from tests.api.test_purge import age_tags, run_purge

    enable(client)
    image = make_image("purged")
    digest = push_image(client, "team/app", image, "v1")
    push_manifest(client, "team/app", "stable", image.manifest, image.media_type)
    kept = push_image(client, "team/app", make_image("kept"), "v9")
    age_tags(dockyard, "team/app", {"v1": timedelta(days=3), "stable": timedelta(days=3)})
    run = run_purge(client, dockyard, filters=["team/app:^(v1|stable)$"], ago="1d", untagged=True)
    assert run["deletedTags"] == 2
    assert run["deletedManifests"] == 1
    [entry] = bin_of(client)
    assert (entry["digest"], entry["tags"]) == (digest, ["stable", "v1"])
    restored = restore(client, digest)
    assert restored.status_code == 200, restored.text
    assert restored.json() == {"digest": digest, "restoredTags": ["stable", "v1"], "skippedTags": []}
    listed = client.get("/v2/team/app/tags/list").json()["tags"]
    assert sorted(listed) == ["stable", "v1", "v9"]
    assert client.get("/v2/team/app/manifests/v9").headers["Docker-Content-Digest"] == kept
