"""Red-team attacks on purge (issue #9's ``acr purge``): filters that time out, compile into
gigabytes or reach repositories the caller cannot delete in, bad ``ago`` and cron values, other
callers' runs, full concurrency, and runs kept forever. Moved out of test_redteam_lifecycle.py
(the same conventions: ``test_hole_…`` attacks worked once, ``test_refused_…`` ones never did).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from dockyard.db import utcnow
from dockyard.lifecycle import purge_rules
from dockyard.lifecycle.models import purge_runs
from tests.api.test_redteam_lifecycle import REPO, oci_error
from tests.support.auth import basic, create_user
from tests.support.images import make_image
from tests.support.registry import error_codes, push_image, push_manifest


def test_hole_purge_repository_regex_timeout_is_a_500(client, monkeypatch):
    """HOLE (closed). Attack: ``POST /api/v1/purge`` with a catastrophically backtracking repository
    regex against a repository name built for it. The match times out (the ``regex`` module's
    timeout, shortened here) and the TimeoutError escaped the request: 500. Expected: 400 naming
    the filter, nothing queued."""
    monkeypatch.setattr(purge_rules, "MATCH_TIMEOUT_SECONDS", 0.05)
    push_image(client, "a" * 40 + "/x", make_image("redos"), "v1")
    response = client.post("/api/v1/purge", json={"filters": ["(a|aa)+(a|aa)+b/?x*:.*"], "ago": "0d"})
    oci_error(response, 400, "INVALID_REQUEST")
    assert "timed out" in response.json()["errors"][0]["message"]
    assert client.get("/api/v1/purge/runs").json()["runs"] == []


def test_hole_purge_tag_regex_timeout_fails_the_run_cleanly(client, dockyard, monkeypatch):
    """Attack: a tag regex that backtracks catastrophically on a tag the attacker pushed. The job
    must end as a failed run with a readable error (not hang the runtime, not delete anything)."""
    monkeypatch.setattr(purge_rules, "MATCH_TIMEOUT_SECONDS", 0.05)
    push_image(client, REPO, make_image("redos-tag"), "a" * 60)
    started = client.post("/api/v1/purge", json={"filters": [f"{REPO}:^(a|aa)+(a|aa)+b$"], "ago": "0d"})
    assert started.status_code == 202, started.text
    assert dockyard.runtime.run_jobs() == 1
    run = client.get(f"/api/v1/purge/runs/{started.json()['id']}").json()
    assert run["status"] == "failed"
    assert "timed out" in run["error"] or "Timeout" in run["error"]
    assert client.get(f"/v2/{REPO}/tags/list").json()["tags"] == ["a" * 60]


def test_hole_purge_ago_with_thousands_of_digits_is_a_500(client):
    """HOLE (closed). Attack: ``--ago`` of 5,000 digits then ``d``. ``int()`` refuses strings over
    4,300 digits with a ValueError the parser did not expect: 500. Expected: 400 (or the cap)."""
    push_image(client, REPO, make_image("rt-ago"), "v1")
    for ago in ("9" * 5000 + "d", "1d" + "9" * 5000 + "h", "9" * 400 + "h"):
        response = client.post("/api/v1/purge", json={"filters": [f"{REPO}:.*"], "ago": ago, "dryRun": True})
        assert response.status_code in (202, 400), response.text
        if response.status_code == 400:
            assert error_codes(response) == ["INVALID_REQUEST"]


@pytest.mark.parametrize("cron", ["0 0 31 2 *", "0 0 30 2 *", "*/0 * * * *", "60 * * * *", "0 0 * * 8"])
def test_hole_purge_schedule_cron_that_never_fires(client, dockyard, cron):
    """HOLE (closed). Attack: a schedule whose cron names no real time (February 31st) or is
    malformed. croniter's ``is_valid`` accepts February 31st; computing its next time then raises
    (500 on create, or every tick fails). Expected: 400, no schedule stored."""
    body = {"name": "never", "schedule": cron, "filters": [f"{REPO}:.*"], "ago": "1d"}
    oci_error(client.post("/api/v1/purge/schedules", json=body), 400, "INVALID_REQUEST")
    assert client.get("/api/v1/purge/schedules").json()["schedules"] == []


def test_refused_reading_another_callers_purge_run(client, anonymous, dockyard):
    """Attack: an AcrDelete user (no Reader) reads a run another AcrDelete user started, by id,
    and lists runs. Expected: 403 for both; its own run is readable."""
    push_image(client, REPO, make_image("rt-run"), "v1")
    alice = create_user(client, "alice", "AcrDelete")
    mallory = create_user(client, "mallory", "AcrDelete")
    started = anonymous.post(
        "/api/v1/purge", json={"filters": [f"{REPO}:.*"], "ago": "0d", "dryRun": True}, headers=alice
    )
    assert started.status_code == 202, started.text
    run = f"/api/v1/purge/runs/{started.json()['id']}"
    assert anonymous.get(run, headers=alice).status_code == 200
    oci_error(anonymous.get(run, headers=mallory), 403, "DENIED")
    oci_error(anonymous.get("/api/v1/purge/runs", headers=mallory), 403, "DENIED")
    oci_error(anonymous.get("/api/v1/purge/runs/999", headers=mallory), 403, "DENIED")


def test_refused_purge_filter_reaching_repositories_the_caller_cannot_delete_in(client, anonymous, dockyard):
    """Attack: an AcrDelete user scoped to ``team/*`` purges with filters that also reach
    ``secret/db``: an alternation that escapes the anchors, a case-insensitive flag group, an
    untagged-only run without filter. Expected: ``secret/db`` is never purged; as the user may not
    list the catalog, it is left out unnamed (the run reaches ``team/app`` at most)."""
    for name in (REPO, "secret/db"):
        push_image(client, name, make_image(f"rt-{name}"), "v1")
    created = client.post("/api/v1/users", json={"name": "teamdel"})
    assert created.status_code == 201
    scoped = client.post(
        "/api/v1/role-assignments",
        json={"assignee": "teamdel", "role": "AcrDelete", "scope": "repository:team/*"},
    )
    assert scoped.status_code == 201, scoped.text
    teamdel = basic("teamdel", created.json()["credentials"][0]["value"])
    for body in (
        {"filters": ["team/app|secret/db:.*"], "ago": "0d"},
        {"filters": ["team/.*|.*:.*"], "ago": "0d"},
        {"filters": ["(?i)SECRET/DB:.*"], "ago": "0d"},
        {"filters": ["team/app:.*", "s.*:.*"], "ago": "0d"},
        {"untaggedOnly": True},
    ):
        response = anonymous.post("/api/v1/purge", json={**body, "dryRun": True}, headers=teamdel)
        assert response.status_code == 202, response.text
        assert response.json()["repositories"] in ([], [REPO]), body
        assert "secret/db" not in response.text, body
    assert dockyard.runtime.run_jobs(slots=10) == 5  # the dry runs
    assert client.get("/v2/secret/db/tags/list").json()["tags"] == ["v1"]
    allowed = anonymous.post("/api/v1/purge", json={"filters": ["team/.*:.*"], "ago": "0d"}, headers=teamdel)
    assert allowed.status_code == 202, allowed.text
    assert dockyard.runtime.run_jobs() == 1
    assert client.get("/v2/secret/db/tags/list").json()["tags"] == ["v1"]


def test_refused_purge_at_full_concurrency_deletes_every_tag(client, dockyard):
    """Attack: a purge with the highest concurrency over many tags (more threads than database
    connections). Expected: every tag deleted or reported, none skipped for a pool or lock error."""
    image = make_image("rt-many")
    push_image(client, REPO, image, "keep")
    for n in range(60):
        assert push_manifest(client, REPO, f"t{n}", image.manifest, image.media_type).status_code == 201
    started = client.post("/api/v1/purge", json={"filters": [f"{REPO}:^t"], "ago": "0d", "concurrency": 32})
    assert started.status_code == 202, started.text
    assert dockyard.runtime.run_jobs() == 1
    run = client.get(f"/api/v1/purge/runs/{started.json()['id']}").json()
    assert run["status"] == "succeeded", run
    assert (run["deletedTags"], run["skipped"]) == (60, 0), [
        i for i in run["items"] if i["action"] != "deleted"
    ]
    assert client.get(f"/v2/{REPO}/tags/list").json()["tags"] == ["keep"]


def test_hole_purge_filter_regex_that_compiles_into_gigabytes(client):
    """HOLE (closed). Attack: one AcrDelete user posts a 17-character filter, ``(a{1000}){1000}``.
    The ``regex`` module expands counted repeats when it compiles, with no timeout: ~300 MiB for
    this one (gigabytes with one more level or a few such filters), in the request's thread: the
    registry runs out of memory. Expected: refused before compiling, as RE2 (acr-cli) refuses
    counts over 1000 and programs too large."""
    deleter = create_user(client, "regex-bomber", "AcrDelete")
    push_image(client, REPO, make_image("rt-bomb"), "v1")
    for filters in (
        [f"{REPO}:(a{{1000}}){{1000}}"],
        [f"{REPO}:a{{1001}}"],
        ["(x{1000}){100}:.*"],
        [f"{REPO}:a{{1000}}"] * 30,  # each fine, too large together (they are joined into one)
    ):
        response = client.post("/api/v1/purge", json={"filters": filters, "ago": "0d"}, headers=deleter)
        oci_error(response, 400, "INVALID_REQUEST")
        body = {"name": "bomb", "schedule": "0 1 * * *", "filters": filters, "ago": "0d"}
        oci_error(client.post("/api/v1/purge/schedules", json=body), 400, "INVALID_REQUEST")
    fine = {
        "filters": [f"{REPO}:^v[0-9]{{1,3}}$", f"{REPO}:[[:alpha:]]{{2}}", f"{REPO}:a{{1000}}"],
        "ago": "0d",
    }
    assert client.post("/api/v1/purge", json={**fine, "dryRun": True}, headers=deleter).status_code == 202


def test_hole_purge_runs_are_kept_forever(client, dockyard):
    """HOLE (closed). Attack: any AcrDelete user (or a ``* * * * *`` schedule) starts purge after
    purge; every run is a ``purge_runs`` row with up to 10,000 items and none was ever removed, so
    the database grew without bound. Expected: finished runs older than 30 days are forgotten by
    the schedule tick; recent ones stay."""
    push_image(client, REPO, make_image("rt-runs"), "v1")
    ids = [
        client.post("/api/v1/purge", json={"filters": [f"{REPO}:.*"], "ago": "0d", "dryRun": True}).json()[
            "id"
        ]
        for _ in range(2)
    ]
    assert dockyard.runtime.run_jobs() == 2
    with dockyard.db.write() as conn:
        conn.execute(
            purge_runs.update()
            .where(purge_runs.c.id == ids[0])
            .values(finished_at=utcnow() - timedelta(days=31))
        )
    dockyard.service("lifecycle").purge.tick()
    oci_error(client.get(f"/api/v1/purge/runs/{ids[0]}"), 404, "NAME_UNKNOWN")
    assert client.get(f"/api/v1/purge/runs/{ids[1]}").status_code == 200
