"""`dockyard show|update|credential|network-rule|audit|signing-key` against a running registry."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import Cli
from tests.e2e.support import ADMIN_PASSWORD, ADMIN_USERNAME, DockyardServer

pytestmark = pytest.mark.e2e


def _password_works(server: DockyardServer, password: str) -> bool:
    response = httpx.get(f"{server.url}/oauth2/token", auth=(ADMIN_USERNAME, password), timeout=10)
    return response.status_code == 200


def test_show_and_update(admin: Cli, registry: DockyardServer) -> None:
    shown = admin.json("show")
    assert shown["loginServer"] == registry.host
    assert shown["adminUserEnabled"] is True
    assert shown["anonymousPullEnabled"] is False

    try:
        updated = admin.json(
            "update", "--anonymous-pull-enabled", "true", "--public-network-enabled", "false",
            "--default-action", "Deny",
        )  # fmt: skip
        assert updated["anonymousPullEnabled"] is True
        assert updated["publicNetworkAccess"] == "Disabled"
        assert updated["networkRuleSet"]["defaultAction"] == "Deny"
        assert admin.json("show") == updated
        # anonymous pull is on: an anonymous token is given, and a read without one works
        assert httpx.get(f"{registry.url}/oauth2/token", timeout=10).status_code == 200
        assert httpx.get(f"{registry.url}/v2/nothing/tags/list", timeout=10).status_code == 404
    finally:
        restored = admin.json(
            "update", "--anonymous-pull-enabled", "false", "--public-network-enabled", "true",
            "--default-action", "Allow",
        )  # fmt: skip
    assert (restored["anonymousPullEnabled"], restored["publicNetworkAccess"]) == (False, "Enabled")
    assert restored["networkRuleSet"]["defaultAction"] == "Allow"
    assert httpx.get(f"{registry.url}/v2/", timeout=10).status_code == 401

    table = admin.ok("show", "-o", "table").stdout.splitlines()
    assert table[0].split()[:3] == ["Name", "Sku", "LoginServer"]
    assert table[1].split()[0] == "dockyard"
    assert registry.host in table[1]

    nothing = admin.fails("update", code=2)
    assert "nothing to update" in nothing.stderr
    bad = admin.run("update", "--admin-enabled", "maybe")
    assert bad.exit_code == 2


def test_the_sku_is_shown_and_changed(admin: Cli) -> None:
    assert admin.json("show")["sku"] == {"name": "Premium", "tier": "Premium"}
    table = admin.ok("show", "-o", "table").stdout.splitlines()
    assert table[0].split()[:3] == ["Name", "Sku", "LoginServer"]
    try:
        assert admin.json("update", "--sku", "Standard")["sku"] == {"name": "Standard", "tier": "Standard"}
        admin.json("update", "--anonymous-pull-enabled", "true")
        refused = admin.fails("update", "--sku", "Basic")
        assert "cannot change the SKU to Basic" in refused.output
        assert "does not allow anonymous pull" in refused.output
        assert admin.json("show")["sku"]["name"] == "Standard"
        both = admin.json("update", "--sku", "Basic", "--anonymous-pull-enabled", "false")
        assert (both["sku"]["name"], both["anonymousPullEnabled"]) == ("Basic", False)
        usage = {u["name"]: u["limit"] for u in admin.json("show-usage")["value"]}
        assert (usage["Webhooks"], usage["IPRules"], usage["CacheRules"]) == (2, 0, 0)
        assert usage["Size"] == 10 * 1024**3
        assert admin.run("update", "--sku", "Gold").exit_code == 2
    finally:
        assert admin.json("update", "--sku", "Premium")["sku"]["name"] == "Premium"


def test_network_rules_round_trip(admin: Cli) -> None:
    assert admin.json("network-rule", "list") == []
    added = admin.json("network-rule", "add", "--ip-address", "203.0.113.7/24")
    assert added["ipRules"] == [{"action": "Allow", "value": "203.0.113.0/24"}]
    admin.json("network-rule", "add", "--ip-address", "2001:db8::1")
    assert [r["value"] for r in admin.json("network-rule", "list")] == ["2001:db8::1/128", "203.0.113.0/24"]
    assert admin.json("show")["networkRuleSet"]["ipRules"] == admin.json("network-rule", "list")

    tsv = admin.ok("network-rule", "list", "-o", "tsv").stdout.splitlines()
    assert tsv == ["Allow\t2001:db8::1/128", "Allow\t203.0.113.0/24"]

    removed = admin.json("network-rule", "remove", "--ip-address", "203.0.113.0/24")
    assert removed["ipRules"] == [{"action": "Allow", "value": "2001:db8::1/128"}]
    missing = admin.fails("network-rule", "remove", "--ip-address", "198.51.100.1")
    assert "there is no IP rule 198.51.100.1/32" in missing.stderr
    assert admin.fails("network-rule", "add", "--ip-address", "not-an-ip", code=2).exit_code == 2
    admin.json("network-rule", "remove", "--ip-address", "2001:db8::1")
    assert admin.json("network-rule", "list") == []


def test_credential_show_and_renew(admin: Cli, registry: DockyardServer) -> None:
    shown = admin.json("credential", "show")
    assert shown["username"] == ADMIN_USERNAME
    assert shown["enabled"] is True
    assert [p["name"] for p in shown["passwords"]] == ["password", "password2"]
    assert all("value" not in p for p in shown["passwords"])

    first = admin.json("credential", "renew", "--password-name", "password2")
    first_value = next(p["value"] for p in first["passwords"] if p["name"] == "password2")
    assert all("value" not in p for p in first["passwords"] if p["name"] == "password")
    assert _password_works(registry, first_value)

    second = admin.json("credential", "renew", "--password", "2")
    second_value = next(p["value"] for p in second["passwords"] if p["name"] == "password2")
    assert second_value != first_value
    assert not _password_works(registry, first_value), "the renewed password must stop working at once"
    assert _password_works(registry, second_value)
    assert _password_works(registry, ADMIN_PASSWORD), "renewing password2 leaves password alone"

    both = admin.run("credential", "renew", "--password-name", "password", "--password", "1")
    assert both.exit_code == 2
    assert _password_works(registry, ADMIN_PASSWORD)


def test_signing_keys_and_audit(admin: Cli) -> None:
    before = admin.json("signing-key", "list")
    assert len([k for k in before if k["retiredTime"] is None]) == 1
    rotated = admin.json("signing-key", "rotate")
    after = admin.json("signing-key", "list")
    active = [k["kid"] for k in after if k["retiredTime"] is None]
    assert active == [rotated["kid"]]
    assert {k["kid"] for k in before} < {k["kid"] for k in after}
    # the stored login (a refresh token signed by the old key) keeps working
    assert admin.json("show")["adminUserEnabled"] is True

    events = admin.json("audit", "list", "--action", "signing-key.rotate", "--top", "5")
    assert events
    assert events[-1]["detail"] == {"kid": rotated["kid"]}
    assert events[-1]["principal"] == ADMIN_USERNAME
    assert all(e["action"] == "signing-key.rotate" for e in events)

    since = after[-1]["createdTime"]
    recent = admin.json("audit", "list", "--since", since)
    assert any(e["action"] == "signing-key.rotate" for e in recent)
    assert all(e["time"] >= since for e in recent)
    assert len(admin.json("audit", "list", "--top", "2")) == 2
    bad = admin.fails("audit", "list", "--since", "yesterday")
    assert "since must be an ISO 8601 time" in bad.stderr

    tsv = admin.ok("audit", "list", "--top", "1", "-o", "tsv").stdout.splitlines()
    assert len(tsv) == 1
    assert len(tsv[0].split("\t")) == 7, "id, time, action, outcome, principal, clientIp, detail"


def test_disabling_the_admin_from_its_own_login_succeeds_and_says_how_to_undo_it(
    admin: Cli, registry: DockyardServer, tmp_path: Path
) -> None:
    created = admin.json("user", "create", "--name", "cli-second-owner")
    secret = next(c["value"] for c in created["credentials"] if c["name"] == "secret")
    admin.json("role", "assignment", "create", "--assignee", "cli-second-owner", "--role", "Owner")
    owner = admin.another(tmp_path / "owner")
    owner.login("cli-second-owner", secret)
    try:
        disabled = admin.ok("update", "--admin-enabled", "false")
        assert json.loads(disabled.stdout)["adminUserEnabled"] is False
        assert "this login was the admin's" in disabled.stderr
        assert "dockyard admin enable --data-dir" in disabled.stderr
        assert not _password_works(registry, ADMIN_PASSWORD)
        # the other Owner's login is not the admin's: no note
        quiet = owner.ok("update", "--admin-enabled", "false")
        assert "NOTE" not in quiet.stderr
    finally:
        assert owner.json("update", "--admin-enabled", "true")["adminUserEnabled"] is True
        admin.login()  # disabling ended the admin's saved login for good
        admin.ok("user", "delete", "--name", "cli-second-owner", "--yes")
    assert _password_works(registry, ADMIN_PASSWORD)
