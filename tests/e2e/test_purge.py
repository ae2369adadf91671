"""`dockyard purge` end to end: skopeo pushes several tags, purge keeps the newest, skopeo pulls them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.support import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    ContainerTools,
    DockyardServer,
    clean_environment,
    dockyard_command,
    get_manifest,
    run,
)
from tests.support.images import make_image, write_oci_layout

pytestmark = pytest.mark.e2e

TAGS = ("1.0", "1.1", "1.2", "1.3", "1.4")


def test_purge_leaves_exactly_the_kept_tags_pullable(
    container_tools: ContainerTools, dockyard_server: DockyardServer, tmp_path: Path
) -> None:
    host, repo = dockyard_server.host, "e2e-purge/app"
    images = {tag: make_image(f"e2e-purge-{tag}") for tag in TAGS}
    layout = tmp_path / "layout"
    write_oci_layout(layout, images)
    for tag in TAGS:  # one after another: 1.4 is the newest
        container_tools.skopeo(
            "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{host}/{repo}:{tag}"
        )
    with dockyard_server.http() as http:
        digests = {tag: get_manifest(http, repo, tag).headers["docker-content-digest"] for tag in TAGS}
    env = clean_environment(
        DOCKYARD_USERNAME=ADMIN_USERNAME, DOCKYARD_PASSWORD=ADMIN_PASSWORD, HOME=str(tmp_path)
    )
    purge = dockyard_command(
        "purge", "--registry", dockyard_server.url, "--filter", f"{repo}:^1\\.", "--ago", "0d", "--keep", "2",
        "--untagged",
    )  # fmt: skip
    out = run(purge, env=env, timeout=120).stdout
    assert "Number of deleted tags: 3" in out, out
    assert "Number of deleted manifests: 3" in out, out

    listed = container_tools.skopeo("list-tags", "--tls-verify=false", f"docker://{host}/{repo}")
    assert '"1.3"' in listed.stdout
    assert '"1.4"' in listed.stdout
    for tag in ("1.0", "1.1", "1.2"):
        assert f'"{tag}"' not in listed.stdout
    for tag in ("1.3", "1.4"):
        container_tools.skopeo(
            "copy",
            "--src-tls-verify=false",
            f"docker://{host}/{repo}:{tag}",
            f"dir:{tmp_path / ('out-' + tag)}",
        )
    for tag in ("1.0", "1.1", "1.2"):  # their manifests went too (--untagged): nothing left to pull
        gone = container_tools.skopeo(
            "inspect", "--tls-verify=false", f"docker://{host}/{repo}@{digests[tag]}", check=False
        )
        assert gone.returncode != 0
