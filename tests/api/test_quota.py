"""The storage quota: new blobs stop at the tier's storage_bytes; stored blobs, pulls and deletes go on."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dockyard.app import Dockyard
from dockyard.db import utcnow
from dockyard.lifecycle.services.gc import GarbageCollector, Options
from dockyard.registry.models import blobs
from dockyard.registry.services.upload_sessions import new_upload_id
from dockyard.tiers.quota import StorageQuota
from dockyard.tiers.services import TierService
from tests.support.images import make_image, sha256
from tests.support.registry import error_codes, push_blob, push_image
from tests.support.stores import stored_blobs, upload_leftovers

LIMIT = 5000
HOUR = 3600


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"tiers": {"Premium": {"storage_bytes": LIMIT}}})


def data(seed: str, size: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(size)


def denied(response, *words: str) -> None:
    assert response.status_code == 403, response.text
    assert error_codes(response) == ["DENIED"]
    text = response.json()["errors"][0]["message"]
    for word in ("storage quota exceeded", "Premium tier allows", *words):
        assert word in text, (word, text)


def recorded(parts: Dockyard, digest: str) -> bool:
    with parts.db.read() as conn:
        return conn.execute(sa.select(blobs.c.digest).where(blobs.c.digest == digest)).first() is not None


def in_store(parts: Dockyard, digest: str) -> bool:
    return any(b.digest == digest for b in stored_blobs(parts.store))


def test_a_new_blob_past_the_quota_is_refused_at_commit_on_every_path(client, dockyard):
    push_blob(client, "team/app", data("first", 3000))
    big = data("second", 2500)
    digest = sha256(big)

    started = client.post("/v2/team/app/blobs/uploads/")  # under the quota: the upload may start
    assert started.status_code == 202
    monolithic = client.put(started.headers["location"], params={"digest": digest}, content=big)
    denied(monolithic, "this blob needs 2.4 KiB more")
    assert monolithic.json()["errors"][0]["detail"] == {
        "tier": "Premium", "limitBytes": LIMIT, "usedBytes": 3000, "blobBytes": 2500,
    }  # fmt: skip

    chunked = client.post("/v2/team/app/blobs/uploads/")
    location = chunked.headers["location"]
    patched = client.patch(location, content=big, headers={"Content-Type": "application/octet-stream"})
    assert patched.status_code == 202
    denied(client.put(patched.headers["location"], params={"digest": digest}))
    # the session is kept: the client may close it again once there is room
    assert client.get(patched.headers["location"]).status_code == 204

    whole = client.post("/v2/team/app/blobs/uploads/", params={"digest": digest}, content=big)
    denied(whole)

    assert client.head(f"/v2/team/app/blobs/{digest}").status_code == 404
    assert not recorded(dockyard, digest)
    assert not in_store(dockyard, digest)


def test_at_the_quota_uploads_do_not_start_but_stored_blobs_mounts_manifests_and_pulls_work(client, dockyard):
    image = make_image("quota")
    push_image(client, "team/app", image, tag="v1")
    used = sum(len(b.data) for b in image.blobs) + len(image.manifest)
    push_blob(client, "team/app", data("fill", LIMIT - used))  # exactly at the quota: fits
    dockyard.service("tiers").quota.forget()  # its figure lags by the manifest's bytes until re-read

    started = client.post("/v2/team/other/blobs/uploads/")
    denied(started, "stores 4.9 KiB")
    layer = image.blobs[-1]
    mounted = client.post("/v2/team/other/blobs/uploads/", params={"mount": layer.digest, "from": "team/app"})
    assert mounted.status_code == 201
    assert client.put(
        "/v2/team/app/manifests/v2", content=image.manifest, headers={"Content-Type": image.media_type}
    ).status_code == 201  # fmt: skip
    assert client.get(f"/v2/team/app/blobs/{layer.digest}").content == layer.data
    assert client.get("/v2/team/app/manifests/v1", headers={"Accept": image.media_type}).status_code == 200
    usage = {u["name"]: u for u in client.get("/api/v1/registry/usage").json()["value"]}
    assert (usage["Size"]["limit"], usage["Size"]["currentValue"]) == (LIMIT, LIMIT)


def test_a_stored_blob_pushed_into_another_repository_adds_nothing_even_past_the_quota(client, dockyard):
    """The closing PUT assumes a new blob: the quota refusal and the row it then finds make it read."""
    stored = data("stored", 3000)
    push_blob(client, "team/app", stored)
    quota = dockyard.service("tiers").quota
    assert quota.used() == 3000
    push_blob(client, "team/other", stored)  # 3,000 bytes more would pass the quota, were they new
    assert quota.used() == 3000
    assert client.get(f"/v2/team/other/blobs/{sha256(stored)}").content == stored
    assert [b.size for b in stored_blobs(dockyard.store)] == [3000]


def test_at_the_quota_a_session_id_made_up_without_a_post_takes_no_bytes(client, dockyard):
    """An upload id needs no secret: its first write is checked as its POST would have been."""
    push_blob(client, "team/app", data("fill", LIMIT))
    dockyard.service("tiers").quota.forget()
    denied(client.post("/v2/team/other/blobs/uploads/"))
    made_up = f"/v2/team/other/blobs/uploads/{new_upload_id('team/other')}"
    denied(client.patch(made_up, content=b"x" * 100, headers={"Content-Range": "0-99"}))
    assert upload_leftovers(dockyard.store) == 0
    status = client.get(made_up)  # still an empty session: nothing was recorded
    assert (status.status_code, status.headers["range"]) == (204, "0-0")


def test_an_already_stored_blob_is_pushed_again_at_the_quota(client, dockyard):
    first = data("first", 3000)
    push_blob(client, "one", first)
    quota: StorageQuota = dockyard.service("tiers").quota
    quota.added(LIMIT)  # as if another push took the rest: new blobs no longer fit
    started = client.post("/v2/two/blobs/uploads/")
    denied(started)
    # a single-request push names its digest: a stored blob goes in, a new one is refused up front
    whole = client.post("/v2/two/blobs/uploads/", params={"digest": sha256(first)}, content=first)
    assert whole.status_code == 201, whole.text
    new = data("new", 100)
    denied(client.post("/v2/two/blobs/uploads/", params={"digest": sha256(new)}, content=new))
    quota.forget()
    push_blob(client, "two", data("small", 100))  # room again after a fresh read
    quota.added(LIMIT - 3100 - 50)
    push_blob(client, "three", first)  # 3000 bytes, but stored already
    denied(client.put(client.post("/v2/three/blobs/uploads/").headers["location"],
                      params={"digest": sha256(data("new", 100))}, content=data("new", 100)))  # fmt: skip


def test_deleting_and_collecting_makes_room(client, dockyard):
    image = make_image("big", layer_size=3000)
    push_image(client, "team/app", image, tag="v1")
    refused = data("next", 2000)
    started = client.post("/v2/team/app/blobs/uploads/")
    denied(client.put(started.headers["location"], params={"digest": sha256(refused)}, content=refused))

    assert client.delete(f"/v2/team/app/manifests/{image.digest}").status_code == 202
    report = GarbageCollector(
        dockyard.db,
        dockyard.store,
        dockyard.registry.manifests,
        dockyard.service("lifecycle").kept_blobs,
        clock=lambda: utcnow() + timedelta(seconds=2 * HOUR),
    ).collect(Options(grace_seconds=HOUR))
    assert report.freed["blobs"].items == len(image.blobs)
    dockyard.service("tiers").quota.forget()  # other processes: within QUOTA_CACHE_SECONDS
    push_blob(client, "team/app", refused)


def test_the_quota_reads_the_database_once_per_window(dockyard):
    now = [0.0]
    tiers: TierService = dockyard.service("tiers")
    quota = StorageQuota(dockyard.db, tiers, cache_seconds=5.0, clock=lambda: now[0])
    assert quota.used() == 0
    with dockyard.db.write() as conn:
        conn.execute(
            blobs.insert().values(
                digest=sha256(b"x"), size=LIMIT, created_at=utcnow(), state="live", generation=0
            )
        )
    quota.added(10)
    assert quota.used() == 10  # the cached figure plus this process's own commits
    quota.check_start()
    now[0] = 5.0
    assert quota.used() == LIMIT  # read again
    with pytest.raises(Exception, match="storage quota exceeded"):
        quota.check_start()


def test_the_start_check_from_memory_answers_only_while_the_figures_are_fresh(dockyard, statements):
    now = [0.0]
    tiers: TierService = dockyard.service("tiers")
    tiers.forget()
    quota = StorageQuota(dockyard.db, tiers, cache_seconds=5.0, clock=lambda: now[0])
    statements.clear()
    assert quota.check_start_known() is False  # neither the tier nor the stored bytes are known
    assert statements == []
    quota.check_start()  # reads both
    statements.clear()
    assert quota.check_start_known() is True
    quota.added(LIMIT)
    with pytest.raises(Exception, match="storage quota exceeded"):
        quota.check_start_known()
    now[0] = 5.0
    assert quota.check_start_known() is False  # the figure is due to be read again
    assert statements == []


def test_an_unlimited_tier_reads_nothing(dockyard, statements):
    tiers: TierService = dockyard.service("tiers")
    tiers.table[tiers.current().sku] = dataclasses.replace(tiers.current(), storage_bytes=-1)
    tiers.forget()
    tiers.current()
    statements.clear()
    tiers.quota.check_start()
    tiers.quota.check_new_blob(10**15)
    assert statements == []
