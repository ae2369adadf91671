"""Garbage collection end to end: skopeo pushes, skopeo deletes, `dockyard gc run`, the store is clean."""

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
    fetch_blob,
    fetch_manifest,
    run,
)
from tests.support.images import make_image, sha256, write_oci_layout

pytestmark = pytest.mark.e2e


def _stored(data_dir: Path) -> set[str]:
    """Digests of the blob files in the server's filesystem store."""
    root = data_dir / "storage" / "blobs"
    return {
        f"{alg.name}:{f.name}" for alg in root.iterdir() for prefix in alg.iterdir() for f in prefix.iterdir()
    }


def test_a_deleted_image_is_collected_and_a_tagged_one_still_pulls(start_server, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir=data_dir)
    tools = ContainerTools(tmp_path / "tools")
    try:
        tools.authorize(server.host)
        keep = make_image("e2e-gc-keep", layers=2)
        drop = make_image("e2e-gc-drop", layers=2, layer_size=4096)
        layout = tmp_path / "layout"
        write_oci_layout(layout, {"keep": keep, "drop": drop})
        for name in ("keep", "drop"):
            tools.skopeo(
                "copy",
                "--dest-tls-verify=false",
                f"oci:{layout}:{name}",
                f"docker://{server.host}/gc/{name}:v1",
            )
        assert {b.digest for b in drop.blobs} <= _stored(data_dir)
        tools.skopeo("delete", "--tls-verify=false", f"docker://{server.host}/gc/drop:v1")

        env = clean_environment(DOCKYARD_USERNAME=ADMIN_USERNAME, DOCKYARD_PASSWORD=ADMIN_PASSWORD)
        gc = run(
            dockyard_command("gc", "run", "--grace-period", "0", "--registry", server.url),
            env=env,
            timeout=120,
        )
        report = json.loads(gc.stdout)
        assert report["status"] == "succeeded"
        assert report["freed"]["blobs"]["items"] == len(drop.blobs)

        left = _stored(data_dir)
        assert not left & {b.digest for b in drop.blobs}
        assert {b.digest for b in keep.blobs} <= left
        out = tmp_path / "pulled"
        tools.skopeo(
            "copy", "--src-tls-verify=false", f"docker://{server.host}/gc/keep:v1", f"oci:{out}:keep"
        )
        pulled = {p.name for p in (out / "blobs" / "sha256").iterdir()}
        assert {b.digest.split(":", 1)[1] for b in keep.blobs} <= pulled
        with server.http(timeout=30.0) as http:
            assert fetch_manifest(http, "gc/keep", "v1") == keep.manifest
            for blob in keep.blobs:
                assert sha256(fetch_blob(http, "gc/keep", blob.digest)) == blob.digest

        status = run(dockyard_command("gc", "status", "--registry", server.url), env=env, timeout=60)
        assert json.loads(status.stdout)[0]["id"] == report["id"]
        usage = run(dockyard_command("show-usage", "--registry", server.url), env=env, timeout=60)
        size = {u["name"]: u["currentValue"] for u in json.loads(usage.stdout)["value"]}["Size"]
        assert size == sum(len(b.data) for b in keep.blobs) + len(keep.manifest)
    finally:
        tools.close()
