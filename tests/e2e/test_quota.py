"""The storage quota with skopeo: a push past it is refused readably; pulls work; delete + GC makes room."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.support import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    ContainerTools,
    clean_environment,
    dockyard_command,
    run,
    wait_for,
)
from tests.support.images import make_image, write_oci_layout

pytestmark = pytest.mark.e2e

LIMIT = 40_000


def test_a_push_past_the_quota_is_refused_and_room_comes_back(start_server, tmp_path: Path) -> None:
    server = start_server(
        data_dir=tmp_path / "data", env={"DOCKYARD_TIERS": json.dumps({"Premium": {"storage_bytes": LIMIT}})}
    )
    tools = ContainerTools(tmp_path / "tools")
    try:
        tools.authorize(server.host)
        first = make_image("e2e-quota-first", layer_size=25_000)
        second = make_image("e2e-quota-second", layer_size=25_000)
        layout = tmp_path / "layout"
        write_oci_layout(layout, {"first": first, "second": second})

        def copy(name: str, check: bool = True):
            return tools.skopeo(
                "copy", "--dest-tls-verify=false", f"oci:{layout}:{name}",
                f"docker://{server.host}/quota/{name}:v1", check=check,
            )  # fmt: skip

        copy("first")
        refused = copy("second", check=False)
        assert refused.returncode != 0
        assert "storage quota exceeded: the Premium tier allows 39.1 KiB" in refused.stderr, refused.stderr

        pulled = tmp_path / "pulled"
        tools.skopeo(
            "copy", "--src-tls-verify=false", f"docker://{server.host}/quota/first:v1", f"oci:{pulled}:x"
        )
        assert {b.digest.split(":", 1)[1] for b in first.blobs} <= {
            p.name for p in (pulled / "blobs/sha256").iterdir()
        }

        env = clean_environment(DOCKYARD_USERNAME=ADMIN_USERNAME, DOCKYARD_PASSWORD=ADMIN_PASSWORD)
        usage = run(dockyard_command("show-usage", "--registry", server.url), env=env, timeout=60)
        size = {u["name"]: u for u in json.loads(usage.stdout)["value"]}["Size"]
        assert size["limit"] == LIMIT
        assert size["currentValue"] == sum(len(b.data) for b in first.blobs) + len(first.manifest)

        tools.skopeo("delete", "--tls-verify=false", f"docker://{server.host}/quota/first:v1")
        gc = run(
            dockyard_command("gc", "run", "--grace-period", "0", "--registry", server.url),
            env=env,
            timeout=120,
        )
        assert json.loads(gc.stdout)["status"] == "succeeded"
        # each server process re-reads the stored bytes within QUOTA_CACHE_SECONDS (5 s)
        wait_for(lambda: copy("second", check=False).returncode == 0, timeout=30, what="room", interval=1.0)
    finally:
        tools.close()
