"""Retention of untagged manifests: scheduling on untag, cancelling on re-tag, what it never deletes."""

from datetime import timedelta

import sqlalchemy as sa

from dockyard.db import utcnow
from dockyard.lifecycle.models import retention_due
from tests.support.images import make_artifact, make_image, make_index
from tests.support.registry import error_codes, push_image, push_manifest

POLICY = "/api/v1/registry/policies/retention"
INDEX = "application/vnd.oci.image.index.v1+json"


def enable(client, days=7):
    response = client.patch(POLICY, json={"status": "enabled", "days": days, "type": "UntaggedManifests"})
    assert response.status_code == 200, response.text
    return response.json()


def run(dockyard, days_later):
    return dockyard.service("lifecycle").recycle.retention.run(utcnow() + timedelta(days=days_later))


def scheduled(dockyard):
    with dockyard.db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(retention_due)).scalar_one()


def exists(client, digest, repository="team/app"):
    return client.head(f"/v2/{repository}/manifests/{digest}").status_code == 200


def test_policy_is_validated(client):
    shown = client.get(POLICY).json()
    assert shown == {"days": 7, "status": "disabled", "type": "UntaggedManifests", "lastUpdatedTime": None}
    for bad in ({"days": -1}, {"days": 366}, {"type": "TaggedManifests"}, {"status": "yes"}):
        response = client.patch(POLICY, json=bad)
        assert response.status_code == 400, bad
        assert error_codes(response) == ["INVALID_REQUEST"]
    assert enable(client, 0)["days"] == 0


def test_only_manifests_untagged_after_enabling_are_scheduled(client, dockyard):
    early = push_image(client, "team/app", make_image("early"), "a")
    assert client.delete("/v2/team/app/manifests/a").status_code == 202
    enable(client, 3)
    late = push_image(client, "team/app", make_image("late"), "b")
    assert client.delete("/v2/team/app/manifests/b").status_code == 202
    assert scheduled(dockyard) == 1
    assert run(dockyard, 2).deleted == []
    assert run(dockyard, 4).deleted == [f"team/app@{late}"]
    assert not exists(client, late)
    assert exists(client, early)


def test_a_tag_moved_by_a_push_schedules_the_old_manifest(client, dockyard):
    enable(client, 1)
    old = push_image(client, "team/app", make_image("old"), "latest")
    new = push_image(client, "team/app", make_image("new"), "latest")
    assert run(dockyard, 2).deleted == [f"team/app@{old}"]
    assert exists(client, new)


def test_a_manifest_with_another_tag_is_not_scheduled(client, dockyard):
    enable(client, 1)
    image = make_image("two-tags")
    push_image(client, "team/app", image, "a")
    push_manifest(client, "team/app", "b", image.manifest, image.media_type)
    assert client.delete("/v2/team/app/manifests/a").status_code == 202
    assert scheduled(dockyard) == 0


def test_a_re_tag_cancels_the_deletion(client, dockyard):
    enable(client, 1)
    image = make_image("retag")
    digest = push_image(client, "team/app", image, "a")
    assert client.delete("/v2/team/app/manifests/a").status_code == 202
    push_manifest(client, "team/app", "again", image.manifest, image.media_type)
    result = run(dockyard, 2)
    assert result.deleted == []
    assert result.kept == {f"team/app@{digest}": "tagged"}
    assert exists(client, digest)
    assert scheduled(dockyard) == 0  # and the schedule is gone, so a later run cannot delete it


def test_children_of_an_index_and_referrers_of_kept_manifests_stay(client, dockyard):
    enable(client, 0)
    amd, arm = make_image("r-amd"), make_image("r-arm", architecture="arm64")
    push_image(client, "team/app", amd, "amd")
    push_image(client, "team/app", arm, "arm")
    assert push_manifest(client, "team/app", "multi", make_index([amd, arm]), INDEX).status_code == 201
    signature = make_artifact("application/vnd.example.sig", b"sig", subject=amd.descriptor())
    push_image(client, "team/app", signature, "sig")
    for tag in ("amd", "arm", "sig"):
        assert client.delete(f"/v2/team/app/manifests/{tag}").status_code == 202
    result = run(dockyard, 0)
    assert result.deleted == []
    assert result.kept[f"team/app@{signature.digest}"] == "a referrer of a kept manifest"
    assert "index" in result.kept[f"team/app@{amd.digest}"]
    assert all(exists(client, image.digest) for image in (amd, arm, signature))
    assert run(dockyard, 0).kept == {}  # looked at again a day later, not at every run
    assert client.delete(f"/v2/team/app/manifests/{amd.digest}").status_code == 409  # still in the index
    assert client.delete("/v2/team/app/manifests/multi").status_code == 202
    assert f"team/app@{arm.digest}" in run(dockyard, 2).deleted  # the index is gone: its child goes


def test_retention_deletes_land_in_the_recycle_bin_when_soft_delete_is_on(client, dockyard):
    enable(client, 0)
    assert (
        client.patch("/api/v1/registry/policies/soft-delete", json={"status": "enabled"}).status_code == 200
    )
    digest = push_image(client, "team/app", make_image("binned-by-retention"), "x")
    assert client.delete("/v2/team/app/manifests/x").status_code == 202
    assert run(dockyard, 0).deleted == [f"team/app@{digest}"]
    binned = client.get("/api/v1/deleted/team/app/_manifests").json()["manifests"]
    assert [m["digest"] for m in binned] == [digest]


def test_a_disabled_policy_deletes_nothing(client, dockyard):
    enable(client, 0)
    digest = push_image(client, "team/app", make_image("paused"), "x")
    assert client.delete("/v2/team/app/manifests/x").status_code == 202
    assert client.patch(POLICY, json={"status": "disabled"}).status_code == 200
    assert run(dockyard, 1).deleted == []
    assert exists(client, digest)
