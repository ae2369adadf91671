import ipaddress

import pytest

from dockyard.access import permissions as p
from dockyard.access.network import NetworkRules, client_address, networks, parse_address


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


def test_catalog_token_claims():
    access = {("repository", "team/a"): frozenset({"pull"})}
    assert not p.CATALOG.satisfied_by_token(access, None)  # a repository grant lists nothing
    assert not p.CATALOG.satisfied_by_token({("registry", "catalog"): frozenset({"pull"})}, None)
    assert p.CATALOG.satisfied_by_token({("registry", "catalog"): frozenset({"*"})}, None)


def test_star_action_is_granted_only_for_every_data_action_and_covers_each_need():
    owner = p.permissions_from_roles([("Owner", "repository:team/app")])
    (star,) = p.parse_scopes(["repository:team/app:*"])
    assert p.grant_scope(owner, star) == ["*"]
    pusher = p.permissions_from_roles([("AcrPush", "repository:team/app")])
    assert p.grant_scope(pusher, star) == []

    claims = {("repository", "team/app"): frozenset({"*"})}
    for need in (p.PULL, p.PUSH, p.DELETE, p.UNTAG, p.LIST_TAGS, p.READ_METADATA, p.WRITE_METADATA):
        assert need.satisfied_by_token(claims, "team/app")
        assert not need.satisfied_by_token(claims, "team/other")
    pull_only = {("repository", "team/app"): frozenset({"pull"})}
    assert p.PULL.satisfied_by_token(pull_only, "team/app")
    assert not p.PUSH.satisfied_by_token(pull_only, "team/app")


@pytest.mark.parametrize(
    ("assignments", "expected"),
    [
        ([("Owner", "registry")], ["*"]),
        ([("AcrPull", "registry")], ["*"]),
        ([("AcrPull", "repository:*")], []),  # every repository, yet not registry-wide
        ([("Owner", "repository:team/*")], []),
    ],
)
def test_catalog_scope_needs_a_registry_wide_read(assignments, expected):
    permissions = p.permissions_from_roles(assignments)
    (catalog,) = p.parse_scopes(["registry:catalog:*"])
    assert p.grant_scope(permissions, catalog) == expected
    others = p.parse_scopes(["registry:catalog:pull", "registry:other:*", "catalog:catalog:*"])
    assert [p.grant_scope(permissions, request) for request in others] == [[], [], []]


@pytest.mark.parametrize(
    "bad", [("NoSuchRole", "registry"), ("AcrPull", "bogus scope"), ("AcrPull", "repository:Bad")]
)
def test_an_unusable_role_assignment_does_not_drop_the_ones_after_it(bad):
    permissions = p.permissions_from_roles([bad, ("AcrPush", "repository:team/a"), ("Reader", "registry")])
    assert permissions.allows("team/a", p.CONTENT_WRITE)
    assert permissions.control == {p.REGISTRY_READ}
    assert permissions.catalog


def test_registry_wide_roles_add_up():
    for order in (
        [("Contributor", "registry"), ("Reader", "registry")],
        [("Reader", "registry"), ("Contributor", "registry")],
    ):
        permissions = p.permissions_from_roles(order)
        assert permissions.control == {p.REGISTRY_READ, p.REGISTRY_WRITE}
        assert permissions.catalog
    scoped_after = p.permissions_from_roles([("Owner", "registry"), ("AcrPull", "repository:team/*")])
    assert scoped_after.control == p.CONTROL_ACTIONS  # a repository-scoped role takes nothing away
    assert scoped_after.catalog


def test_data_actions_of_overlapping_grants_add_up():
    permissions = p.permissions_from_roles(
        [("AcrPull", "repository:team/*"), ("AcrDelete", "repository:team/app")]
    )
    assert permissions.actions_on("team/app") == {
        p.CONTENT_READ,
        p.METADATA_READ,
        p.CONTENT_DELETE,
        p.METADATA_WRITE,
    }
    assert permissions.actions_on("team/other") == {p.CONTENT_READ, p.METADATA_READ}


@pytest.mark.parametrize(
    ("hop", "expected"),
    [
        ("[2001:db8::1]:1234", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("198.51.100.7:443", "198.51.100.7"),
        ("198.51.100.7:65535", "198.51.100.7"),
        (" 198.51.100.7 ", "198.51.100.7"),
        ("[::ffff:198.51.100.7]:80", "198.51.100.7"),
    ],
)
def test_forwarded_for_hops_in_the_forms_proxies_write(hop, expected):
    proxies = networks(["10.0.0.0/8"])
    assert str(parse_address(hop)) == expected
    assert str(client_address("10.0.0.1", [hop], proxies)) == expected
    assert str(client_address("10.0.0.1", [f"{hop}, 10.0.0.2"], proxies)) == expected


@pytest.mark.parametrize(
    "hop",
    [
        "[2001:db8::1",
        "2001:db8::1]",
        "[2001:db8::1]:",
        "[2001:db8::1]:x",
        "[2001:db8::1]:x1",
        "[2001:db8::1]1234",
        "1.2.3.4:",
        "1.2.3.4:65536",
        "1.2.3.4:\uff18\uff10",  # fullwidth digits
        "unknown",
        "host:80",
        "[]",
    ],
)
def test_garbled_hops_are_no_address(hop):
    assert parse_address(hop) is None
    assert str(client_address("10.0.0.1", [f"203.0.113.9, {hop}"], networks(["10.0.0.0/8"]))) == "10.0.0.1"


def test_rules_with_host_bits_cover_their_whole_network():
    assert networks(["10.0.0.5/24", "2001:db8::7/32"]) == (
        ipaddress.ip_network("10.0.0.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    rules = NetworkRules(True, "Deny", networks(["198.51.100.7/24"]), networks(["10.0.0.5/8"]))
    assert rules.allows(ipaddress.ip_address("198.51.100.200"))
    assert not rules.allows(ipaddress.ip_address("198.51.101.1"))
    assert rules.allows(ipaddress.ip_address("10.200.0.1"))
    assert str(client_address("10.9.9.9", ["203.0.113.9"], networks(["10.0.0.5/8"]))) == "203.0.113.9"


def test_empty_hops_are_skipped():
    assert parse_address("") is None
    assert str(client_address("10.0.0.1", ["203.0.113.9, ,"], networks(["10.0.0.0/8"]))) == "203.0.113.9"


def test_no_peer_is_no_address_whatever_the_headers_say():
    proxies = networks(["10.0.0.0/8"])
    assert client_address(None, ["203.0.113.9"], proxies) is None
    assert client_address("", ["203.0.113.9"], proxies) is None


def test_ipv4_rules_never_match_ipv6_clients():
    rules = NetworkRules(True, "Deny", networks(["0.0.0.0/0"]), ())
    assert rules.allows(ipaddress.ip_address("203.0.113.9"))
    assert not rules.allows(ipaddress.ip_address("2001:db8::1"))
    open_rules = NetworkRules(True, "Allow", (), ())
    assert open_rules.allows(ipaddress.ip_address("2001:db8::1"))


def test_role_scopes():
    for good in ("registry", "repository:a", "repository:team/*", "repository:*"):
        assert p.valid_role_scope(good)
    for bad in (
        "repository:",
        "repository:Bad",
        "repository:/a",
        "repository:-a",
        "repo:team",
        "registry:x",
        "",
    ):
        assert not p.valid_role_scope(bad)
    assert p.permissions_from_roles([("AcrPull", "repository:Bad")]).is_empty


def test_a_registry_wide_role_covers_every_repository():
    owner = p.permissions_from_roles([("Owner", "registry")])
    assert owner.allows("any/repository", p.CONTENT_DELETE)
    assert p.permissions_from_roles([("AcrPull", "repository:team/*")]).catalog is False


def test_scope_map_rules_need_a_valid_pattern_and_a_data_action():
    rules = [("Bad/*", p.CONTENT_READ), ("team/a", "content/launch"), ("team/a", p.REGISTRY_WRITE)]
    assert p.permissions_from_scope_map(rules).is_empty


def test_a_docker_action_is_granted_when_exactly_its_data_actions_are_allowed():
    content_read_only = p.permissions_from_scope_map([("team/a", p.CONTENT_READ)])
    (request,) = p.parse_scopes(["repository:team/a:pull,push"])
    assert p.grant_scope(content_read_only, request) == ["pull"]


def test_parsed_scopes_keep_names_with_colons_and_every_action():
    (scope,) = p.parse_scopes(["repository:host:5000/app:pull,push"])
    assert (scope.type, scope.name, scope.actions) == ("repository", "host:5000/app", ("pull", "push"))
    assert str(scope) == "repository:host:5000/app:pull,push"
    assert p.parse_scopes([":team/a:pull", "repository::pull", "repository:team/a:"]) == []


def test_needs_against_permissions():
    reader = p.permissions_from_roles([("Reader", "registry")])
    pusher = p.permissions_from_roles([("AcrPush", "repository:team/a")])
    assert p.MANAGE_READ.satisfied_by(reader, None)
    assert not p.MANAGE_WRITE.satisfied_by(reader, None)
    assert not p.MANAGE_READ.satisfied_by(pusher, None)
    assert p.CATALOG.satisfied_by(reader, None)
    assert not p.CATALOG.satisfied_by(pusher, None)
    assert p.PUSH.satisfied_by(pusher, "team/a")
    assert not p.PUSH.satisfied_by(pusher, "team/b")
    assert not p.PUSH.satisfied_by(reader, "team/a")
    assert p.PULL.satisfied_by(reader, "team/a")
    assert not p.DELETE.satisfied_by(pusher, "team/a")
    assert not p.PULL.satisfied_by(pusher, None)
