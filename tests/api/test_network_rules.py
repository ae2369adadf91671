"""Network rules as clients at different addresses see them, directly and behind a trusted proxy."""

import pytest
from starlette.testclient import TestClient

from dockyard.app import create_app
from tests.support.auth import ADMIN
from tests.support.registry import error_codes

PUBLIC = "203.0.113.9"
PRIVATE = "10.1.2.3"


@pytest.fixture
def at(settings, dockyard):
    """A client factory: ``at("1.2.3.4")`` talks to the app from that address."""
    clients = []

    def make(address: str) -> TestClient:
        client = TestClient(
            create_app(settings, dockyard, background_jobs=False), client=(address, 40000), headers=ADMIN
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_default_is_open_to_everyone(client, at):
    assert at(PUBLIC).get("/v2/").status_code == 200


def test_deny_by_default_with_ip_rules(client, at):
    client.patch(
        "/api/v1/registry", json={"networkRuleSet": {"defaultAction": "Deny", "ipRules": ["198.51.100.0/24"]}}
    )
    refused = at(PUBLIC).get("/v2/")
    assert refused.status_code == 403
    assert error_codes(refused) == ["DENIED"]
    assert refused.json()["errors"][0]["message"] == f"client with IP '{PUBLIC}' is not allowed access"
    assert "198.51.100" not in refused.text  # the rules themselves are not revealed
    assert at("198.51.100.77").get("/v2/").status_code == 200
    assert at(PRIVATE).get("/v2/").status_code == 200  # private networks are always allowed
    assert at(PUBLIC).post("/oauth2/token").status_code == 403  # the token service too
    assert at(PUBLIC).head("/v2/").content == b""


def test_ipv6_rules(client, at):
    client.patch(
        "/api/v1/registry", json={"networkRuleSet": {"defaultAction": "Deny", "ipRules": ["2001:db8::/32"]}}
    )
    assert at("2001:db8::5").get("/v2/").status_code == 200
    assert at("2001:dead::5").get("/v2/").status_code == 403


def test_public_access_disabled_overrides_rules(client, at):
    client.patch(
        "/api/v1/registry",
        json={"publicNetworkAccess": "Disabled", "networkRuleSet": {"ipRules": [f"{PUBLIC}/32"]}},
    )
    assert at(PUBLIC).get("/v2/").status_code == 403
    assert at(PRIVATE).get("/v2/").status_code == 200
    assert at(PRIVATE).patch("/api/v1/registry", json={"publicNetworkAccess": "Enabled"}).status_code == 200
    assert at(PUBLIC).get("/v2/").status_code == 200


def test_forwarded_for_is_believed_only_from_trusted_proxies(settings, dockyard):
    trusted = settings.model_copy(update={"trusted_proxies": ["192.0.2.0/24"], "private_networks": []})
    app = create_app(trusted, dockyard, background_jobs=False)
    with (
        TestClient(app, headers=ADMIN, client=("192.0.2.10", 1)) as proxy,
        TestClient(app, headers=ADMIN, client=(PUBLIC, 1)) as direct,
    ):
        proxy.patch(
            "/api/v1/registry",
            json={"networkRuleSet": {"defaultAction": "Deny", "ipRules": ["198.51.100.7", "192.0.2.0/24"]}},
        )
        forwarded = {"X-Forwarded-For": "198.51.100.7"}
        assert proxy.get("/v2/", headers=forwarded).status_code == 200
        assert proxy.get("/v2/", headers={"X-Forwarded-For": PUBLIC}).status_code == 403
        # a chain: client, then another trusted hop
        assert proxy.get("/v2/", headers={"X-Forwarded-For": f"{PUBLIC}, 198.51.100.7"}).status_code == 200
        assert proxy.get("/v2/", headers={"X-Forwarded-For": f"198.51.100.7, {PUBLIC}"}).status_code == 403
        # a client that is not a trusted proxy cannot spoof its address
        assert direct.get("/v2/", headers=forwarded).status_code == 403


def test_token_realm_follows_forwarded_proto_only_from_trusted_proxies(settings, dockyard):
    trusted = settings.model_copy(update={"trusted_proxies": ["192.0.2.0/24"]})
    app = create_app(trusted, dockyard, background_jobs=False)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "registry.example.com"}
    with TestClient(app, client=("192.0.2.10", 1)) as proxy, TestClient(app, client=(PUBLIC, 1)) as direct:
        realm = proxy.get("/v2/", headers=forwarded).headers["www-authenticate"]
        assert 'realm="https://registry.example.com/oauth2/token"' in realm
        spoofed = direct.get("/v2/", headers=forwarded).headers["www-authenticate"]
        assert 'realm="http://testserver/oauth2/token"' in spoofed


def test_single_rules_are_added_and_removed_atomically(client, settings, dockyard):
    from concurrent.futures import ThreadPoolExecutor

    from dockyard.app import build

    rules = [f"198.51.100.{i}/32" for i in range(12)]
    instances = [build(settings) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda i: instances[i % 4].access.settings.change_ip_rule(rules[i], add=True), range(12)
                )
            )
    finally:
        for instance in instances:
            instance.db.dispose()
    dockyard.access.settings._cached = None
    assert sorted(dockyard.access.settings.get().ip_rules) == sorted(rules)  # no update was lost
    added = client.post("/api/v1/registry/network-rules", json={"ipAddress": "2001:db8::/48"})
    assert {"action": "Allow", "value": "2001:db8::/48"} in added.json()["networkRuleSet"]["ipRules"]
    removed = client.delete("/api/v1/registry/network-rules", params={"ipAddress": "198.51.100.0"})
    assert {"action": "Allow", "value": "198.51.100.0/32"} not in removed.json()["networkRuleSet"]["ipRules"]
    assert (
        client.delete("/api/v1/registry/network-rules", params={"ipAddress": "192.0.2.1"}).status_code == 404
    )
    assert client.post("/api/v1/registry/network-rules", json={"ipAddress": "not-an-ip"}).status_code == 400
