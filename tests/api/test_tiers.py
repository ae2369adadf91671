"""Service tiers: the SKU on the registry, every tier limit where the resource is created, downgrades."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from dockyard.access.models import registry_settings
from dockyard.app import Dockyard, build
from dockyard.oci.errors import RegistryError
from dockyard.tiers.services import TierService
from dockyard.webhooks.models import webhooks
from tests.support.auth import create_user
from tests.support.registry import error_codes

#: Small Premium limits, so each test reaches them in a few requests.
SMALL = {"Premium": {"webhooks": 3, "tokens": 3, "scope_maps": 1, "ip_rules": 2}, "Basic": {"tokens": 2}}
HOOK = {"serviceUri": "http://x.example/h", "actions": ["push"]}


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"tiers": SMALL})


def message(response) -> str:
    return response.json()["errors"][0]["message"]


def refused(response, *words: str) -> None:
    """A 409 LIMIT_EXCEEDED whose message names every word (the tier, the limit)."""
    assert response.status_code == 409, response.text
    assert error_codes(response) == ["LIMIT_EXCEEDED"]
    for word in words:
        assert word in message(response), (word, message(response))


def set_sku(client, sku: str):
    return client.patch("/api/v1/registry", json={"sku": {"name": sku}})


def test_the_sku_is_shown_changed_and_audited(client):
    assert client.get("/api/v1/registry").json()["sku"] == {"name": "Premium", "tier": "Premium"}
    changed = set_sku(client, "Standard")
    assert changed.status_code == 200, changed.text
    assert changed.json()["sku"] == {"name": "Standard", "tier": "Standard"}
    assert client.get("/api/v1/registry").json()["sku"]["name"] == "Standard"
    events = client.get("/api/v1/audit", params={"action": "registry.update"}).json()["events"]
    assert events[0]["detail"] == {"sku": {"name": "Standard"}}
    for body in ({"sku": {"name": "Gold"}}, {"sku": {}}, {"sku": "Basic"}):
        response = client.patch("/api/v1/registry", json=body)
        assert response.status_code == 400, body
        assert error_codes(response) == ["INVALID_REQUEST"]
    assert client.get("/api/v1/registry").json()["sku"]["name"] == "Standard"


def test_the_settings_sku_applies_until_one_is_stored(settings):
    parts = build(settings.model_copy(update={"sku": "Basic"}))
    try:
        tiers: TierService = parts.service("tiers")
        assert tiers.current().sku == "Basic"
        assert tiers.current().tokens == 2  # the operator's override of Basic
        parts.access.settings.update(sku="Standard")
        assert tiers.current().sku == "Standard"  # this process sees its change at once
    finally:
        parts.db.dispose()


def test_webhooks_are_limited(client):
    for name in ("hookone", "hooktwo", "hookthree"):
        assert client.post("/api/v1/webhooks", json={"name": name, **HOOK}).status_code == 201
    refused(
        client.post("/api/v1/webhooks", json={"name": "hookfour", **HOOK}), "Premium tier allows 3 webhooks"
    )


def test_tokens_are_limited(client):
    for name in ("t1", "t2", "t3"):
        created = client.post("/api/v1/tokens", json={"name": name, "scopeMap": "_repositories_pull"})
        assert created.status_code == 201, created.text
    refused(
        client.post("/api/v1/tokens", json={"name": "t4", "scopeMap": "_repositories_pull"}),
        "Premium tier allows 3 tokens; this registry has 3",
    )
    assert client.delete("/api/v1/tokens/t1").status_code == 204
    assert (
        client.post("/api/v1/tokens", json={"name": "t4", "scopeMap": "_repositories_pull"}).status_code
        == 201
    )


def test_scope_maps_are_limited_system_maps_aside(client):
    body = {"actions": {"team/*": ["content/read"]}}
    assert client.post("/api/v1/scope-maps", json={"name": "one", **body}).status_code == 201
    refused(
        client.post("/api/v1/scope-maps", json={"name": "two", **body}), "Premium tier allows 1 scope maps"
    )


def test_ip_rules_are_limited(client):
    for address in ("203.0.113.1", "203.0.113.2"):
        added = client.post("/api/v1/registry/network-rules", json={"ipAddress": address})
        assert added.status_code == 200, added.text
    refused(
        client.post("/api/v1/registry/network-rules", json={"ipAddress": "203.0.113.3"}),
        "Premium tier allows 2 IP rules",
    )
    rules = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
    refused(
        client.patch("/api/v1/registry", json={"networkRuleSet": {"ipRules": rules}}), "allows 2 IP rules"
    )
    kept = client.get("/api/v1/registry").json()["networkRuleSet"]["ipRules"]
    assert [r["value"] for r in kept] == ["203.0.113.1/32", "203.0.113.2/32"]


def test_basic_has_no_anonymous_pull(client):
    assert set_sku(client, "Basic").status_code == 200
    refused(client.patch("/api/v1/registry", json={"anonymousPullEnabled": True}), "Standard tier", "Basic")
    assert client.get("/api/v1/registry").json()["anonymousPullEnabled"] is False
    assert set_sku(client, "Standard").status_code == 200
    assert client.patch("/api/v1/registry", json={"anonymousPullEnabled": True}).status_code == 200


def test_network_rules_and_private_access_need_premium(client):
    assert set_sku(client, "Standard").status_code == 200
    refused(client.patch("/api/v1/registry", json={"publicNetworkAccess": "Disabled"}), "Premium tier")
    refused(client.patch("/api/v1/registry", json={"networkRuleSet": {"defaultAction": "Deny"}}), "Premium")
    refused(
        client.post("/api/v1/registry/network-rules", json={"ipAddress": "203.0.113.1"}),
        "Standard tier allows 0 IP rules",
        "Premium",
    )
    shown = client.get("/api/v1/registry").json()
    assert shown["publicNetworkAccess"] == "Enabled"
    assert shown["networkRuleSet"] == {"defaultAction": "Allow", "ipRules": []}


@pytest.mark.parametrize(
    ("setup", "sku", "words"),
    [
        ({"anonymousPullEnabled": True}, "Basic", "does not allow anonymous pull"),
        ({"publicNetworkAccess": "Disabled"}, "Standard", "public network access"),
        ({"networkRuleSet": {"defaultAction": "Deny"}}, "Standard", "default action is Deny"),
        (
            {"networkRuleSet": {"ipRules": ["203.0.113.1"]}},
            "Standard",
            "allows 0 IP rules; this registry has 1",
        ),
    ],
)
def test_downgrades_are_refused_while_a_setting_exceeds_the_tier(client, setup, sku, words):
    assert client.patch("/api/v1/registry", json=setup).status_code == 200
    refused(set_sku(client, sku), f"cannot change the SKU to {sku}", words)
    assert client.get("/api/v1/registry").json()["sku"]["name"] == "Premium"


def test_downgrades_are_refused_while_counts_exceed_the_tier(client):
    for i in range(3):
        assert client.post(
            "/api/v1/tokens", json={"name": f"t{i}", "scopeMap": "_repositories_pull"}
        ).is_success
        assert client.post("/api/v1/webhooks", json={"name": f"hook{i}", **HOOK}).is_success
    response = set_sku(client, "Basic")
    refused(response, "Basic tier allows 2 webhooks; this registry has 3", "Basic tier allows 2 tokens")
    assert client.delete("/api/v1/webhooks/hook2").status_code == 204
    refused(set_sku(client, "Basic"), "allows 2 tokens; this registry has 3")
    assert client.delete("/api/v1/tokens/t2").status_code == 204
    assert set_sku(client, "Basic").status_code == 200
    refused(client.post("/api/v1/webhooks", json={"name": "again", **HOOK}), "Basic tier allows 2 webhooks")


def test_a_downgrade_and_the_change_it_needs_go_together(client):
    assert client.patch("/api/v1/registry", json={"anonymousPullEnabled": True}).status_code == 200
    both = client.patch("/api/v1/registry", json={"sku": {"name": "Basic"}, "anonymousPullEnabled": False})
    assert both.status_code == 200, both.text
    assert (both.json()["sku"]["name"], both.json()["anonymousPullEnabled"]) == ("Basic", False)


def test_rooms_without_routes_yet_check_through_the_tier_service(client, dockyard: Dockyard):
    tiers: TierService = dockyard.service("tiers")
    tiers.add_counter("cache_rules", lambda conn: 1)
    refused(set_sku(client, "Basic"), "Basic tier allows 0 cache rules; this registry has 1")
    with dockyard.db.write() as conn:
        assert tiers.check_count(conn, "cache_rules", 999).sku == "Premium"
        with pytest.raises(RegistryError, match="the Premium tier allows 1000 cache rules"):
            tiers.check_count(conn, "cache_rules", 1000)
        assert tiers.check_count(conn, "replicas", 10**6).sku == "Premium"  # unlimited
    usage = {u["name"]: u for u in client.get("/api/v1/registry/usage").json()["value"]}
    assert (usage["CacheRules"]["limit"], usage["CacheRules"]["currentValue"]) == (1000, 1)
    assert (usage["Webhooks"]["limit"], usage["Tokens"]["limit"], usage["IPRules"]["limit"]) == (3, 3, 2)


def test_anonymous_pull_is_off_while_the_tier_lacks_it(client, anonymous, dockyard: Dockyard):
    assert client.patch("/api/v1/registry", json={"anonymousPullEnabled": True}).status_code == 200
    assert anonymous.get("/oauth2/token", params={"service": "dockyard"}).status_code == 200
    assert anonymous.get("/v2/nothing/tags/list").status_code == 404  # read without credentials
    tiers: TierService = dockyard.service("tiers")
    premium = tiers.current()
    tiers.table[premium.sku] = dataclasses.replace(premium, anonymous_pull=False)  # an operator's override
    tiers.forget()
    assert anonymous.get("/v2/nothing/tags/list").status_code == 401
    assert anonymous.get("/oauth2/token", params={"service": "dockyard"}).status_code == 401


def test_reading_the_sku_needs_reader_and_changing_it_owner_or_contributor(client, anonymous):
    reader = create_user(client, "reader1", "Reader")
    contributor = create_user(client, "contrib1", "Contributor")
    assert anonymous.get("/api/v1/registry", headers=reader).json()["sku"]["name"] == "Premium"
    assert (
        anonymous.patch("/api/v1/registry", json={"sku": {"name": "Basic"}}, headers=reader).status_code
        == 403
    )
    assert (
        anonymous.patch("/api/v1/registry", json={"sku": {"name": "Basic"}}, headers=contributor).status_code
        == 200
    )


# -- concurrent creates on PostgreSQL ------------------------------------------------------------


def _race_two_webhooks(dockyard: Dockyard) -> tuple[int, list[str]]:
    """Two webhook creates whose counts meet at a barrier (one below the limit): the count after, outcomes."""
    tiers: TierService = dockyard.service("tiers")
    barrier = threading.Barrier(2, timeout=1.0)
    counted = sa.select(sa.func.count()).select_from(webhooks)
    for name in ("first", "second"):
        dockyard.webhooks.create(name, "http://x.example/h", ["push"])  # one place left of 3

    def counter(conn: sa.Connection) -> int:
        count = int(conn.execute(counted).scalar_one())
        # both count before either inserts, unless the lock keeps one out (then the wait times out)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return count

    tiers.add_counter("webhooks", counter)

    def create(name: str) -> str:
        try:
            dockyard.webhooks.create(name, "http://x.example/h", ["push"])
        except RegistryError as error:
            return error.code.name
        return "created"

    with ThreadPoolExecutor(2) as pool:
        results = sorted(pool.map(create, ["race1", "race2"]))
    with dockyard.db.read() as conn:
        return int(conn.execute(counted).scalar_one()), results


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_concurrent_creates_cannot_pass_the_limit_on_postgresql(dockyard):
    count, results = _race_two_webhooks(dockyard)
    assert results == ["LIMIT_EXCEEDED", "created"]
    assert count == 3


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_without_the_lock_the_race_passes_the_limit(dockyard, monkeypatch):
    """The control: the race above is real, so the test fails when the lock is removed."""
    monkeypatch.setattr(TierService, "lock", lambda self, conn: self.read(conn))
    count, results = _race_two_webhooks(dockyard)
    assert results == ["created", "created"]
    assert count == 4


def test_the_sku_row_is_the_registrys_setting(dockyard: Dockyard, client):
    assert set_sku(client, "Standard").status_code == 200
    with dockyard.db.read() as conn:
        stored = conn.execute(
            sa.select(registry_settings.c.value).where(registry_settings.c.key == "sku")
        ).scalar_one()
    assert stored == "Standard"
