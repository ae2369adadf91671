import ipaddress

import pytest

from dockyard.access import permissions as p
from dockyard.access.network import NetworkRules, client_address, networks


def test_patterns():
    assert p.matches("*", "anything/at/all")
    assert p.matches("team/*", "team/app")
    assert p.matches("team/*", "team/app/api")
    assert not p.matches("team/*", "team")
    assert not p.matches("team/*", "teamx/app")
    assert p.matches("team/app", "team/app")
    assert not p.matches("team/app", "team/app/api")
    for good in ("*", "team/*", "a", "a/b/*"):
        assert p.valid_pattern(good)
    for bad in ("", "team/**", "*/app", "team*", "Team/*", "a/*/b/*", "a//*"):
        assert not p.valid_pattern(bad)


def test_scope_map_rules_are_additive():
    permissions = p.permissions_from_scope_map(
        [
            ("sample/*", p.CONTENT_READ),
            ("sample/team-a/*", p.CONTENT_WRITE),
            ("sample/team-a/project-b", p.CONTENT_DELETE),
        ]
    )
    assert permissions.actions_on("sample/team-a/project-b") == {
        p.CONTENT_READ,
        p.CONTENT_WRITE,
        p.CONTENT_DELETE,
    }
    assert permissions.actions_on("sample/other") == {p.CONTENT_READ}
    assert permissions.actions_on("elsewhere") == frozenset()
    assert not permissions.catalog
    assert not permissions.control


def test_roles():
    owner = p.permissions_from_roles([("Owner", "registry")])
    assert owner.catalog
    assert owner.control == p.CONTROL_ACTIONS
    scoped = p.permissions_from_roles([("Owner", "repository:team/*")])
    assert not scoped.catalog
    assert not scoped.control  # control-plane rights come only from registry scope
    assert scoped.allows("team/x", p.CONTENT_DELETE)
    assert p.permissions_from_roles([("NoSuchRole", "registry"), ("AcrPull", "bogus scope")]).is_empty


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("repository:team/app:pull,push", ["pull", "push"]),
        ("repository:team/app:pull,push,delete", ["pull", "push"]),
        ("repository:team/app:*", []),
        ("repository:other:pull", []),
        ("repository:Team/App:pull", []),
        ("registry:catalog:*", []),
        ("repository:team/app:metadata_read", ["metadata_read"]),
    ],
)
def test_grant_scope(scope, expected):
    permissions = p.permissions_from_roles([("AcrPush", "repository:team/app")])
    (request,) = p.parse_scopes([scope])
    assert p.grant_scope(permissions, request) == expected


def test_parse_scopes_drops_garbage():
    parsed = p.parse_scopes(["repository:a:pull repository:b:push", "nonsense", "x::", "registry:catalog:*"])
    assert [str(s) for s in parsed] == ["repository:a:pull", "repository:b:push", "registry:catalog:*"]


def test_client_address_walks_trusted_hops():
    proxies = networks(["10.0.0.0/8"])
    assert str(client_address("10.0.0.1", ["1.2.3.4"], proxies)) == "1.2.3.4"
    assert str(client_address("10.0.0.1", ["1.2.3.4, 10.0.0.2"], proxies)) == "1.2.3.4"
    assert str(client_address("10.0.0.1", ["5.6.7.8, 1.2.3.4"], proxies)) == "1.2.3.4"
    assert str(client_address("9.9.9.9", ["1.2.3.4"], proxies)) == "9.9.9.9"
    assert str(client_address("10.0.0.1", ["garbage"], proxies)) == "10.0.0.1"
    assert str(client_address("::ffff:1.2.3.4", [], proxies)) == "1.2.3.4"
    assert client_address("testclient", [], proxies) is None


def test_network_rules():
    rules = NetworkRules(True, "Deny", networks(["1.2.3.0/24"]), networks(["10.0.0.0/8"]))
    assert rules.allows(ipaddress.ip_address("1.2.3.4"))
    assert rules.allows(ipaddress.ip_address("10.9.9.9"))
    assert not rules.allows(ipaddress.ip_address("4.3.2.1"))
    assert rules.allows(None)  # a local transport (Unix socket, in-process client)
    closed = NetworkRules(False, "Allow", networks(["1.2.3.0/24"]), networks(["10.0.0.0/8"]))
    assert not closed.allows(ipaddress.ip_address("1.2.3.4"))
    assert closed.allows(ipaddress.ip_address("10.0.0.1"))
