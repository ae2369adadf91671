"""Cache rules, pure: source and target grammar, Docker Hub naming, and the most specific rule winning."""

import re

import pytest

from dockyard.cache.rules import (
    Rule,
    RuleSet,
    Source,
    check_name,
    check_rule,
    normal_login_server,
    parse_source,
    parse_target,
)
from dockyard.oci.errors import ErrorCode, RegistryError


def rule(name: str, source: str, target: str) -> Rule:
    return Rule(1, name, check_rule(source, target), *parse_target(target), None)


def test_docker_hub_names_fold_into_its_api_host_and_library():
    assert normal_login_server("docker.io") == "registry-1.docker.io"
    assert normal_login_server("https://Index.Docker.io/") == "registry-1.docker.io"
    assert parse_source("docker.io/ubuntu").repository == "library/ubuntu"
    assert parse_source("docker.io/bitnami/redis").repository == "bitnami/redis"
    assert parse_source("registry:5000/team/*") == parse_source("registry:5000/team/*")
    assert parse_source("registry:5000/team/*").wildcard


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("ubuntu", "ubuntu"),  # no login server
        ("docker.io/UPPER", "upper"),
        ("docker.io/library/ubuntu", "hub/*"),  # static source, wildcard target
        ("registry:5000/team/*", "team"),
        ("docker.io/library/ubuntu", "Bad"),
        ("docker.io/library/ubuntu:latest", "ubuntu"),  # rules name repositories, not tags
        ("bad host/x", "x"),
    ],
)
def test_malformed_rules_are_refused(source, target):
    with pytest.raises(RegistryError) as raised:
        check_rule(source, target)
    assert raised.value.status == 400


def test_a_static_rule_wins_over_a_wildcard_and_the_longest_prefix_wins():
    rules = RuleSet(
        [
            rule("wide", "registry:5000/team/*", "hub/*"),
            rule("narrow", "other:5000/special/*", "hub/special/*"),
            rule("exact", "docker.io/library/ubuntu", "hub/ubuntu"),
            rule("hubwild", "docker.io/*", "dh/*"),
        ]
    )
    exact = rules.match("hub/ubuntu")
    assert exact is not None
    assert exact.rule.name == "exact"
    assert (exact.registry, exact.repository) == ("registry-1.docker.io", "library/ubuntu")
    wide = rules.match("hub/app/api")
    assert wide is not None
    assert (wide.rule.name, wide.registry, wide.repository) == (
        "wide",
        "registry:5000",
        "team/app/api",
    )
    narrow = rules.match("hub/special/x")
    assert narrow is not None
    assert (narrow.rule.name, narrow.repository) == ("narrow", "special/x")
    hub = rules.match("dh/nginx")
    assert hub is not None
    assert hub.repository == "library/nginx"
    assert rules.match("hub") is None
    assert rules.match("elsewhere/ubuntu") is None
    assert not RuleSet([])


def refused(message: str) -> pytest.RaisesExc[RegistryError]:
    """Expect INVALID_REQUEST (400) with exactly ``message``."""
    return pytest.raises(RegistryError, match=f"^INVALID_REQUEST: {re.escape(message)}$")


def test_rule_and_credential_set_names_are_5_to_50_letters_digits_and_dashes():
    for good in ("abcde", "a-b-c", "Hub-1", "abcd-", "a" * 50):
        assert check_name(good) == good
    with refused("rule name 'abcd' must be 5 to 50 letters, digits and dashes") as raised:
        check_name("abcd")
    assert (raised.value.code, raised.value.status) == (ErrorCode.INVALID_REQUEST, 400)
    with refused("credential set name '-abcd' must be 5 to 50 letters, digits and dashes"):
        check_name("-abcd", "credential set")
    for bad in ("a" * 51, "abc_de", "abcde\n", "ab cde", ""):
        with pytest.raises(RegistryError):
            check_name(bad)
    with refused(f"rule name {'x' * 80!r} must be 5 to 50 letters, digits and dashes"):
        check_name("x" * 100)  # a long name is cut in the message


def test_login_servers_lose_their_scheme_and_trailing_slash():
    assert normal_login_server(" http://Registry:5000/ ") == "registry:5000"
    assert normal_login_server("https://ghcr.io") == "ghcr.io"
    assert normal_login_server("registry-1.docker.io") == "registry-1.docker.io"
    assert normal_login_server("a" * 255) == "a" * 255
    with refused(f"login server {'a' * 80!r} is not host[:port]"):
        normal_login_server("a" * 256)
    with refused("login server 'bad host' is not host[:port]"):
        normal_login_server("bad host")


def test_source_errors_say_what_is_wrong():
    with refused(f"source repository {'a' * 200!r} must be login-server/repository"):
        check_rule("a" * 300, "x")
    long_name = "A" * 300
    text = f"registry:5000/{long_name}"
    with refused(f"source repository {text[:200]!r}: {long_name[:200]!r} is not a repository name"):
        parse_source(text)
    with refused(f"target repository {'B' * 200!r} must be a repository name or prefix/*"):
        parse_target("B" * 300)
    with refused("the source and target repositories must both end in /* or neither"):
        check_rule("registry:5000/team/*", "team")
    with refused("the source and target repositories must both end in /* or neither"):
        check_rule("registry:5000/team", "team/*")


def test_only_docker_hubs_one_part_static_names_gain_library():
    assert parse_source("registry:5000/app") == Source("registry:5000", "app", wildcard=False)
    assert parse_source(" docker.io/nginx ") == Source(
        "registry-1.docker.io", "library/nginx", wildcard=False
    )
    assert parse_source("index.docker.io/bitnami/*") == Source(
        "registry-1.docker.io", "bitnami", wildcard=True
    )
    assert parse_source("docker.io/*") == Source("registry-1.docker.io", "", wildcard=True)
    assert parse_source("registry:5000/*") == Source("registry:5000", "", wildcard=True)
    assert parse_target("hub/*") == ("hub", True)
    assert parse_target("hub/ubuntu") == ("hub/ubuntu", False)


def test_wildcards_map_the_rest_of_the_name_and_hub_names_gain_library():
    rules = RuleSet(
        [
            rule("mirror", "registry:5000/*", "mirror/*"),
            rule("hubwild", "docker.io/*", "dh/*"),
            rule("bitnami", "docker.io/bitnami/*", "bn/*"),
        ]
    )
    mirror = rules.match("mirror/app")
    assert mirror is not None
    assert (mirror.registry, mirror.repository) == ("registry:5000", "app")  # not library/: not Docker Hub
    hub = rules.match("dh/bitnami/redis")
    assert hub is not None
    assert hub.repository == "bitnami/redis"  # two parts: no library/
    bitnami = rules.match("bn/redis")
    assert bitnami is not None
    assert (bitnami.registry, bitnami.repository) == ("registry-1.docker.io", "bitnami/redis")
    assert rules.match("mirrored/app") is None  # a prefix matches whole path components only
    assert rules.match("mirror") is None


def test_a_rule_set_is_true_with_any_rule():
    assert RuleSet([rule("exact", "docker.io/library/ubuntu", "ubuntu")])
    assert RuleSet([rule("wide", "registry:5000/team/*", "hub/*")])
