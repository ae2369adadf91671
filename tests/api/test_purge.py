"""`dockyard purge` through /api/v1/purge: selection as acr purge, dry runs, untagged, schedules, rights."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from dockyard.lifecycle.services.purge import TICK_SCHEDULE, PurgeService
from dockyard.registry.models import manifests, repositories, tags
from tests.support.auth import assign_role, basic, create_user
from tests.support.images import OCI_INDEX, make_artifact, make_image, make_index
from tests.support.registry import error_codes, push_image, push_manifest

DAY = timedelta(days=1)


def purge_service(dockyard) -> PurgeService:
    return dockyard.service("lifecycle").purge


def age_tags(dockyard, repository: str, ages: dict[str, timedelta]) -> None:
    """Set each tag's last update, and its manifest's push time, to ``now - age`` (as if pushed then)."""
    now = datetime.now(UTC)

    def work(conn) -> None:
        repo_id = conn.execute(sa.select(repositories.c.id).where(repositories.c.name == repository)).scalar()
        for name, age in ages.items():
            manifest_id = conn.execute(
                sa.select(tags.c.manifest_id).where(tags.c.repository_id == repo_id, tags.c.name == name)
            ).scalar_one()
            conn.execute(manifests.update().where(manifests.c.id == manifest_id).values(created_at=now - age))
            conn.execute(
                tags.update()
                .where(tags.c.repository_id == repo_id, tags.c.name == name)
                .values(updated_at=now - age)
            )

    dockyard.db.run_write(work)


def run_purge(client, dockyard, **body) -> dict:
    """POST a purge, run the job runtime's due jobs here, return the finished run with its items."""
    started = client.post("/api/v1/purge", json=body)
    assert started.status_code == 202, started.text
    assert dockyard.runtime.run_jobs() == 1
    run = client.get(f"/api/v1/purge/runs/{started.json()['id']}")
    assert run.status_code == 200, run.text
    assert run.json()["status"] == "succeeded", run.json()
    return run.json()


def tag_names(client, repository: str) -> list[str]:
    response = client.get(f"/v2/{repository}/tags/list")
    if response.status_code == 404:
        return []
    return sorted(response.json()["tags"] or [])


def push_tags(client, repository: str, names: list[str]) -> dict[str, str]:
    return {name: push_image(client, repository, make_image(f"{repository}-{name}"), name) for name in names}


def test_ago_and_keep_delete_the_old_tags_but_keep_the_newest_matching(client, dockyard):
    push_tags(client, "app", ["v1", "v2", "v3", "v4", "latest"])
    age_tags(
        dockyard, "app", {"v1": 10 * DAY, "v2": 9 * DAY, "v3": 8 * DAY, "v4": 1 * DAY, "latest": 20 * DAY}
    )
    run = run_purge(client, dockyard, filters=["app:^v.*"], ago="5d", keep=1)
    # v1-v3 are older than 5 days and match; the newest of them (v3) is kept; latest does not match
    assert tag_names(client, "app") == ["latest", "v3", "v4"]
    assert run["deletedTags"] == 2
    assert run["deletedManifests"] == 0
    deleted = sorted(i["tag"] for i in run["items"] if i["action"] == "deleted")
    assert deleted == ["v1", "v2"]
    assert all(i["digest"].startswith("sha256:") for i in run["items"])
    assert run["freedBytes"] == 0  # untagged manifests still hold their blobs


def test_a_dry_run_deletes_nothing_and_reports_what_it_would(client, dockyard):
    digests = push_tags(client, "app", ["a", "b"])
    age_tags(dockyard, "app", {"a": 3 * DAY, "b": 3 * DAY})
    run = run_purge(client, dockyard, filters=["app:.*"], ago="1d", untagged=True, dryRun=True)
    assert tag_names(client, "app") == ["a", "b"]
    assert run["dryRun"]
    assert run["deletedTags"] == 2
    assert run["deletedManifests"] == 2  # the manifests the tag deletions would leave untagged
    assert {i["action"] for i in run["items"]} == {"would-delete"}
    assert {i["digest"] for i in run["items"] if i["kind"] == "manifest"} == set(digests.values())
    assert run["freedBytes"] > 0
    for digest in digests.values():
        assert client.get(f"/v2/app/manifests/{digest}").status_code == 200


def test_untagged_deletes_the_left_over_manifests_and_reports_the_freed_bytes(client, dockyard):
    image = make_image("old", layer_size=4096)
    push_image(client, "app", image, "v1")
    push_image(client, "app", make_image("new"), "v1")  # v1 moves on: the old image is untagged
    dry = run_purge(client, dockyard, filters=["app:.*"], ago="0d", untagged=True, dryRun=True)
    run = run_purge(client, dockyard, filters=["app:.*"], ago="0d", untagged=True)
    assert run["deletedManifests"] >= 1
    assert client.get(f"/v2/app/manifests/{image.digest}").status_code == 404
    assert run["freedBytes"] == dry["freedBytes"] >= sum(len(b.data) for b in image.blobs)


def test_ago_protects_young_untagged_manifests(client, dockyard):
    image = make_image("young")
    push_image(client, "app", image)
    run = run_purge(client, dockyard, untaggedOnly=True, ago="1d")
    assert run["deletedManifests"] == 0
    assert client.get(f"/v2/app/manifests/{image.digest}").status_code == 200


def test_untagged_only_touches_no_tag(client, dockyard):
    push_tags(client, "app", ["v1"])
    loose = make_image("loose")
    push_image(client, "app", loose)
    run = run_purge(client, dockyard, untaggedOnly=True)
    assert tag_names(client, "app") == ["v1"]
    assert [i["digest"] for i in run["items"] if i["action"] == "deleted"] == [loose.digest]
    assert run["deletedTags"] == 0


def test_repository_regex_is_anchored_and_tag_regex_is_not(client, dockyard):
    push_tags(client, "team/app", ["v1", "v10", "prod-v1"])
    push_tags(client, "team/app-old", ["v1"])
    age_tags(dockyard, "team/app", {"v1": 2 * DAY, "v10": 2 * DAY, "prod-v1": 2 * DAY})
    age_tags(dockyard, "team/app-old", {"v1": 2 * DAY})
    run = run_purge(client, dockyard, filters=["team/a.p:v1"], ago="1d")
    # ^team/a.p$ matches team/app only; the tag regex v1 is a search: v1, v10 and prod-v1 all match
    assert tag_names(client, "team/app") == []
    assert tag_names(client, "team/app-old") == ["v1"]
    assert run["deletedTags"] == 3


def test_several_filters_on_one_repository_are_joined(client, dockyard):
    push_tags(client, "app", ["dev-1", "rc-1", "prod-1"])
    age_tags(dockyard, "app", {"dev-1": 2 * DAY, "rc-1": 2 * DAY, "prod-1": 2 * DAY})
    run_purge(client, dockyard, filters=["app:^dev-", "app:^rc-"], ago="1d")
    assert tag_names(client, "app") == ["prod-1"]


def test_index_children_and_referrers_of_kept_manifests_are_protected(client, dockyard):
    amd, arm = make_image("amd", architecture="amd64"), make_image("arm", architecture="arm64")
    push_image(client, "app", amd)
    push_image(client, "app", arm)
    index = make_index([amd, arm])
    assert push_manifest(client, "app", "multi", index, OCI_INDEX).status_code == 201
    subject = make_image("subject")
    push_image(client, "app", subject, "signed")
    signature = make_artifact("application/vnd.example.signature", b"sig", subject=subject.descriptor())
    push_image(client, "app", signature)  # untagged referrer of a tagged subject
    orphan_parent = make_image("gone")
    push_image(client, "app", orphan_parent)
    sbom = make_artifact("application/vnd.example.sbom", b"sbom", subject=orphan_parent.descriptor())
    push_image(client, "app", sbom)  # untagged referrer of an untagged subject: both go
    run = run_purge(client, dockyard, untaggedOnly=True)
    gone = [i["digest"] for i in run["items"] if i["action"] == "deleted"]
    assert sorted(gone) == sorted([orphan_parent.digest, sbom.digest])
    assert gone.index(sbom.digest) < gone.index(orphan_parent.digest)  # the referrer first
    for kept in (amd, arm, subject, signature):
        assert client.get(f"/v2/app/manifests/{kept.digest}").status_code == 200


def test_an_untagged_index_goes_before_its_children(client, dockyard):
    amd, arm = make_image("amd2", architecture="amd64"), make_image("arm2", architecture="arm64")
    push_image(client, "app", amd)
    push_image(client, "app", arm)
    index = make_index([amd, arm])
    assert push_manifest(client, "app", "multi", index, OCI_INDEX).status_code == 201
    assert client.delete("/v2/app/manifests/multi").status_code == 202
    run = run_purge(client, dockyard, untaggedOnly=True)
    gone = [i["digest"] for i in run["items"] if i["action"] == "deleted"]
    assert len(gone) == 3
    assert run["skipped"] == 0
    assert gone[0] not in (amd.digest, arm.digest)  # the index first, or its children's delete is refused


def test_a_refused_delete_is_reported_as_skipped(client, dockyard, monkeypatch):
    push_tags(client, "app", ["v1", "v2"])
    age_tags(dockyard, "app", {"v1": 2 * DAY, "v2": 2 * DAY})
    manifests = dockyard.registry.manifests
    real_delete = manifests.delete

    def locked(repository, reference, origin=None):
        if reference == "v1":
            from dockyard.oci.errors import ErrorCode, RegistryError

            raise RegistryError(ErrorCode.DENIED, "the tag is locked (deleteEnabled is false)", status=405)
        return real_delete(repository, reference, origin)

    monkeypatch.setattr(manifests, "delete", locked)
    run = run_purge(client, dockyard, filters=["app:.*"], ago="1d")
    assert tag_names(client, "app") == ["v1"]
    assert run["deletedTags"] == 1
    assert run["skipped"] == 1
    (skipped,) = [i for i in run["items"] if i["action"] == "skipped"]
    assert skipped["tag"] == "v1"
    assert "locked" in skipped["reason"]


def test_a_literal_repository_that_does_not_exist_is_reported(client, dockyard):
    run = run_purge(client, dockyard, filters=["nothing-here:.*"], ago="1d")
    assert run["items"] == [{"kind": "repository", "repository": "nothing-here", "action": "not-found"}]


def test_deletes_fire_events(client, dockyard):
    push_tags(client, "app", ["v1"])
    age_tags(dockyard, "app", {"v1": 2 * DAY})
    run_purge(client, dockyard, filters=["app:.*"], ago="1d")
    events = client.get("/api/v1/events", params={"repository": "app", "action": "untag"}).json()["value"]
    assert [(e["tag"], e["userAgent"]) for e in events] == [("v1", "dockyard-purge")]
    assert events[0]["actor"] == "dockyard"  # who asked for the purge


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"filters": ["app:.*"]}, "--ago is required"),
        ({"ago": "1d"}, "--filter is required"),
        ({"filters": ["app"], "ago": "1d"}, "parse filter"),
        ({"filters": ["app:("], "ago": "1d"}, "invalid regular expression"),
        ({"filters": ["app:.*"], "ago": "3h2d"}, "invalid --ago"),
        ({"filters": ["app:.*"], "ago": "1d", "keep": -1}, "--keep"),
        ({"filters": ["app:.*"], "ago": "1d", "concurrency": 0}, "concurrency"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(client, dockyard, body, message):
    response = client.post("/api/v1/purge", json=body)
    assert response.status_code == 400, response.text
    assert error_codes(response) == ["INVALID_REQUEST"]
    assert message in response.json()["errors"][0]["message"]
    assert dockyard.runtime.run_jobs() == 0


def test_purging_needs_delete_on_every_matched_repository(client, anonymous, dockyard):
    push_tags(client, "mine", ["v1"])
    push_tags(client, "theirs", ["v1"])
    name = "deleter"
    headers = create_user(client, name)
    assign_role(client, name, "AcrDelete", "repository:mine")
    # it may not list the catalog: what it may not delete from is left out, unnamed (no name oracle)
    for filters in ([".*:.*"], ["^theirs$:.*"], ["the.*:.*"]):
        narrowed = anonymous.post(
            "/api/v1/purge", json={"filters": filters, "ago": "0d", "dryRun": True}, headers=headers
        )
        assert narrowed.status_code == 202, narrowed.text
        assert "theirs" not in narrowed.text
        assert narrowed.json()["repositories"] == (["mine"] if filters == [".*:.*"] else [])
    assert dockyard.runtime.run_jobs() == 3  # the dry runs
    reader = create_user(client, "catalog-reader")  # may list the catalog: told what it may not touch
    for role, scope in (("Reader", "registry"), ("AcrDelete", "repository:mine")):
        assign_role(client, "catalog-reader", role, scope)
    refused = anonymous.post("/api/v1/purge", json={"filters": [".*:.*"], "ago": "0d"}, headers=reader)
    assert refused.status_code == 403
    assert refused.json()["errors"][0]["detail"]["repositories"] == ["theirs"]
    assert anonymous.post("/api/v1/purge", json={"filters": ["mine:.*"], "ago": "0d"}).status_code == 401
    allowed = anonymous.post("/api/v1/purge", json={"filters": ["mine:.*"], "ago": "0d"}, headers=headers)
    assert allowed.status_code == 202, allowed.text
    assert allowed.json()["repositories"] == ["mine"]
    assert dockyard.runtime.run_jobs() == 1
    run_path = f"/api/v1/purge/runs/{allowed.json()['id']}"
    assert anonymous.get(run_path, headers=headers).json()["status"] == "succeeded"  # its requester
    other = create_user(client, "stranger")
    assert anonymous.get(run_path, headers=other).status_code == 403
    assert anonymous.get("/api/v1/purge/runs", headers=headers).status_code == 403
    assert anonymous.post(
        "/api/v1/purge/schedules",
        json={"name": "n", "schedule": "* * * * *", "filters": ["mine:.*"], "ago": "1d"},
        headers=headers,
    ).status_code == 403  # fmt: skip
    assert tag_names(client, "theirs") == ["v1"]
    assert tag_names(client, "mine") == []


def test_a_schedule_fires_once_per_due_time_via_the_runtime_tick(client, dockyard):
    push_tags(client, "app", ["v1", "v2"])
    age_tags(dockyard, "app", {"v1": 3 * DAY, "v2": 3 * DAY})
    created = client.post(
        "/api/v1/purge/schedules",
        json={"name": "nightly", "schedule": "0 1 * * *", "filters": ["app:.*"], "ago": "1d", "keep": 1},
    )
    assert created.status_code == 201, created.text
    next_run = datetime.fromisoformat(created.json()["nextRunTime"].replace("Z", "+00:00"))
    assert (next_run.hour, next_run.minute) == (1, 0)
    assert (
        client.post("/api/v1/purge/schedules", json={**created.json(), "schedule": "0 1 * * *"}).status_code
        == 409
    )
    assert TICK_SCHEDULE in [s.name for s in dockyard.runtime.schedules]
    purge = purge_service(dockyard)
    assert purge.tick(next_run - timedelta(seconds=1)) == []
    (run_id,) = purge.tick(next_run)
    assert purge.tick(next_run) == []  # claimed once
    assert dockyard.runtime.run_jobs() == 1
    assert tag_names(client, "app") == ["v1"]  # same age: the tie goes by name, v1 first, kept
    runs = client.get("/api/v1/purge/runs", params={"schedule": "nightly"}).json()["runs"]
    assert [r["id"] for r in runs] == [run_id]
    assert runs[0]["deletedTags"] == 1
    shown = client.get("/api/v1/purge/schedules/nightly").json()
    assert shown["lastRunId"] == run_id
    assert datetime.fromisoformat(shown["nextRunTime"].replace("Z", "+00:00")) == next_run + DAY
    assert client.delete("/api/v1/purge/schedules/nightly").status_code == 204
    assert client.get("/api/v1/purge/schedules/nightly").status_code == 404
    assert client.get("/api/v1/purge/schedules").json()["schedules"] == []


def test_a_schedule_needs_a_valid_cron(client):
    body = {"name": "x", "filters": ["app:.*"], "ago": "1d"}
    for cron in ("* * * *", "61 * * * *", "0 0 1 * * *", "every day"):
        response = client.post("/api/v1/purge/schedules", json={**body, "schedule": cron})
        assert response.status_code == 400, (cron, response.text)


def test_a_manager_with_credentials_of_a_reader_sees_runs(client, dockyard):
    reader = create_user(client, "auditor", "Reader")
    run_id = client.post("/api/v1/purge", json={"untaggedOnly": True}).json()["id"]
    assert client.get("/api/v1/purge/runs", headers=reader).json()["runs"][0]["id"] == run_id
    assert client.get(f"/api/v1/purge/runs/{run_id}", headers=reader).status_code == 200
    assert client.get("/api/v1/purge/runs/abc").status_code == 404


def test_a_tag_already_gone_counts_as_deleted_as_acr_purge_counts_it(client, dockyard, monkeypatch):
    push_tags(client, "app", ["v1"])
    age_tags(dockyard, "app", {"v1": 2 * DAY})
    manifests = dockyard.registry.manifests
    real_delete = manifests.delete

    def raced(repository, reference, origin=None):
        real_delete(repository, reference, origin)  # someone else deleted it first
        real_delete(repository, reference, origin)

    monkeypatch.setattr(manifests, "delete", raced)
    run = run_purge(client, dockyard, filters=["app:.*"], ago="1d")
    assert run["deletedTags"] == 1
    assert [i["action"] for i in run["items"]] == ["not-found"]


def test_repository_scoped_tokens_cannot_purge_even_with_delete(client, anonymous):
    created = client.post("/api/v1/tokens", json={"name": "ci", "scopeMap": "_repositories_admin"})
    assert created.status_code == 201, created.text
    token = basic("ci", created.json()["credentials"][0]["value"])
    refused = anonymous.post("/api/v1/purge", json={"untaggedOnly": True}, headers=token)
    assert refused.status_code == 403
    assert "repository-scoped token" in refused.json()["errors"][0]["message"]


def test_a_write_locked_tag_is_never_selected_nor_counted_for_keep(client, dockyard):
    """acr purge skips tags with writeEnabled=false: such a tag stays and does not take a --keep place."""
    push_tags(client, "app", ["v1", "v2", "v3"])
    age_tags(dockyard, "app", {"v1": 3 * DAY, "v2": 2 * DAY, "v3": 1 * DAY + timedelta(hours=1)})
    locked = client.patch("/acr/v1/app/_tags/v3", json={"writeEnabled": False})
    assert locked.status_code == 200, locked.text
    run = run_purge(client, dockyard, filters=["app:.*"], ago="1d", keep=1)
    assert tag_names(client, "app") == ["v2", "v3"]  # v3 locked; v2 the one kept of v1, v2
    assert run["deletedTags"] == 1


def test_a_registry_holds_a_bounded_number_of_schedules(client, monkeypatch):
    """A Contributor cannot fill the database with every-minute schedules."""
    monkeypatch.setattr("dockyard.lifecycle.services.purge.MAX_SCHEDULES", 3)
    body = {"schedule": "* * * * *", "filters": ["app:.*"], "ago": "1d"}
    for name in ("a", "b", "c"):
        assert client.post("/api/v1/purge/schedules", json={**body, "name": name}).status_code == 201
    refused = client.post("/api/v1/purge/schedules", json={**body, "name": "d"})
    assert refused.status_code == 409
    assert "at most 3 purge schedules" in refused.json()["errors"][0]["message"]
    assert client.delete("/api/v1/purge/schedules/a").status_code == 204
    assert client.post("/api/v1/purge/schedules", json={**body, "name": "d"}).status_code == 201


def test_a_callers_filters_never_run_on_names_it_may_not_see(client, anonymous, dockyard, monkeypatch):
    """Red team (helper-58): a slow regex timed out "on 'secret/…'", naming a repository the caller
    could not read, and its time answered whether such a name existed. A caller that may not list
    the catalog has its regexes matched only against the repositories it may delete from."""
    from dockyard.lifecycle import purge_rules

    push_tags(client, "mine/app", ["v1"])
    push_tags(client, "secret/payroll", ["v1"])
    headers = create_user(client, "matcher")
    assign_role(client, "matcher", "AcrDelete", "repository:mine/*")
    asked: list[str] = []
    search = purge_rules._search

    def recording(pattern, text, source):
        asked.append(text)
        return search(pattern, text, source)

    monkeypatch.setattr(purge_rules, "_search", recording)
    started = anonymous.post(
        "/api/v1/purge", json={"filters": [".*:.*"], "ago": "0d", "dryRun": True}, headers=headers
    )
    assert started.status_code == 202, started.text
    assert started.json()["repositories"] == ["mine/app"]
    assert "secret/payroll" not in asked
    asked.clear()
    assert (
        client.post("/api/v1/purge", json={"filters": [".*:.*"], "ago": "0d", "dryRun": True}).status_code
        == 202
    )
    assert "secret/payroll" in asked  # the admin may list the catalog: every name is matched


def test_a_run_deletes_only_where_its_requester_may_still_delete(client, anonymous, dockyard):
    """Red team (helper-58): a queued purge deleted after its requester lost the right (or was
    deleted). The run asks again when it runs: a revoked role leaves those repositories out; a
    deleted identity fails the run."""
    push_tags(client, "mine", ["v1"])
    headers = create_user(client, "revoked")
    assigned = assign_role(client, "revoked", "AcrDelete", "repository:mine")
    started = anonymous.post("/api/v1/purge", json={"filters": ["mine:.*"], "ago": "0d"}, headers=headers)
    assert started.status_code == 202, started.text
    assert client.delete(f"/api/v1/role-assignments/{assigned['id']}").status_code in (200, 204)
    assert dockyard.runtime.run_jobs() == 1
    run = client.get(f"/api/v1/purge/runs/{started.json()['id']}").json()
    assert (run["status"], run["deletedTags"]) == ("succeeded", 0)
    assert tag_names(client, "mine") == ["v1"]

    assign_role(client, "revoked", "AcrDelete", "repository:mine")
    started = anonymous.post("/api/v1/purge", json={"filters": ["mine:.*"], "ago": "0d"}, headers=headers)
    assert started.status_code == 202, started.text
    assert client.delete("/api/v1/users/revoked").status_code in (200, 204)
    assert dockyard.runtime.run_jobs() == 1
    run = client.get(f"/api/v1/purge/runs/{started.json()['id']}").json()
    assert run["status"] == "failed"
    assert "no longer exists" in run["error"]
    assert tag_names(client, "mine") == ["v1"]
