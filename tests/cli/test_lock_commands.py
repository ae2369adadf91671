"""`dockyard repository update` (locks) and `dockyard repository immutability` against a running registry."""

from __future__ import annotations

import pytest

from tests.cli.conftest import Cli
from tests.e2e.support import DockyardServer, push_image
from tests.support.images import make_image

pytestmark = pytest.mark.e2e

REPO = "cli-locks/app"


def test_update_locks_repository_tag_and_manifest(admin: Cli, registry: DockyardServer) -> None:
    one, two = make_image("cli-lock-one"), make_image("cli-lock-two")
    with registry.http(timeout=30) as http:
        digest = push_image(http, REPO, "v1", one)
        push_image(http, REPO, "v2", two)
        tag = admin.json("repository", "update", "--image", f"{REPO}:v1", "--write-enabled", "false")
        assert tag["changeableAttributes"]["writeEnabled"] is False
        moved = http.put(
            f"/v2/{REPO}/manifests/v1", content=two.manifest, headers={"Content-Type": two.media_type}
        )
        assert moved.status_code == 403
        assert "writeEnabled=false" in moved.json()["errors"][0]["message"]
        manifest = admin.json(
            "repository", "update", "--image", f"{REPO}@{digest}", "--delete-enabled", "false"
        )
        assert manifest["changeableAttributes"]["deleteEnabled"] is False
        shown = admin.json(
            "repository", "update", "--repository", REPO, "--list-enabled", "false", "--read-enabled", "true"
        )
        assert shown["changeableAttributes"] == {
            "deleteEnabled": True, "writeEnabled": True, "readEnabled": True, "listEnabled": False,
        }  # fmt: skip
        assert REPO not in admin.json("repository", "list")
        assert (
            admin.json("repository", "show", "--repository", REPO)["changeableAttributes"]["listEnabled"]
            is False
        )
        refused = admin.run("repository", "delete", "--repository", REPO, "--yes")
        assert refused.exit_code == 1
        assert "deleteEnabled" in refused.output or "writeEnabled" in refused.output
        admin.ok("repository", "update", "--repository", REPO, "--list-enabled", "true")
        admin.ok("repository", "update", "--image", f"{REPO}:v1", "--write-enabled", "true")
        admin.ok("repository", "update", "--image", f"{REPO}@{digest}", "--delete-enabled", "true")
        assert REPO in admin.json("repository", "list")


def test_update_needs_a_target_and_an_attribute(admin: Cli) -> None:
    admin.fails("repository", "update", "--write-enabled", "false", code=2)
    admin.fails("repository", "update", "--repository", REPO, code=2)
    admin.fails("repository", "update", "--repository", REPO, "--write-enabled", "maybe", code=2)


def test_immutability_set_and_show(admin: Cli, registry: DockyardServer) -> None:
    one, two = make_image("cli-immutable-one"), make_image("cli-immutable-two")
    repo = "cli-locks/immutable"
    with registry.http(timeout=30) as http:
        push_image(http, repo, "v1", one)
        push_image(http, repo, "latest", one)
        push_image(http, repo, two.digest, two)
        policy = admin.json(
            "repository",
            "immutability",
            "set",
            "--repository",
            repo,
            "--enabled",
            "true",
            "--exempt",
            "latest",
        )
        assert policy == {"enabled": True, "exemptions": ["latest"], "inherited": False}
        assert admin.json("repository", "immutability", "show", "--repository", repo) == policy
        assert admin.json("repository", "show", "--repository", repo)["tagImmutability"] == policy
        headers = {"Content-Type": two.media_type}
        assert http.put(f"/v2/{repo}/manifests/v1", content=two.manifest, headers=headers).status_code == 403
        assert (
            http.put(f"/v2/{repo}/manifests/latest", content=two.manifest, headers=headers).status_code == 201
        )
        assert http.put(f"/v2/{repo}/manifests/v1", content=two.manifest, headers=headers).status_code == 403
        reset = admin.json("repository", "immutability", "set", "--repository", repo, "--enabled", "default")
        assert reset == {"enabled": False, "exemptions": [], "inherited": True}
        assert http.put(f"/v2/{repo}/manifests/v1", content=two.manifest, headers=headers).status_code == 201
