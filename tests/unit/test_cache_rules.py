"""Cache rules, pure: source and target grammar, Docker Hub naming, and the most specific rule winning."""

import pytest

from dockyard.cache.rules import Rule, RuleSet, check_rule, normal_login_server, parse_source, parse_target
from dockyard.oci.errors import RegistryError


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
