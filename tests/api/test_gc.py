"""Online garbage collection on every backend: what is freed, what is kept, and the races with pushes."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dockyard.app import Dockyard
from dockyard.db import utcnow
from dockyard.lifecycle.models import gc_runs
from dockyard.lifecycle.services.gc import GarbageCollector, Options, Report
from dockyard.registry.models import blobs, manifest_blobs, repository_blobs, uploads
from dockyard.registry.services.blobstate import (
    ASSUMED_FOR,
    DELETING,
    GONE,
    LIVE,
    BlobBusy,
    NotNew,
    Seen,
    assume_new,
    link_committed,
)
from tests.support.auth import create_user
from tests.support.images import make_image, sha256
from tests.support.registry import error_codes, push_blob, push_image
from tests.support.stores import stored_blobs

HOUR = 3600


def collector(parts: Dockyard, *, ahead: float = 2 * HOUR) -> GarbageCollector:
    """A collector whose clock runs ``ahead``: with the default grace period everything is old enough."""
    return GarbageCollector(
        parts.db,
        parts.store,
        parts.registry.manifests,
        parts.service("lifecycle").kept_blobs,
        batch=2,  # several batches even in small tests
        clock=lambda: utcnow() + timedelta(seconds=ahead),
    )


def stored_digests(parts: Dockyard) -> set[str]:
    """Digests of the blobs the store holds at their own place (located objects: by their row)."""
    found = stored_blobs(parts.store)
    with parts.db.read() as conn:
        by_location = dict(
            conn.execute(
                sa.select(blobs.c.location, blobs.c.digest).where(blobs.c.location.isnot(None))
            ).all()
        )
    return {item.digest or by_location.get(item.location, item.location) for item in found}


def assert_consistent(parts: Dockyard) -> None:
    """No live row lacks its bytes, and every manifest reference names a live row."""
    with parts.db.read() as conn:
        rows = conn.execute(sa.select(blobs.c.digest, blobs.c.state, blobs.c.location)).all()
        referenced = set(conn.execute(sa.select(manifest_blobs.c.digest).distinct()).scalars())
    states = {row.digest: row.state for row in rows}
    for row in rows:
        if row.state == LIVE:
            assert parts.store.stat(row.digest, location=row.location) is not None, row.digest
    for digest in referenced:
        assert states.get(digest) == LIVE, digest


def test_a_deleted_image_is_freed_and_a_tagged_one_still_pulls(client, dockyard):
    keep = make_image("keep", layers=2)
    drop = make_image("drop", layers=2)
    push_image(client, "team/app", keep, tag="v1")
    push_image(client, "team/app", drop, tag="v2")
    assert client.delete(f"/v2/team/app/manifests/{drop.digest}").status_code == 202

    report = collector(dockyard).collect(Options(grace_seconds=HOUR))

    assert report.freed["links"].items == 3
    assert report.freed["blobs"].items == 3
    assert report.freed["blobs"].bytes == sum(len(b.data) for b in drop.blobs)
    left = stored_digests(dockyard)
    assert not left & {b.digest for b in drop.blobs}
    assert {b.digest for b in keep.blobs} <= left
    for blob in keep.blobs:
        pulled = client.get(f"/v2/team/app/blobs/{blob.digest}")
        assert pulled.status_code == 200
        assert sha256(pulled.content) == blob.digest
    for blob in drop.blobs:
        assert client.head(f"/v2/team/app/blobs/{blob.digest}").status_code == 404
    assert client.get("/v2/team/app/manifests/v1").status_code == 200
    assert_consistent(dockyard)


def test_a_layer_shared_with_another_repository_stays(client, dockyard):
    image = make_image("shared")
    push_image(client, "one", image, tag="v1")
    push_image(client, "two", image, tag="v1")
    assert client.delete(f"/v2/one/manifests/{image.digest}").status_code == 202

    report = collector(dockyard).collect(Options(grace_seconds=HOUR))

    assert report.freed["links"].items == 2  # unlinked from "one" only
    assert report.freed["blobs"].items == 0
    for blob in image.blobs:
        assert client.head(f"/v2/one/blobs/{blob.digest}").status_code == 404
        assert client.get(f"/v2/two/blobs/{blob.digest}").content == blob.data


def test_the_grace_period_protects_recent_pushes(client, dockyard):
    push_blob(client, "app", b"an unreferenced blob, just pushed")
    report = collector(dockyard, ahead=0).collect(Options(grace_seconds=HOUR))
    assert report.freed["links"].items == report.freed["blobs"].items == report.freed["orphans"].items == 0
    assert client.head(f"/v2/app/blobs/{sha256(b'an unreferenced blob, just pushed')}").status_code == 200


def test_a_dry_run_reports_and_deletes_nothing(client, dockyard):
    digest = push_blob(client, "app", b"garbage to be")
    before = stored_digests(dockyard)

    report = collector(dockyard).collect(Options(grace_seconds=HOUR, dry_run=True))

    assert report.freed["links"].items == 1
    assert report.freed["blobs"].items == 0  # its link would go first; the next run frees it
    assert stored_digests(dockyard) == before
    assert client.head(f"/v2/app/blobs/{digest}").status_code == 200


def test_untagged_manifests_go_only_when_asked(client, dockyard):
    index_child = make_image("by-digest")
    push_image(client, "app", index_child)  # pushed by digest: untagged
    tagged = make_image("tagged")
    push_image(client, "app", tagged, tag="v1")
    gc = collector(dockyard)

    kept = gc.collect(Options(grace_seconds=HOUR))
    assert kept.freed["manifests"].items == 0
    assert client.get(f"/v2/app/manifests/{index_child.digest}").status_code == 200

    freed = gc.collect(Options(grace_seconds=HOUR, untagged=True))
    assert freed.freed["manifests"].items == 1
    assert freed.freed["blobs"].items == 2
    assert client.get(f"/v2/app/manifests/{index_child.digest}").status_code == 404
    assert client.get("/v2/app/manifests/v1").status_code == 200
    deletes = client.get("/api/v1/events", params={"action": "delete"}).json()["value"]
    assert [event["digest"] for event in deletes] == [index_child.digest]
    assert_consistent(dockyard)


def test_untagged_collection_respects_locks_and_the_recycle_bin(client, dockyard):
    locked = make_image("locked-untagged")
    binned = make_image("binned-untagged")
    push_image(client, "app", locked)
    push_image(client, "app", binned)
    patched = client.patch(f"/acr/v1/app/_manifests/{locked.digest}", json={"deleteEnabled": False})
    assert patched.status_code == 200, patched.text
    enabled = client.patch("/api/v1/registry/policies/soft-delete", json={"status": "enabled", "days": 7})
    assert enabled.status_code == 200, enabled.text

    report = collector(dockyard).collect(Options(grace_seconds=HOUR, untagged=True))

    assert report.freed["manifests"].items == 1
    assert client.get(f"/v2/app/manifests/{locked.digest}").status_code == 200
    assert client.get(f"/v2/app/manifests/{binned.digest}").status_code == 404
    deleted = client.get("/api/v1/deleted/app/_manifests").json()
    assert binned.digest in str(deleted)  # soft-deleted: in the bin, its blobs kept
    assert report.freed["blobs"].items == 0
    assert_consistent(dockyard)
    restored = client.post(f"/api/v1/deleted/app/_manifests/{binned.digest}/restore", json={})
    assert restored.status_code == 200, restored.text
    for blob in binned.blobs:
        assert client.get(f"/v2/app/blobs/{blob.digest}").content == blob.data


def test_store_objects_without_a_row_are_removed(client, dockyard):
    data = b"bytes a crashed push left behind"
    dockyard.store.put(sha256(data), data)
    push_image(client, "app", make_image("real"), tag="v1")

    report = collector(dockyard).collect(Options(grace_seconds=HOUR))

    assert report.freed["orphans"].items == 1
    assert report.freed["orphans"].bytes == len(data)
    assert sha256(data) not in stored_digests(dockyard)
    assert_consistent(dockyard)
    # the claim left a tombstone; pushing the same bytes again revives it
    assert push_blob(client, "app", data) == sha256(data)
    assert client.get(f"/v2/app/blobs/{sha256(data)}").content == data
    assert_consistent(dockyard)


def test_tombstones_are_pruned_after_a_day(client, dockyard):
    push_blob(client, "app", b"short-lived")
    collector(dockyard).collect(Options(grace_seconds=HOUR))
    collector(dockyard).collect(Options(grace_seconds=HOUR))  # unlinked, then freed
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(blobs.c.state)).scalars().all() == [GONE]
    report = collector(dockyard, ahead=2 * 24 * HOUR).collect(Options(grace_seconds=HOUR))
    assert report.freed["tombstones"].items == 1
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(blobs)).scalar() == 0


# -- races, interleaved deterministically ---------------------------------------------------------


def unlinked_blob(client, parts: Dockyard, data: bytes) -> str:
    """A blob pushed, then unlinked by garbage collection: a candidate for marking."""
    digest = push_blob(client, "app", data)
    collector(parts).collect_links(utcnow() + timedelta(hours=1), False, _report())
    return digest


def _report() -> Report:
    return Report()


def test_a_manifest_push_that_commits_first_keeps_its_blobs(client, dockyard):
    image = make_image("racer")
    for blob in image.blobs:
        push_blob(client, "app", blob.data)
    gc = collector(dockyard)
    cutoff = utcnow() + timedelta(hours=1)
    with dockyard.db.read() as conn:
        repo_links = [(1, b.digest) for b in image.blobs]
        assert conn.execute(sa.select(sa.func.count()).select_from(blobs)).scalar() == 2
    # the collector chose its candidates; the manifest push commits before it locks them
    response = client.put(
        "/v2/app/manifests/v1", content=image.manifest, headers={"Content-Type": image.media_type}
    )
    assert response.status_code == 201
    assert dockyard.db.run_write(lambda conn: gc.unlink(conn, repo_links, cutoff)) == 0
    assert gc.mark([b.digest for b in image.blobs], cutoff) == []
    assert_consistent(dockyard)


def test_a_manifest_push_after_marking_fails_cleanly_and_a_retry_succeeds(client, dockyard):
    image = make_image("late")
    for blob in image.blobs:
        push_blob(client, "app", blob.data)
    gc = collector(dockyard)
    cutoff = utcnow() + timedelta(hours=1)
    gc.collect_links(cutoff, False, _report())
    marked = gc.mark([b.digest for b in image.blobs], cutoff)
    assert len(marked) == 2

    response = client.put(
        "/v2/app/manifests/v1", content=image.manifest, headers={"Content-Type": image.media_type}
    )
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
    # re-pushing a blob while its bytes are being deleted is refused for a moment
    busy = client.post("/v2/app/blobs/uploads/")
    answer = client.put(
        busy.headers["location"], params={"digest": image.config.digest}, content=image.config.data
    )
    assert answer.status_code == 503
    assert answer.headers["retry-after"]

    done, failed = gc.delete_bytes(marked)
    assert failed == 0
    assert gc.finish(done) == 2
    assert_consistent(dockyard)
    push_image(client, "app", image, tag="v1")  # the client's retry
    for blob in image.blobs:
        assert client.get(f"/v2/app/blobs/{blob.digest}").content == blob.data
    assert_consistent(dockyard)


@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_an_upload_committing_while_its_bytes_are_deleted_never_links_missing_bytes(
    client, dockyard, monkeypatch, chunked
):
    data = b"the same bytes, pushed while collected" * (1 if not chunked else 50)
    digest = unlinked_blob(client, dockyard, data)
    gc = collector(dockyard)
    cutoff = utcnow() + timedelta(hours=1)
    store = dockyard.store
    name = "commit_upload" if chunked else "put"
    original = getattr(store, name)

    commits = []

    def commit_then_collect(*args, **kwargs):
        result = original(*args, **kwargs)  # the upload's bytes are in the store (or reused) ...
        if not commits:  # ... and garbage collection deletes them before it links
            done, _ = gc.delete_bytes(gc.mark([digest], cutoff))
            gc.finish(done)
        commits.append(args)
        return result

    monkeypatch.setattr(store, name, commit_then_collect)
    started = client.post("/v2/app/blobs/uploads/")
    location = started.headers["location"]
    if chunked:
        patched = client.patch(location, content=data, headers={"Content-Type": "application/octet-stream"})
        assert patched.status_code == 202
        location = patched.headers["location"]
        answer = client.put(location, params={"digest": digest})
    else:
        answer = client.put(location, params={"digest": digest}, content=data)
    if not chunked:
        # The closing PUT assumed a new blob, found its tombstone, read it, stored the bytes again
        # and linked them: the client sees none of it.
        assert answer.status_code == 201, answer.text
        assert len(commits) == 2
        assert client.get(f"/v2/app/blobs/{digest}").content == data
        assert_consistent(dockyard)
        return
    assert answer.status_code == 503, answer.text
    monkeypatch.setattr(store, name, original)

    assert client.head(f"/v2/app/blobs/{digest}").status_code == 404
    assert_consistent(dockyard)
    assert push_blob(client, "app", data) == digest  # the retry writes the bytes again
    assert client.get(f"/v2/app/blobs/{digest}").content == data
    assert_consistent(dockyard)


def test_a_mount_of_a_blob_being_collected_falls_back_to_an_upload(client, dockyard):
    digest = push_blob(client, "source", b"mount me")
    gc = collector(dockyard)
    cutoff = utcnow() + timedelta(hours=1)
    gc.collect_links(cutoff, False, _report())
    gc.mark([digest], cutoff)
    mounted = client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "source"})
    assert mounted.status_code == 202  # not mounted: the client uploads
    assert_consistent(dockyard)


# -- the API and the job runtime -------------------------------------------------------------------


def test_a_run_requested_over_the_api_runs_as_a_job_and_reports(client, dockyard):
    digest = push_blob(client, "app", b"to collect over the api")
    queued = client.post("/api/v1/gc/runs", json={"gracePeriodSeconds": 0})
    assert queued.status_code == 202, queued.text
    run = queued.json()
    assert run["status"] == "queued"
    assert run["gracePeriodSeconds"] == 0

    assert dockyard.runtime.run_jobs() == 1
    first = client.get(f"/api/v1/gc/runs/{run['id']}").json()
    assert first["status"] == "succeeded", first
    assert first["freed"]["links"]["items"] == 1  # unlinked, then freed in the same run
    assert first["freed"]["blobs"] == {"items": 1, "bytes": len(b"to collect over the api")}

    client.post("/api/v1/gc/runs", json={"gracePeriodSeconds": 0, "dryRun": True})
    dockyard.runtime.run_jobs()
    latest = client.get("/api/v1/gc/runs").json()["value"]
    assert [(r["status"], r["dryRun"]) for r in latest] == [("succeeded", True), ("succeeded", False)]
    assert latest[0]["freed"]["blobs"] == {"items": 0, "bytes": 0}
    assert client.head(f"/v2/app/blobs/{digest}").status_code == 404


def test_gc_runs_need_the_right_roles(client, anonymous):
    assert anonymous.post("/api/v1/gc/runs", json={}).status_code == 401
    reader = create_user(client, "gc-reader", "Reader")
    contributor = create_user(client, "gc-contributor", "Contributor")
    assert client.get("/api/v1/gc/runs", headers=reader).status_code == 200
    assert client.post("/api/v1/gc/runs", json={}, headers=reader).status_code == 403
    assert client.post("/api/v1/gc/runs", json={"dryRun": True}, headers=contributor).status_code == 202
    assert client.post("/api/v1/gc/runs", json={"gracePeriodSeconds": -1}).status_code == 400
    assert client.get("/api/v1/gc/runs/999").status_code == 404


def test_usage_counts_each_blob_once(client):
    shared = make_image("usage", layers=2)
    push_image(client, "one", shared, tag="v1")
    push_image(client, "two", shared, tag="v1")
    usage = client.get("/api/v1/registry/usage").json()["value"]
    by_name = {item["name"]: item for item in usage}
    assert list(by_name) == [
        "Size", "Webhooks", "Tokens", "ScopeMaps", "IPRules", "Geo-replications", "CacheRules"
    ]  # fmt: skip
    expected = sum(len(b.data) for b in shared.blobs) + len(shared.manifest)
    assert by_name["Size"]["currentValue"] == expected
    assert by_name["Size"]["unit"] == "Bytes"
    assert by_name["Size"]["limit"] == 500 * 1024**3  # the default Premium tier
    assert by_name["Webhooks"]["limit"] == 500
    assert by_name["Geo-replications"]["limit"] == -1
    repo = client.get("/api/v1/registry/usage", params={"repository": "one"}).json()
    assert repo["sizeBytes"] == expected
    assert repo["manifestCount"] == 1
    assert client.get("/api/v1/registry/usage", params={"repository": "none"}).status_code == 404


# -- the linker's decision, state by state ---------------------------------------------------------

DIGEST = sha256(b"decision")


@pytest.mark.parametrize(
    ("row", "seen", "links"),
    [
        (None, Seen(None), True),  # new blob
        ((LIVE, 3), Seen(LIVE, 3), True),  # unchanged
        ((LIVE, 0), Seen(None), True),  # a concurrent push of the same blob recorded it first
        ((LIVE, 4), Seen(GONE, 4), True),  # a concurrent push revived it first (both wrote new bytes)
        ((LIVE, 4), Seen(LIVE, 3), False),  # marked and revived meanwhile: our reused bytes may be gone
        ((LIVE, 1), Seen(None), False),  # an unrecorded object claimed, deleted and revived meanwhile
        ((DELETING, 4), Seen(LIVE, 3), False),  # being deleted now
        ((GONE, 4), Seen(LIVE, 3), False),  # deleted after we looked: bytes we reused are gone
        ((GONE, 4), Seen(GONE, 4), True),  # deleted before we wrote: ours are new, it comes back
        ((DELETING, 1), Seen(None), False),  # an unrecorded object claimed for deletion meanwhile
        (None, Seen(GONE, 4), False),  # its tombstone was pruned meanwhile
    ],
)
def test_the_linker_links_only_when_collection_cannot_have_taken_its_bytes(dockyard, row, seen, links):
    from dockyard.registry.services.common import ensure_repository

    def prepare(conn):
        if row is not None:
            conn.execute(
                blobs.insert().values(
                    digest=DIGEST, size=8, created_at=utcnow(), state=row[0], generation=row[1]
                )
            )

    def link(conn):
        return link_committed(conn, ensure_repository(conn, "app"), DIGEST, 8, None, seen)

    dockyard.db.run_write(prepare)
    if links:
        assert dockyard.db.run_write(link) is True
        with dockyard.db.read() as conn:
            assert conn.execute(sa.select(blobs.c.state).where(blobs.c.digest == DIGEST)).scalar() == LIVE
    else:
        with pytest.raises(BlobBusy) as refused:
            dockyard.db.run_write(link)
        assert refused.value.status == 503


@pytest.mark.parametrize(
    "row",
    [None, (LIVE, 0), (LIVE, 3), (DELETING, 1), (GONE, 4)],
    ids=["no row", "live", "live, marked before", "deleting", "gone"],
)
def test_a_linker_that_assumed_a_new_blob_links_only_what_its_own_insert_recorded(dockyard, row):
    """Without the read, any row found may hide a collection since the store commit: NotNew, and
    nothing of the transaction is kept (the caller reads, stores and links again)."""
    from dockyard.registry.services.common import ensure_repository

    if row is not None:
        state, generation = row
        recorded = blobs.insert().values(
            digest=DIGEST, size=8, created_at=utcnow(), state=state, generation=generation
        )
        dockyard.db.run_write(lambda conn: conn.execute(recorded))

    def link(conn):
        return link_committed(conn, ensure_repository(conn, "app"), DIGEST, 8, None, assume_new())

    if row is None:
        assert dockyard.db.run_write(link) is True
    else:
        with pytest.raises(NotNew):
            dockyard.db.run_write(link)
    with dockyard.db.read() as conn:
        after = conn.execute(
            sa.select(blobs.c.state, blobs.c.generation).where(blobs.c.digest == DIGEST)
        ).one()
        links = conn.execute(sa.select(sa.func.count()).select_from(repository_blobs)).scalar()
    assert tuple(after) == ((LIVE, 0) if row is None else row)
    assert links == (1 if row is None else 0)


def test_an_assumption_held_too_long_is_read_again(dockyard, monkeypatch):
    """Past ``ASSUMED_FOR`` a tombstone could have been pruned since the store commit: NotNew."""
    from dockyard.registry.services import blobstate
    from dockyard.registry.services.common import ensure_repository

    seen = assume_new()
    now = time.monotonic()
    monkeypatch.setattr(blobstate.time, "monotonic", lambda: now + ASSUMED_FOR + 1)

    def link(conn):
        return link_committed(conn, ensure_repository(conn, "app"), DIGEST, 8, None, seen)

    with pytest.raises(NotNew):
        dockyard.db.run_write(link)
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(blobs)).scalar() == 0


def test_committed_uploads_nobody_recorded_are_removed_unless_their_session_lives(dockyard):
    store = dockyard.store
    committed = {}
    for name in ("crashed", "in-flight"):
        data = f"{name} upload bytes".encode()
        upload_id = f"gc-{name}"
        writer = store.open_upload(upload_id, None, 0)
        writer.write(data)
        state = writer.close()
        committed[name] = (sha256(data), store.commit_upload(upload_id, state, sha256(data), len(data)))
    now = utcnow()
    dockyard.db.run_write(
        lambda conn: conn.execute(
            uploads.insert().values(
                id="gc-in-flight", repository="app", size=0, created_at=now, updated_at=now
            )
        )
    )

    collector(dockyard).collect(Options(grace_seconds=HOUR))

    for name, (digest, location) in committed.items():
        # at the digest's own place an unrecorded object is an orphan whatever its session (that
        # session has lost its bytes); at its upload's own location, a live session keeps it
        kept = location is not None and name == "in-flight"
        assert (store.stat(digest, location=location) is not None) == kept, (name, location)


def test_the_scheduled_run_collects_with_the_default_grace_and_prunes_old_records(client, dockyard):
    gc = dockyard.service("lifecycle").gc
    old = gc.request(dry_run=True)
    dockyard.db.run_write(
        lambda conn: conn.execute(
            gc_runs.update().where(gc_runs.c.id == old.id).values(created_at=utcnow() - timedelta(days=31))
        )
    )
    run = gc.scheduled()
    assert run.status == "succeeded"
    assert run.trigger == "schedule"
    assert run.grace_seconds == dockyard.settings.gc_grace_seconds
    assert [r.id for r in gc.list()] == [run.id]
