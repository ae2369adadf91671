"""`dockyard gc run|status` and `dockyard show-usage` against a real `dockyard serve`."""

from __future__ import annotations

import httpx

from tests.e2e.support import ADMIN_PASSWORD, ADMIN_USERNAME
from tests.support.images import sha256
from tests.support.registry import push_blob


def test_gc_run_frees_an_unreferenced_blob_and_status_lists_the_run(admin, registry):
    data = b"a blob no manifest will ever reference (cli gc test)"
    with httpx.Client(base_url=registry.url, auth=(ADMIN_USERNAME, ADMIN_PASSWORD)) as http:
        digest = push_blob(http, "cli-gc/app", data)

        dry = admin.json("gc", "run", "--grace-period", "0", "--dry-run")
        assert dry["status"] == "succeeded"
        assert dry["freed"]["links"]["items"] >= 1
        assert http.head(f"/v2/cli-gc/app/blobs/{digest}").status_code == 200

        done = admin.json("gc", "run", "--grace-period", "0s")
        assert done["dryRun"] is False
        assert done["freed"]["blobs"]["bytes"] >= len(data)
        assert http.head(f"/v2/cli-gc/app/blobs/{digest}").status_code == 404
    assert digest == sha256(data)

    runs = admin.json("gc", "status", "--top", "2")
    assert [run["id"] for run in runs] == [done["id"], dry["id"]]
    assert runs[0]["bytesFreed"] >= len(data)
    table = admin.ok("gc", "run", "--grace-period", "1h", "-o", "table").stdout
    assert "blobs" in table
    assert "orphans" in table


def test_gc_run_refuses_a_bad_grace_period(admin):
    result = admin.fails("gc", "run", "--grace-period", "soon", code=2)
    assert "not a duration" in result.output


def test_show_usage(admin):
    usage = admin.json("show-usage")
    assert [item["name"] for item in usage["value"]] == [
        "Size", "Webhooks", "Tokens", "ScopeMaps", "IPRules", "Geo-replications", "CacheRules"
    ]  # fmt: skip
    assert all(item["currentValue"] >= 0 for item in usage["value"])
    admin.fails("show-usage", "--repository", "no/such-repository")
