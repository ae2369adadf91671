"""Red-team attacks on the image-lifecycle surfaces (issue #9): locks, immutable tags, the recycle
bin, garbage collection (purge's are in test_redteam_purge.py).

``test_hole_…`` tests reproduce attacks that worked when they were written (each failed until its
hole was closed, or is marked ``xfail(strict=True)`` with the reason while it is open);
``test_refused_…`` tests are attacks that were correctly refused and guard against regressions.
Every test's docstring names the attack.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import sqlalchemy as sa

from dockyard.app import build
from dockyard.db import utcnow
from dockyard.lifecycle.services.gc import Options
from dockyard.registry.models import repositories, repository_blobs
from dockyard.storage import StorageError
from tests.api.test_gc import HOUR, assert_consistent, stored_digests
from tests.api.test_gc import collector as gc_collector
from tests.support.auth import access_token, basic, bearer, create_user
from tests.support.images import OCI_INDEX, make_artifact, make_image, make_index
from tests.support.registry import error_codes, push_blob, push_image, push_manifest

REPO = "team/app"
SOFT_DELETE = "/api/v1/registry/policies/soft-delete"


def soft_delete_on(client) -> None:
    response = client.patch(SOFT_DELETE, json={"status": "enabled", "retentionDays": 7})
    assert response.status_code == 200, response.text


def lock(client, path: str, **attributes: bool) -> None:
    response = client.patch(f"/acr/v1/{path}", json=attributes)
    assert response.status_code == 200, response.text


def oci_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert error_codes(response) == [code]


def repository_row(dockyard, name: str):
    with dockyard.db.read() as conn:
        return conn.execute(sa.select(repositories).where(repositories.c.name == name)).first()


def scoped_token(client, name: str, actions: list[str], repository: str = REPO) -> dict[str, str]:
    """A repository-scoped token (its own scope map) as Basic credentials."""
    scope_map = client.post(
        "/api/v1/scope-maps",
        json={"name": f"{name}-map", "actions": {repository: actions}},
    )
    assert scope_map.status_code == 201, scope_map.text
    created = client.post("/api/v1/tokens", json={"name": name, "scopeMap": f"{name}-map"})
    assert created.status_code == 201, created.text
    return basic(name, created.json()["credentials"][0]["value"])


# =================================================================================================
# A. HOLES
# =================================================================================================


def test_hole_gc_run_id_with_a_unicode_digit_is_a_500(client):
    """HOLE (closed). Attack: ``GET /api/v1/gc/runs/²``. ``str.isdigit`` accepts superscripts and
    other Unicode digits that ``int`` refuses, so the route raised ValueError: 500. Expected: 404."""
    for raw in ("\u00b2", "\u0661\u0662", "\U0001d7d9"):  # superscript 2, Arabic-Indic 12, double-struck 1
        oci_error(client.get(f"/api/v1/gc/runs/{raw}"), 404, "NOT_FOUND")


def test_hole_gc_grace_period_beyond_any_clock_is_a_500(client):
    """HOLE (closed). Attack: ``POST /api/v1/gc/runs`` with a grace period of 10^30 seconds. Only
    negatives were refused: the database cannot hold it (500) or ``timedelta`` overflows in the job.
    Expected: 400 INVALID_REQUEST and no run recorded."""
    for grace in (10**30, 2**63):
        oci_error(client.post("/api/v1/gc/runs", json={"gracePeriodSeconds": grace}), 400, "INVALID_REQUEST")
    assert client.get("/api/v1/gc/runs").json()["value"] == []


def test_hole_failed_restore_recreates_a_deleted_repository(client, dockyard):
    """HOLE (closed). Attack: restore, from a repository deleted as a whole, an index whose children
    are still in the bin. The restore fails (MANIFEST_BLOB_UNKNOWN, as documented), but its first
    transaction had already re-created the repository and linked blobs to it: the repository
    vanished from ``deleted-repositories`` and an empty live one appeared. Expected: a failed restore
    changes nothing."""
    soft_delete_on(client)
    amd, arm = make_image("rt-amd"), make_image("rt-arm", architecture="arm64")
    push_image(client, REPO, amd)
    push_image(client, REPO, arm)
    index = make_index([amd, arm])
    assert push_manifest(client, REPO, "multi", index, OCI_INDEX).status_code == 201
    assert client.delete(f"/acr/v1/{REPO}").status_code == 202
    index_digest = next(
        m["digest"] for m in client.get(f"/api/v1/deleted/{REPO}/_manifests").json()["manifests"]
        if m["mediaType"] == OCI_INDEX
    )  # fmt: skip
    response = client.post(f"/api/v1/deleted/{REPO}/_manifests/{index_digest}/restore", json={})
    oci_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
    assert repository_row(dockyard, REPO) is None
    assert client.get("/api/v1/deleted-repositories").json() == {"repositories": [REPO]}


def test_hole_failed_restore_into_a_live_repository_leaves_no_links(client, dockyard):
    """HOLE (closed). Attack: restore into a write-locked repository. The push is refused (403), but
    the blob links the restore made first stayed: the repository now serves blobs of a manifest it
    refused. Expected: refused, and the repository's links exactly as before."""
    soft_delete_on(client)
    kept, gone = make_image("rt-kept"), make_image("rt-gone")
    push_image(client, REPO, kept, "keep")
    digest = push_image(client, REPO, gone, "gone")
    assert client.delete(f"/v2/{REPO}/manifests/{digest}").status_code == 202
    repo_id = repository_row(dockyard, REPO).id

    def links() -> set[str]:
        with dockyard.db.read() as conn:
            query = sa.select(repository_blobs.c.digest).where(repository_blobs.c.repository_id == repo_id)
            return set(conn.execute(query).scalars())

    with dockyard.db.write() as conn:  # as if GC had meanwhile unlinked the deleted image's blobs
        conn.execute(
            repository_blobs.delete().where(
                repository_blobs.c.repository_id == repo_id,
                repository_blobs.c.digest.in_([b.digest for b in gone.blobs]),
            )
        )
    before = links()
    lock(client, "team%2Fapp", writeEnabled=False)
    response = client.post(f"/api/v1/deleted/{REPO}/_manifests/{digest}/restore", json={})
    oci_error(response, 403, "DENIED")
    assert links() == before
    for blob in gone.blobs:
        assert client.head(f"/v2/{REPO}/blobs/{blob.digest}").status_code == 404


# =================================================================================================
# B. REFUSED
# =================================================================================================


def test_refused_restore_bad_input_gets_oci_errors(client):
    """Attack: malformed digests, bodies and tag names on restore: 400 with the OCI shape, no 500."""
    soft_delete_on(client)
    digest = push_image(client, REPO, make_image("rt-bad"), "v1")
    assert client.delete(f"/v2/{REPO}/manifests/{digest}").status_code == 202
    url = f"/api/v1/deleted/{REPO}/_manifests"
    oci_error(client.post(f"{url}/sha256:zz/restore", json={}), 400, "DIGEST_INVALID")
    oci_error(client.post(f"{url}/md5:{'0' * 32}/restore", json={}), 400, "DIGEST_INVALID")
    oci_error(client.post(f"{url}/{digest}/restore", content=b"{nope"), 400, "INVALID_REQUEST")
    oci_error(client.post(f"{url}/{digest}/restore", content=b"[]"), 400, "INVALID_REQUEST")
    oci_error(client.post(f"{url}/{digest}/restore", json={"tag": 5}), 400, "INVALID_REQUEST")
    oci_error(client.post(f"{url}/{digest}/restore", json={"force": "yes"}), 400, "INVALID_REQUEST")
    oci_error(client.post(f"{url}/{digest}/restore", json={"tag": "../x"}), 400, "MANIFEST_INVALID")
    oci_error(client.post(f"{url}/{digest}/restore", json={"tag": "a" * 200}), 400, "MANIFEST_INVALID")
    oci_error(
        client.post(f"/api/v1/deleted/Team/App/_manifests/{digest}/restore", json={}), 400, "NAME_INVALID"
    )
    oci_error(
        client.post(f"/api/v1/deleted/other/_manifests/{digest}/restore", json={}), 404, "MANIFEST_UNKNOWN"
    )
    for bad in ({"retentionDays": -1}, {"retentionDays": 10**20}, {"days": 91}):
        oci_error(client.patch(SOFT_DELETE, json=bad), 400, "INVALID_REQUEST")
    for bad in ({"days": -1}, {"days": 366}, {"days": 10**20}, {"type": "All"}):
        oci_error(client.patch("/api/v1/registry/policies/retention", json=bad), 400, "INVALID_REQUEST")
    # nothing was restored by any of it
    assert client.get(f"/v2/{REPO}/manifests/{digest}").status_code == 404


def test_hole_restore_force_over_a_locked_tag(client):
    """HOLE (closed). Attack: restore with ``force`` to take back a tag a Contributor write-locked
    on another manifest. The tag stayed, but the answer was 403 although the manifest had been
    restored (live again, and still in the bin). Expected: the tag stays where it is and is
    reported in ``skippedTags``; the manifest is restored and leaves the bin."""
    soft_delete_on(client)
    old, new = make_image("rt-old"), make_image("rt-new")
    old_digest = push_image(client, REPO, old, "v1")
    assert client.delete(f"/v2/{REPO}/manifests/{old_digest}").status_code == 202
    new_digest = push_image(client, REPO, new, "v1")
    lock(client, "team/app/_tags/v1", writeEnabled=False)
    response = client.post(f"/api/v1/deleted/{REPO}/_manifests/{old_digest}/restore", json={"force": True})
    assert response.status_code == 200, response.text
    assert (response.json()["restoredTags"], response.json()["skippedTags"]) == ([], ["v1"])
    assert client.head(f"/v2/{REPO}/manifests/v1").headers["docker-content-digest"] == new_digest
    assert client.head(f"/v2/{REPO}/manifests/{old_digest}").status_code == 200
    assert client.get(f"/api/v1/deleted/{REPO}/_manifests").json()["manifests"] == []


def test_refused_lifecycle_routes_for_data_plane_callers(client, anonymous):
    """Attack: every lifecycle management route with no credentials, a repository-scoped token
    holding every action, and AcrPull/AcrPush/AcrDelete users. Only control-plane roles pass."""
    soft_delete_on(client)
    digest = push_image(client, REPO, make_image("rt-routes"), "v1")
    assert client.delete(f"/v2/{REPO}/manifests/{digest}").status_code == 202
    token = scoped_token(client, "allpowerful", ["content/read", "content/write", "content/delete",
                                                 "metadata/read", "metadata/write"])  # fmt: skip
    token_bearer = bearer(access_token(anonymous, token, f"repository:{REPO}:pull,push,delete"))
    callers = {
        "token": token,
        "token-bearer": token_bearer,
        "AcrPull": create_user(client, "puller", "AcrPull"),
        "AcrPush": create_user(client, "pusher", "AcrPush"),
        "AcrDelete": create_user(client, "deleter", "AcrDelete"),
    }
    writes = [
        ("PATCH", SOFT_DELETE, {"status": "disabled"}),
        ("PATCH", "/api/v1/registry/policies/retention", {"status": "enabled", "days": 0}),
        ("POST", f"/api/v1/deleted/{REPO}/_manifests/{digest}/restore", {}),
        ("POST", "/api/v1/gc/runs", {"untagged": True, "gracePeriodSeconds": 0}),
        ("POST", "/api/v1/purge/schedules", {"name": "x", "schedule": "* * * * *", "filters": [f"{REPO}:.*"],
                                             "ago": "0d"}),
    ]  # fmt: skip
    reads = [
        "/api/v1/registry/policies",
        SOFT_DELETE,
        "/api/v1/deleted-repositories",
        f"/api/v1/deleted/{REPO}/_manifests",
        f"/api/v1/deleted/{REPO}/_tags",
        "/api/v1/gc/runs",
        "/api/v1/registry/usage",
        f"/api/v1/registry/usage?repository={REPO}",
        "/api/v1/purge/runs",
        "/api/v1/purge/schedules",
    ]
    for method, url, body in writes:
        assert anonymous.request(method, url, json=body).status_code == 401, url
        for name, headers in callers.items():
            response = anonymous.request(method, url, json=body, headers=headers)
            assert response.status_code == 403, (name, url, response.text)
    for url in reads:
        assert anonymous.get(url).status_code == 401, url
        for name in ("token", "token-bearer", "AcrPull", "AcrPush"):
            assert anonymous.get(url, headers=callers[name]).status_code == 403, (name, url)
    for name in ("token", "token-bearer"):
        response = anonymous.post("/api/v1/purge", json={"filters": [f"{REPO}:.*"], "ago": "0d"},
                                  headers=callers[name])  # fmt: skip
        assert response.status_code == 403, (name, response.text)
    assert client.get(f"/v2/{REPO}/manifests/{digest}").status_code == 404  # still in the bin
    assert client.get(SOFT_DELETE).json()["status"] == "enabled"
    assert client.get("/api/v1/gc/runs").json()["value"] == []


def test_refused_mounts_across_locks(client):
    """Attack: mount a blob out of a read-locked repository into an open one, and into a
    write-locked repository from an open one. Expected: no 201 mount from the read-locked source
    (an upload session instead), 403 into the write-locked target; no link either way."""
    image = make_image("rt-mount")
    push_image(client, REPO, image, "v1")
    layer = image.layers[0].digest
    lock(client, "team%2Fapp", readEnabled=False)
    mounted = client.post(f"/v2/other/app/blobs/uploads/?mount={layer}&from={REPO}")
    assert mounted.status_code == 202, mounted.text
    assert client.head(f"/v2/other/app/blobs/{layer}").status_code == 404
    lock(client, "team%2Fapp", readEnabled=True)
    push_image(client, "locked/app", make_image("rt-locked"), "v1")
    lock(client, "locked%2Fapp", writeEnabled=False)
    into = client.post(f"/v2/locked/app/blobs/uploads/?mount={layer}&from={REPO}")
    oci_error(into, 403, "DENIED")
    assert client.head(f"/v2/locked/app/blobs/{layer}").status_code == 404


def test_hole_read_lock_bypasses(client):
    """HOLE (closed for referrers: they were listed, annotations and all). Attack: get around a
    repository read lock with HEAD, referrers and an encoded ``%2F`` name. Expected: every content
    read refused with 403 DENIED."""
    image = make_image("rt-read")
    digest = push_image(client, REPO, image, "v1")
    signature = make_artifact("application/vnd.example.sbom", b"sbom", subject=image.descriptor(),
                              annotations={"secret": "internal build host"})  # fmt: skip
    push_image(client, REPO, signature)
    lock(client, "team%2Fapp", readEnabled=False)
    for url in (
        f"/v2/{REPO}/manifests/v1",
        f"/v2/{REPO}/manifests/{digest}",
        f"/v2/team%2Fapp/manifests/{digest}",
        f"/v2/{REPO}/blobs/{image.config.digest}",
    ):
        for method in ("GET", "HEAD"):
            response = client.request(method, url)
            assert response.status_code == 403, (method, url, response.status_code)
    referrers = client.get(f"/v2/{REPO}/referrers/{digest}")
    oci_error(referrers, 403, "DENIED")  # HOLE (closed): listed the referrers and their annotations


def test_refused_unlisted_items_leak_through_pagination(client):
    """Attack: find unlisted tags and repositories through ``n``/``last`` pagination of the tag
    list and both catalogs (a ``last=`` just before the hidden name). Expected: never shown."""
    for name in ("a", "b", "c"):
        push_image(client, "hidden/repo", make_image(f"rt-h-{name}"), name)
    push_image(client, "visible/repo", make_image("rt-visible"), "v1")
    lock(client, "hidden/repo/_tags/b", listEnabled=False)
    lock(client, "hidden%2Frepo", listEnabled=False)
    seen: list[str] = []
    last = ""
    for _ in range(5):
        page = client.get("/v2/hidden/repo/tags/list", params={"n": 1, "last": last}).json()["tags"] or []
        if not page:
            break
        seen += page
        last = page[-1]
    assert "b" not in seen
    assert "b" not in (client.get("/v2/hidden/repo/tags/list", params={"last": "a"}).json()["tags"] or [])
    assert "b" not in [
        t["name"] for t in client.get("/acr/v1/hidden/repo/_tags", params={"last": "a"}).json()["tags"]
    ]
    for url in ("/v2/_catalog", "/acr/v1/_catalog"):
        for params in ({}, {"n": 1}, {"n": 1, "last": "hidden/rep"}, {"last": "a"}):
            assert "hidden/repo" not in client.get(url, params=params).json()["repositories"], (url, params)


def test_hole_gc_run_flood_queues_a_run_per_request(client, anonymous, dockyard):
    """HOLE (closed). Attack: flood ``POST /api/v1/gc/runs``. Anonymous floods get 401 and queue
    nothing; but every Contributor request queued another full run (each marks the whole registry
    under the registry-wide GC lock), so a loop of requests kept GC busy for hours. Expected: a
    request identical to a run still queued gets that run back."""
    for _ in range(20):
        assert anonymous.post("/api/v1/gc/runs", json={"gracePeriodSeconds": 0}).status_code == 401
    assert client.get("/api/v1/gc/runs").json()["value"] == []
    ids = {client.post("/api/v1/gc/runs", json={"dryRun": True}).json()["id"] for _ in range(20)}
    assert len(ids) == 1
    other = client.post("/api/v1/gc/runs", json={"dryRun": False}).json()["id"]
    assert other not in ids
    assert dockyard.runtime.run_jobs() == 2
    assert client.post("/api/v1/gc/runs", json={"dryRun": True}).json()["id"] not in ids  # finished: new


def test_refused_two_collectors_at_once_and_a_failing_store_keep_state_consistent(
    client, dockyard, settings, monkeypatch
):
    """Attack: run GC from two registry instances (``build(settings)`` twice) at the same time
    while the store refuses some deletes. Expected: no live row without bytes, no reference to a
    non-live blob, the kept image pulls; a later run frees what the failures left."""
    keep, drop = make_image("rt-keep", layers=3), make_image("rt-drop", layers=3)
    push_image(client, REPO, keep, "v1")
    push_image(client, REPO, drop, "v2")
    assert client.delete(f"/v2/{REPO}/manifests/{drop.digest}").status_code == 202
    second = build(settings)
    try:
        calls = {"n": 0}
        real_delete = second.store.delete

        def flaky_delete(digest, *, location=None):
            calls["n"] += 1
            if calls["n"] % 2:
                raise StorageError("the store said no")
            return real_delete(digest, location=location)

        monkeypatch.setattr(second.store, "delete", flaky_delete)
        with ThreadPoolExecutor(2) as pool:
            reports = list(pool.map(lambda parts: gc_collector(parts).collect(Options(grace_seconds=HOUR)),
                                    (dockyard, second)))  # fmt: skip
        assert all(report is not None for report in reports)
        assert_consistent(dockyard)
        # rows left 'deleting' by the refusals are finished by a run 15 minutes later
        gc_collector(dockyard, ahead=3 * HOUR).collect(Options(grace_seconds=HOUR))
        assert_consistent(dockyard)
        assert not stored_digests(dockyard) & {b.digest for b in drop.blobs}
        for blob in keep.blobs:
            assert client.get(f"/v2/{REPO}/blobs/{blob.digest}").content == blob.data
    finally:
        second.db.dispose()


def test_refused_nul_characters_in_lifecycle_inputs(client):
    """Attack: NUL characters where the lifecycle API puts text into queries or
    rows: a schedule name in the path, ``?schedule=``, purge filters, immutability exemptions.
    PostgreSQL refuses NUL in text (a 500 there). Expected: 4xx with the OCI error shape."""
    push_image(client, REPO, make_image("rt-nul"), "v1")
    answers = [
        client.get("/api/v1/purge/schedules/a%00b"),
        client.delete("/api/v1/purge/schedules/a%00b"),
        client.get("/api/v1/purge/runs", params={"schedule": "a\x00b"}),
        client.post("/api/v1/purge", json={"filters": [f"{REPO}:v\x00"], "ago": "0d", "dryRun": True}),
        client.post("/api/v1/purge", json={"filters": ["te\x00am/.*:v"], "ago": "0d", "dryRun": True}),
        client.put(
            f"/api/v1/repositories/{REPO}/immutability", json={"enabled": True, "exemptions": ["a\x00"]}
        ),
        client.get("/api/v1/registry/usage", params={"repository": "a\x00"}),
    ]
    for response in answers:
        assert response.status_code < 500, (response.request.url, response.text)
        if response.status_code >= 400:
            assert response.json()["errors"][0]["code"], response.text


def test_refused_immutable_tag_delete_and_repush(client, dockyard):
    """Attack: move a write-once tag by deleting it first, in every way a delete can be asked for
    (untag, delete by digest, the ACR tag and repository deletes, a purge), then pushing another
    digest under it. Expected: every delete refused, the tag keeps its digest."""
    soft_delete_on(client)
    first, second = make_image("rt-imm-1"), make_image("rt-imm-2")
    digest = push_image(client, REPO, first, "v1")
    policy = client.put(f"/api/v1/repositories/{REPO}/immutability", json={"enabled": True})
    assert policy.status_code == 200, policy.text
    for method, url in (
        ("DELETE", f"/v2/{REPO}/manifests/v1"),
        ("DELETE", f"/v2/{REPO}/manifests/{digest}"),
        ("DELETE", f"/v2/team%2Fapp/manifests/{digest}"),
        ("DELETE", f"/acr/v1/{REPO}/_tags/v1"),
        ("DELETE", f"/acr/v1/{REPO}/_manifests/{digest}"),
        ("DELETE", f"/acr/v1/{REPO}"),
    ):
        oci_error(client.request(method, url), 403, "DENIED")
    started = client.post("/api/v1/purge", json={"filters": [f"{REPO}:.*"], "ago": "0d", "untagged": True})
    assert started.status_code == 202, started.text
    assert dockyard.runtime.run_jobs() == 1
    run = client.get(f"/api/v1/purge/runs/{started.json()['id']}").json()
    assert run["deletedTags"] == run["deletedManifests"] == 0, run
    for blob in second.blobs:
        push_blob(client, REPO, blob.data)
    oci_error(push_manifest(client, REPO, "v1", second.manifest, second.media_type), 403, "DENIED")
    assert client.head(f"/v2/{REPO}/manifests/v1").headers["docker-content-digest"] == digest
    assert client.get(f"/api/v1/deleted/{REPO}/_manifests").json()["manifests"] == []


def test_refused_retention_and_purge_untagged_take_no_locked_manifest(client, dockyard):
    """Attack: leave a delete-locked manifest untagged and let retention, ``purge --untagged-only``
    and GC ``--untagged`` at it. Expected: it survives all three."""
    client.patch("/api/v1/registry/policies/retention", json={"status": "enabled", "days": 0})
    image = make_image("rt-untagged-locked")
    digest = push_image(client, REPO, image, "v1")
    push_image(client, REPO, make_image("rt-other"), "other")
    lock(client, f"team/app/_manifests/{digest}", deleteEnabled=False)
    assert client.delete(f"/v2/{REPO}/manifests/v1").status_code == 202  # untag: now untagged
    retention = dockyard.service("lifecycle").recycle.retention
    retention.run(utcnow() + timedelta(days=1))
    started = client.post("/api/v1/purge", json={"untaggedOnly": True})
    assert started.status_code == 202, started.text
    assert dockyard.runtime.run_jobs() == 1
    gc_collector(dockyard).collect(Options(grace_seconds=HOUR, untagged=True))
    assert client.get(f"/v2/{REPO}/manifests/{digest}").status_code == 200
    for blob in image.blobs:
        assert client.get(f"/v2/{REPO}/blobs/{blob.digest}").content == blob.data


def test_refused_restore_twice_at_once(client, dockyard):
    """Attack: restore the same bin entry from several requests at once. Expected: no 5xx, the
    manifest live once with its tag, the entry gone, a later restore 404."""
    soft_delete_on(client)
    digest = push_image(client, REPO, make_image("rt-twice"), "v1")
    assert client.delete(f"/v2/{REPO}/manifests/{digest}").status_code == 202
    url = f"/api/v1/deleted/{REPO}/_manifests/{digest}/restore"
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: client.post(url, json={}).status_code, range(4)))
    assert 200 in codes, codes
    assert set(codes) <= {200, 404}, codes
    assert client.head(f"/v2/{REPO}/manifests/v1").headers["docker-content-digest"] == digest
    assert client.get(f"/api/v1/deleted/{REPO}/_manifests").json()["manifests"] == []
    oci_error(client.post(url, json={}), 404, "MANIFEST_UNKNOWN")


def test_hole_listing_a_huge_bin_reads_every_payload(client, dockyard):
    """HOLE (closed; the listing is still unpaginated). Attack: fill the bin with large manifests
    (up to 4 MiB each), then have a Reader list it repeatedly: each listing read every payload
    into memory only to drop it. Expected: the listing never selects the payloads."""
    soft_delete_on(client)
    for n in range(3):
        digest = push_image(client, REPO, make_image(f"rt-bin-{n}"), f"v{n}")
        assert client.delete(f"/v2/{REPO}/manifests/{digest}").status_code == 202
    seen: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        seen.append(statement)

    sa.event.listen(dockyard.db.engine, "before_cursor_execute", record)
    try:
        assert len(client.get(f"/api/v1/deleted/{REPO}/_manifests").json()["manifests"]) == 3
        assert len(client.get(f"/api/v1/deleted/{REPO}/_tags").json()["tags"]) == 3
    finally:
        sa.event.remove(dockyard.db.engine, "before_cursor_execute", record)
    reads = [s for s in seen if "recycled_manifests" in s]
    assert reads
    assert not [s for s in reads if "payload" in s], reads


def test_hole_repush_and_delete_again_erases_the_bins_tag_record(client, anonymous):
    """HOLE (closed). Attack: after a Contributor's image was deleted into the bin with its tags, a
    user with only AcrPush and AcrDelete pushes the same manifest by digest (allowed while it is in
    the bin) and deletes it again. The new delete replaced the bin entry with one without tags, so
    the restore no longer brings ``prod`` back. Expected: the entry keeps the tags it had."""
    soft_delete_on(client)
    image = make_image("rt-erase")
    digest = push_image(client, REPO, image, "prod")
    assert client.delete(f"/v2/{REPO}/manifests/{digest}").status_code == 202
    created = client.post("/api/v1/users", json={"name": "eraser"})
    for role in ("AcrPush", "AcrDelete"):
        assigned = client.post("/api/v1/role-assignments", json={"assignee": "eraser", "role": role})
        assert assigned.status_code == 201, assigned.text
    eraser = basic("eraser", created.json()["credentials"][0]["value"])
    pushed = anonymous.put(
        f"/v2/{REPO}/manifests/{digest}",
        content=image.manifest,
        headers={"Content-Type": image.media_type, **eraser},
    )
    assert pushed.status_code == 201, pushed.text
    assert anonymous.delete(f"/v2/{REPO}/manifests/{digest}", headers=eraser).status_code == 202
    [entry] = client.get(f"/api/v1/deleted/{REPO}/_manifests").json()["manifests"]
    assert entry["tags"] == ["prod"]
    restored = client.post(f"/api/v1/deleted/{REPO}/_manifests/{digest}/restore", json={})
    assert restored.json()["restoredTags"] == ["prod"], restored.text


def test_refused_lock_changes_outside_the_tokens_repository(client, anonymous):
    """Attack: a token whose scope map grants ``metadata/write`` on ``team/app`` only unlocks a
    tag and a repository in ``other/app`` (plain, ``%2F``-encoded, through a bearer token for its
    own repository) or sets the other repository's immutability. Expected: 401/403, nothing changed."""
    image = make_image("rt-cross")
    digest = push_image(client, "other/app", image, "v1")
    push_image(client, REPO, make_image("rt-own"), "v1")
    lock(client, "other/app/_tags/v1", writeEnabled=False)
    lock(client, "other%2Fapp", deleteEnabled=False)
    token = scoped_token(client, "meta", ["metadata/read", "metadata/write", "content/read"])
    own_bearer = bearer(access_token(anonymous, token, f"repository:{REPO}:pull,push,delete"))
    unlock = {"writeEnabled": True, "deleteEnabled": True}
    for headers in (token, own_bearer):
        for path in ("other/app/_tags/v1", "other%2Fapp", "other/app", f"other/app/_manifests/{digest}"):
            response = anonymous.patch(f"/acr/v1/{path}", json=unlock, headers=headers)
            assert response.status_code in (401, 403), (path, response.text)
        response = anonymous.put(
            "/api/v1/repositories/other/app/immutability", json={"enabled": False}, headers=headers
        )
        assert response.status_code in (401, 403), response.text
    assert (
        client.get("/acr/v1/other/app/_tags/v1").json()["tag"]["changeableAttributes"]["writeEnabled"]
        is False
    )
    assert client.get("/acr/v1/other/app").json()["changeableAttributes"]["deleteEnabled"] is False
    assert (
        anonymous.patch(f"/acr/v1/{REPO}/_tags/v1", json={"listEnabled": False}, headers=token).status_code
        == 200
    )
