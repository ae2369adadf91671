"""The pure webhook rules: names, URIs, actions, headers, scopes and scope matching."""

import pytest

from dockyard.events.services import DISPATCHED_ACTIONS
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.webhooks.rules import (
    check_actions,
    check_headers,
    check_name,
    check_uri,
    invalid,
    normalize_scope,
    scope_matches,
)


def refused(call, *args) -> str:
    """The message of the 400 that ``call(*args)`` raises."""
    with pytest.raises(RegistryError) as raised:
        call(*args)
    assert raised.value.code is ErrorCode.INVALID_REQUEST
    assert raised.value.status == 400
    return raised.value.message


def test_invalid_is_a_400_with_the_message():
    error = invalid("some words")
    assert (error.code, error.status, error.message) == (ErrorCode.INVALID_REQUEST, 400, "some words")


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["abcde", "A" * 50, "hook1", "MyHook2024"])
def test_names_of_5_to_50_letters_and_digits(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["abcd", "A" * 51, "has-dash", "has space", "hook\n", "", 12345])
def test_other_names_are_refused(name):
    assert refused(check_name, name) == "webhook names are 5-50 letters and digits"


# -- service URIs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "http://hooks.example.com/x",
        "https://hooks.example.com/x?token=abc#frag",
        "HTTPS://Hooks.Example.COM:8443/path",
        "http://192.0.2.10/hook",
        "http://[2001:db8::1]:8080/hook",
        "http://user:pass@hooks.example.com/x",
        "https://bücher.example/hook",
        "http://host_with_underscore.example/",
        "http://trailing.dot.example./",
        "http://hooks.example.com:1/",
        "http://hooks.example.com:65535/",
        "http://hooks.example.com/!tilde~",
    ],
)
def test_absolute_http_and_https_uris_with_a_host(uri):
    assert check_uri(uri) == uri


def test_uris_up_to_2048_characters():
    base = "https://hooks.example.com/"
    assert check_uri(base + "p" * (2048 - len(base))) == base + "p" * (2048 - len(base))
    assert (
        refused(check_uri, base + "p" * (2049 - len(base)))
        == "the service URI is longer than 2048 characters"
    )


@pytest.mark.parametrize(
    "uri",
    [
        "http://x.example/a b",
        "http://x.example/a\tb",
        "http://x.example/\r\n",
        "http://x.example/\x00",
        "http://x.example/\x7f",
    ],
)
def test_whitespace_and_control_characters_are_refused(uri):
    assert refused(check_uri, uri) == "the service URI must not contain whitespace or control characters"


@pytest.mark.parametrize(
    "uri",
    ["ftp://x.example/h", "/relative", "x.example/h", "mailto:a@x.example", "http:///hook", "http://:80/hook",
     "https://user@/hook", "http://?q", ""],
)  # fmt: skip
def test_uris_without_http_scheme_or_host_are_refused(uri):
    assert (
        refused(check_uri, uri) == "the service URI must be an absolute http:// or https:// URL with a host"
    )


@pytest.mark.parametrize("uri", ["http://[::1/hook", "http://x.example:abc/", "http://[nothex]/"])
def test_unparseable_uris_are_refused(uri):
    assert refused(check_uri, uri) == "the service URI is not a valid URL"


@pytest.mark.parametrize("uri", ["http://x.example:0/", "http://x.example:65536/", "http://x.example:99999/"])
def test_ports_outside_1_to_65535_are_refused(uri):
    assert refused(check_uri, uri) == "the service URI's port must be 1-65535"


@pytest.mark.parametrize(
    "uri",
    ["http://exa%20mple/", "http://a..b/", "http://a_b%2F.example/", "http://" + "a" * 64 + ".example/"],
)
def test_hosts_that_are_neither_names_nor_addresses_are_refused(uri):
    assert refused(check_uri, uri) == "the service URI's host is not a valid host name or IP address"


def test_a_uri_that_is_not_a_string_is_refused():
    assert refused(check_uri, 42) == "the service URI must be a string"


# -- actions ---------------------------------------------------------------------------------------


def test_actions_are_deduplicated_and_sorted():
    assert check_actions(["push", "delete", "push"]) == ["delete", "push"]
    assert check_actions(list(DISPATCHED_ACTIONS)) == sorted(DISPATCHED_ACTIONS)


def test_no_actions_is_refused():
    assert refused(check_actions, []) == (
        "give at least one action: push, delete, chart_push, chart_delete, quarantine, build_succeeded,"
        " build_failed"
    )


@pytest.mark.parametrize(
    ("actions", "shown"), [(["pull"], "['pull']"), (["push", 1, "untag"], "[1, 'untag']")]
)
def test_unknown_actions_are_refused(actions, shown):
    assert refused(check_actions, actions) == (
        f"unknown actions {shown}; use push, delete, chart_push, chart_delete, quarantine, build_succeeded,"
        " build_failed"
    )


@pytest.mark.parametrize("actions", ["push", ("push",), {"push": 1}, None])
def test_actions_must_be_a_list(actions):
    assert refused(check_actions, actions) == "actions must be a list"


# -- custom headers ----------------------------------------------------------------------------------


def test_headers_are_returned_as_a_new_dict():
    given = {"X-Team": "a", "Authorization": "Bearer Xyz", "X-Empty": ""}
    checked = check_headers(given)
    assert checked == given
    assert checked is not given


def test_up_to_50_headers():
    fifty = {f"X-H{i}": "v" for i in range(50)}
    assert check_headers(fifty) == fifty
    assert refused(check_headers, {**fifty, "X-One-More": "v"}) == "at most 50 custom headers"


def test_values_up_to_4096_characters():
    assert check_headers({"X-A": "v" * 4096}) == {"X-A": "v" * 4096}
    assert refused(check_headers, {"X-A": "v" * 4097}) == (
        "the value of header 'X-A' is longer than 4096 characters"
    )


@pytest.mark.parametrize("value", [1, 1.5, True, None, ["v"], {"v": "w"}, b"bytes"])
def test_non_string_values_are_refused(value):
    assert refused(check_headers, {"X-A": value}) == "the value of header 'X-A' must be a string"


@pytest.mark.parametrize(
    "value", ["a\rb", "a\nb", "a\0b", "\r\n", "\x7f", "\x1b[2J", "é", "a\u2028b", "€", " x", "x ", "\t", " "]
)
def test_values_that_are_not_printable_ascii_are_refused(value):
    assert refused(check_headers, {"X-A": value}) == (
        "the value of header 'X-A' must be printable ASCII, without line breaks, NUL, or spaces at either end"
    )


def test_inner_tabs_spaces_and_every_visible_character_are_kept():
    value = "a\t " + "".join(chr(c) for c in range(0x21, 0x7F))
    assert check_headers({"X-A": value}) == {"X-A": value}


@pytest.mark.parametrize("name", ["Host", "HOST", "content-length", "Transfer-Encoding", "Connection", "TE"])
def test_reserved_headers_are_refused_in_any_case(name):
    assert refused(check_headers, {name: "v"}) == f"header {name!r} cannot be set by a webhook"


def test_header_names_are_tokens_of_at_most_128_characters():
    assert check_headers({"X" * 128: "v"}) == {"X" * 128: "v"}
    assert refused(check_headers, {"X" * 129: "v"}) == f"invalid header name {'X' * 80!r}"
    assert refused(check_headers, {"bad name": "v"}) == "invalid header name 'bad name'"
    assert refused(check_headers, {"": "v"}) == "invalid header name ''"
    assert refused(check_headers, {7: "v"}) == "invalid header name '7'"


@pytest.mark.parametrize("headers", [["X-A: v"], "X-A: v", None, 3])
def test_headers_must_be_a_mapping(headers):
    assert refused(check_headers, headers) == "customHeaders maps header names to string values"


# -- scopes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "normalized"),
    [
        (None, None),
        ("", None),
        ("repo", "repo:latest"),
        ("repo:", "repo:latest"),
        ("repo:*", "repo:*"),
        ("repo:v1.2-rc_3", "repo:v1.2-rc_3"),
        ("team/app:V1", "team/app:V1"),
        ("team/*", "team/*:latest"),  # as ACR stores it
        ("team/*:*", "team/*:*"),
        ("*", "*:latest"),
        ("a" * 255 + ":" + "t" * 128, "a" * 255 + ":" + "t" * 128),
    ],
)
def test_scope_forms(scope, normalized):
    assert normalize_scope(scope) == normalized


@pytest.mark.parametrize(
    "scope", ["Repo:v1", "repo name", "repo:a:b", "repo:t/x", ":tag", "a" * 256, "repo:" + "t" * 129, "répo"]
)
def test_invalid_scopes_are_refused(scope):
    assert refused(normalize_scope, scope) == (
        f"invalid scope {scope[:200]!r}: use repository:tag, repository:* or a * wildcard"
    )


def test_a_long_invalid_scope_is_shown_cut_at_200_characters():
    scope = "B" * 300
    assert refused(normalize_scope, scope) == (
        f"invalid scope {'B' * 200!r}: use repository:tag, repository:* or a * wildcard"
    )


def test_a_scope_that_is_not_a_string_is_refused():
    assert refused(normalize_scope, 5) == "the scope must be a string"


@pytest.mark.parametrize(
    ("scope", "repository", "tag", "expected"),
    [
        (None, "any/repo", "v1", True),
        (None, "any/repo", None, True),
        ("team/app:v1", "team/app", "v1", True),
        ("team/app:v1", "team/app", "v2", False),
        ("team/app:v1", "team/other", "v1", False),
        ("team/app:*", "team/app", "anything", True),
        ("team/app:v*", "team/app", "v2", True),
        ("team/app:v*", "team/app", "w2", False),
        ("team/*:latest", "team/a", "latest", True),
        ("team/*:latest", "team/a/b", "latest", True),
        ("team/*:latest", "other/a", "latest", False),
        ("team/*:latest", "team/a", "v1", False),
        ("team/app:V1", "team/app", "v1", False),  # tags are case-sensitive
        # a delete by digest has no tag: only scopes whose tag part is * match it
        ("team/app:*", "team/app", None, True),
        ("team/*:*", "team/app", None, True),
        ("team/app:latest", "team/app", None, False),
        ("team/app:v*", "team/app", None, False),
        ("team/app:*", "team/other", None, False),
        ("*:*", "anything/at/all", None, True),
    ],
)
def test_scope_matching(scope, repository, tag, expected):
    assert scope_matches(scope, repository, tag) is expected
