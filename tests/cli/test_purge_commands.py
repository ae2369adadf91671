"""`dockyard purge …` against a real `dockyard serve`: the run happens on the server's job runtime."""

from __future__ import annotations

import re

import pytest

from dockyard.cli.purge_commands import report_lines
from tests.cli.conftest import Cli
from tests.e2e.support import DockyardServer, get_manifest, push_image
from tests.support.images import make_image

pytestmark = pytest.mark.e2e


def tags_of(registry: DockyardServer, repository: str) -> list[str]:
    with registry.http() as http:
        return sorted(http.get(f"/v2/{repository}/tags/list").json()["tags"] or [])


def test_purge_keeps_the_newest_and_prints_like_acr_purge(admin: Cli, registry: DockyardServer) -> None:
    repo = "cli-purge/app"
    with registry.http() as http:
        digests = {
            t: push_image(http, repo, t, make_image(f"cli-purge-{t}")) for t in ("v1", "v2", "v3", "v4")
        }
    dry = admin.ok("purge", "--filter", f"{repo}:^v", "--ago", "0d", "--keep", "2", "--dry-run").stdout
    assert dry.startswith("DRY RUN: The following output shows what WOULD be deleted")
    assert f"Would delete tags for repository: {repo}" in dry
    assert "Number of tags to be deleted: 2" in dry
    assert "Number of manifests to be deleted: 0" in dry
    assert tags_of(registry, repo) == ["v1", "v2", "v3", "v4"]

    out = admin.ok("purge", "--filter", f"{repo}:^v", "--ago", "0d", "--keep", "2").stdout
    host = registry.url.split("://", 1)[1]
    for tag in ("v1", "v2"):
        assert f"Deleted {host}/{repo}:{tag} ({digests[tag]})" in out
    assert "Number of deleted tags: 2\nNumber of deleted manifests: 0" in out
    assert "Space freed: 0 bytes" in out
    assert tags_of(registry, repo) == ["v3", "v4"]

    untagged = admin.ok("purge", "--filter", f"{repo}:^$", "--ago", "0d", "--untagged").stdout
    assert f"Deleting manifests for repository: {repo}" in untagged
    assert "Number of deleted manifests: 2" in untagged
    freed = int(re.search(r"Space freed: (\d+) bytes", untagged).group(1))
    assert freed > 0
    with registry.http() as http:
        assert get_manifest(http, repo, digests["v1"]).status_code == 404
        assert get_manifest(http, repo, "v4").status_code == 200

    runs = admin.json("purge", "list-runs", "--top", "3")
    assert [r["deletedManifests"] for r in runs][:1] == [2]
    shown = admin.json("purge", "show-run", "--id", str(runs[0]["id"]))
    assert {i["action"] for i in shown["items"]} == {"deleted"}
    assert shown["freedBytes"] == freed


def test_purge_refuses_bad_input_with_the_reason(admin: Cli) -> None:
    assert "--filter is required" in admin.fails("purge", "--ago", "1d", code=2).output
    assert "invalid --ago" in admin.fails("purge", "--filter", "x:.*", "--ago", "3h2d").output
    assert "unable to correctly parse" in admin.fails("purge", "--filter", "x", "--ago", "1d").output


def test_purge_schedules(admin: Cli) -> None:
    created = admin.json(
        "purge", "schedule", "create", "--name", "cli-weekly", "--schedule", "0 1 * * Sun",
        "--filter", "cli-sched/.*:.*", "--ago", "30d", "--keep", "5", "--untagged",
    )  # fmt: skip
    assert created["schedule"] == "0 1 * * Sun"
    assert created["untagged"] is True
    assert created["nextRunTime"].endswith("T01:00:00.000000Z")
    assert [s["name"] for s in admin.json("purge", "schedule", "list")].count("cli-weekly") == 1
    assert admin.json("purge", "schedule", "show", "--name", "cli-weekly")["keep"] == 5
    bad = ("--name", "bad", "--schedule", "0 1 * *", "--filter", "a:b", "--ago", "1d")
    assert "invalid schedule" in admin.fails("purge", "schedule", "create", *bad).output
    admin.ok("purge", "schedule", "delete", "--name", "cli-weekly", "--yes")
    assert admin.fails("purge", "schedule", "show", "--name", "cli-weekly").exit_code == 1


def test_report_lines_for_skips_and_missing_repositories() -> None:
    run = {
        "dryRun": False,
        "deletedTags": 0,
        "deletedManifests": 0,
        "skipped": 1,
        "freedBytes": 0,
        "items": [
            {"kind": "repository", "repository": "gone", "action": "not-found"},
            {"kind": "tag", "repository": "a", "action": "skipped", "tag": "v1", "digest": "sha256:x",
             "reason": "the tag is locked"},
        ],
    }  # fmt: skip
    lines = report_lines(run, "reg.example")
    assert lines[:3] == [
        "gone repository not found",
        "Deleting tags for repository: a",
        "Skipped reg.example/a:v1: the tag is locked",
    ]
    assert "Number of skipped tags and manifests: 1" in lines
