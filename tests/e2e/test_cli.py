"""The `dockyard` CLI against a running server: repository list/show/show-tags/show-manifests/untag/delete."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import dockyard
from tests.e2e.support import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    DockyardServer,
    dockyard_command,
    get_manifest,
    push_image,
    put_manifest,
    run,
)
from tests.support.images import OCI_INDEX, OCI_MANIFEST, make_image, make_index

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def logged_in(dockyard_server: DockyardServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`dockyard login` as the admin user once, into credential files of this module's own."""
    home = tmp_path_factory.mktemp("cli-login")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOME", str(home))
        env.setenv("DOCKER_CONFIG", str(home / ".docker"))
        env.setenv("REGISTRY_AUTH_FILE", str(home / "auth.json"))
        (home / "run").mkdir()
        env.setenv("XDG_RUNTIME_DIR", str(home / "run"))
        env.setenv("XDG_CONFIG_HOME", str(home / ".config"))
        login = dockyard_command("login", dockyard_server.url, "-u", ADMIN_USERNAME, "--password-stdin")
        assert run(login, stdin=ADMIN_PASSWORD, timeout=60).stdout.strip() == "Login Succeeded"
        yield


def cli(server: DockyardServer, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(dockyard_command(*args, "--registry", server.url), timeout=60, check=check)


def cli_json(server: DockyardServer, *args: str) -> Any:
    return json.loads(cli(server, *args, "-o", "json").stdout)


def test_version() -> None:
    result = run(dockyard_command("version", "-o", "json"), timeout=60)
    assert json.loads(result.stdout) == {"version": dockyard.__version__}


def test_list_and_show(dockyard_server: DockyardServer, registry_http: httpx.Client) -> None:
    repo = "cli/show"
    amd = make_image("cli-amd")
    arm = make_image("cli-arm", architecture="arm64")
    amd_digest = push_image(registry_http, repo, "amd64", amd)
    push_image(registry_http, repo, "arm64", arm)
    index = make_index([amd, arm])
    index_digest = put_manifest(registry_http, repo, "multi", index, OCI_INDEX)

    assert repo in cli_json(dockyard_server, "repository", "list")

    shown = cli_json(dockyard_server, "repository", "show", "--repository", repo)
    assert shown["imageName"] == repo
    assert shown["manifestCount"] == 3
    assert shown["tagCount"] == 3

    tag = cli_json(dockyard_server, "repository", "show", "--image", f"{repo}:amd64")
    assert tag["name"] == "amd64"
    assert tag["digest"] == amd_digest

    manifest = cli_json(dockyard_server, "repository", "show", "--image", f"{repo}@{amd_digest}")
    assert manifest["digest"] == amd_digest
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["architecture"] == "amd64"
    assert manifest["os"] == "linux"
    assert manifest["tags"] == ["amd64"]
    assert manifest["imageSize"] == len(amd.manifest) + sum(len(b.data) for b in amd.blobs)

    assert cli_json(dockyard_server, "repository", "show-tags", "--repository", repo) == [
        "amd64",
        "arm64",
        "multi",
    ]
    detailed = cli_json(dockyard_server, "repository", "show-tags", "--repository", repo, "--detail")
    assert {t["name"]: t["digest"] for t in detailed} == {
        "amd64": amd_digest,
        "arm64": arm.digest,
        "multi": index_digest,
    }
    assert cli_json(dockyard_server, "repository", "show-tags", "--repository", repo, "--top", "2") == [
        "amd64",
        "arm64",
    ]

    manifests = cli_json(dockyard_server, "repository", "show-manifests", "--repository", repo)
    assert {m["digest"]: m["tags"] for m in manifests} == {
        amd_digest: ["amd64"],
        arm.digest: ["arm64"],
        index_digest: ["multi"],
    }
    detailed = cli_json(dockyard_server, "repository", "show-manifests", "--repository", repo, "--detail")
    by_digest = {m["digest"]: m for m in detailed}
    assert by_digest[index_digest]["mediaType"] == OCI_INDEX
    assert {r["digest"]: r["architecture"] for r in by_digest[index_digest]["references"]} == {
        amd_digest: "amd64",
        arm.digest: "arm64",
    }
    assert by_digest[arm.digest]["architecture"] == "arm64"

    table = cli(dockyard_server, "repository", "show-tags", "--repository", repo, "--detail", "-o", "table")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["Name", "Digest"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:] if line.strip()}
    assert rows == {"amd64": amd_digest, "arm64": arm.digest, "multi": index_digest}

    missing = cli(dockyard_server, "repository", "show", "--image", f"{repo}:nope", check=False)
    assert missing.returncode == 1
    assert missing.stderr.startswith("ERROR: MANIFEST_UNKNOWN")


def test_untag_keeps_the_manifest(dockyard_server: DockyardServer, registry_http: httpx.Client) -> None:
    repo = "cli/untag"
    image = make_image("cli-untag")
    digest = push_image(registry_http, repo, "keep", image)
    push_image(registry_http, repo, "drop", image)

    assert cli_json(dockyard_server, "repository", "untag", "--image", f"{repo}:drop") == {
        "untagged": f"{repo}:drop"
    }

    assert get_manifest(registry_http, repo, "drop").status_code == 404
    assert get_manifest(registry_http, repo, "keep").status_code == 200
    assert get_manifest(registry_http, repo, digest).status_code == 200
    assert cli_json(dockyard_server, "repository", "show-tags", "--repository", repo) == ["keep"]
    manifests = cli_json(dockyard_server, "repository", "show-manifests", "--repository", repo)
    assert [(m["digest"], m["tags"]) for m in manifests] == [(digest, ["keep"])]


def test_delete_image_and_repository(dockyard_server: DockyardServer, registry_http: httpx.Client) -> None:
    repo = "cli/delete"
    first = make_image("cli-delete-1")
    second = make_image("cli-delete-2")
    first_digest = push_image(registry_http, repo, "one", first)
    push_image(registry_http, repo, "also-one", first)
    second_digest = push_image(registry_http, repo, "two", second)

    deleted = cli_json(dockyard_server, "repository", "delete", "--image", f"{repo}:one", "--yes")
    assert deleted == {"deleted": f"{repo}@{first_digest}"}
    assert get_manifest(registry_http, repo, first_digest).status_code == 404
    assert get_manifest(registry_http, repo, "one").status_code == 404
    assert get_manifest(registry_http, repo, "also-one").status_code == 404, "every tag of the manifest goes"
    assert get_manifest(registry_http, repo, "two").status_code == 200
    assert cli_json(dockyard_server, "repository", "show-tags", "--repository", repo) == ["two"]

    assert repo in cli_json(dockyard_server, "repository", "list")
    removed = cli_json(dockyard_server, "repository", "delete", "--repository", repo, "--yes")
    assert removed == {"manifestsDeleted": [second_digest], "tagsDeleted": ["two"]}
    assert repo not in cli_json(dockyard_server, "repository", "list")
    assert registry_http.get(f"/v2/{repo}/tags/list").status_code == 404
    assert get_manifest(registry_http, repo, second_digest).status_code == 404
    gone = cli(dockyard_server, "repository", "show", "--repository", repo, check=False)
    assert gone.returncode == 1
    assert "NAME_UNKNOWN" in gone.stderr
