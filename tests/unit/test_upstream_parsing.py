"""Pure parts of the upstream client: source references, WWW-Authenticate challenges, Retry-After."""

from __future__ import annotations

import email.utils
import re
import time

import pytest

from dockyard.cache.pull import _unavailable
from dockyard.upstream.client import Challenge, _retry_after, parse_challenge, parse_source
from dockyard.upstream.interfaces import UpstreamRef, UpstreamUnavailable


def test_parse_source() -> None:
    assert parse_source("docker.io/nginx") == UpstreamRef("registry-1.docker.io", "library/nginx", "latest")
    assert parse_source("docker.io/bitnami/redis:7") == UpstreamRef(
        "registry-1.docker.io", "bitnami/redis", "7"
    )
    digest = "sha256:" + "a" * 64
    assert parse_source(f"localhost:5000/a/b@{digest}") == UpstreamRef("localhost:5000", "a/b", digest)
    assert parse_source("Reg.Example.com/app:v1.2") == UpstreamRef("reg.example.com", "app", "v1.2")
    for bad in (
        "nginx",
        "nginx:latest",
        "library/nginx",
        "docker.io/",
        "reg.io/App",
        "reg.io/a:b:c",
        "reg.io/a@sha256:12",
        "reg.io/a:-x",
        "",
        "reg.io/a b",
    ):
        with pytest.raises(ValueError, match=r"source|digest|tag|repository|registry"):
            parse_source(bad)


def test_parse_challenge() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a:pull"'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.io/token",
        "service": "registry.io",
        "scope": "repository:a:pull",
    }
    assert parse_challenge('Basic realm="x"') is not None
    assert parse_challenge("Negotiate abc") is None


def test_retry_after() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


def test_parse_source_registry_forms() -> None:
    assert parse_source("localhost/app") == UpstreamRef("localhost", "app", "latest")
    assert parse_source("LOCALHOST:5000/app:1") == UpstreamRef("localhost:5000", "app", "1")
    assert parse_source("[::1]:5000/app") == UpstreamRef("[::1]:5000", "app", "latest")
    assert parse_source(" registry.hub.docker.com/nginx ") == UpstreamRef(
        "registry-1.docker.io", "library/nginx", "latest"
    )
    assert parse_source("index.docker.io/library/nginx:1.27") == UpstreamRef(
        "registry-1.docker.io", "library/nginx", "1.27"
    )
    # a colon before the last slash is the registry's port, not a tag
    assert parse_source("reg.io:5000/team/app") == UpstreamRef("reg.io:5000", "team/app", "latest")
    digest = "sha256:" + "b" * 64
    # a digest wins over a tag written with it
    assert parse_source(f"reg.io/app:v1@{digest}") == UpstreamRef("reg.io", "app", digest)


def test_parse_source_errors_name_the_bad_part() -> None:
    with pytest.raises(ValueError, match=r"^source 'nginx' must name its registry"):
        parse_source("nginx")
    with pytest.raises(ValueError, match=r"^invalid digest 'sha256:12' in source"):
        parse_source("reg.io/a@sha256:12")
    with pytest.raises(ValueError, match=r"^invalid digest 'md5:"):
        parse_source("reg.io/a@md5:" + "a" * 32)  # a well-formed digest of an unsupported algorithm
    with pytest.raises(ValueError, match=r"^invalid tag '' in source"):
        parse_source("reg.io/a:")
    with pytest.raises(ValueError, match=r"^invalid registry host 'bad_host.io'"):
        parse_source("bad_host.io/a")
    with pytest.raises(ValueError, match=r"^invalid repository name 'a//b'"):
        parse_source("reg.io/a//b")
    with pytest.raises(ValueError, match=r"^invalid source"):
        parse_source("reg.io/" + "a" * 1100)


def test_parse_source_limits_and_where_a_tag_starts() -> None:
    host = "a" * (1024 - len(".io/app")) + ".io"
    assert parse_source(f"{host}/app") == UpstreamRef(host, "app", "latest")  # 1024 characters
    with pytest.raises(ValueError, match=r"^invalid source 'a"):
        parse_source(f"a{host}/app")  # 1025
    assert parse_source("reg.io/" + "a" * 255).repository == "a" * 255
    with pytest.raises(ValueError, match=r"^invalid repository name 'a"):
        parse_source("reg.io/" + "a" * 256)
    # the tag follows the last colon of the last path component only
    with pytest.raises(ValueError, match=r"^invalid repository name 'a:b' in source 'reg.io/a:b:c'$"):
        parse_source("reg.io/a:b:c")
    with pytest.raises(ValueError, match=r"^invalid repository name 'a/b:c/d' in source 'reg.io/a/b:c/d'$"):
        parse_source("reg.io/a/b:c/d")
    with pytest.raises(ValueError, match=r"^invalid repository name 'a/' in source 'reg.io/a/:c'$"):
        parse_source("reg.io/a/:c")


def cut(text: str, length: int = 100) -> str:
    """How an error message quotes a long input."""
    return repr(text[:length])


EXAMPLE = ", e.g. docker.io/library/nginx:latest or myregistry.example.com/team/app@sha256:…"
LONG = "x" * 150


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("reg.io/", "source 'reg.io/' must name its registry" + EXAMPLE),
        (f"{LONG}/a", f"source {cut(f'{LONG}/a')} must name its registry" + EXAMPLE),
        (
            f"reg.io/a {LONG}",
            f"invalid source {cut(f'reg.io/a {LONG}')}: expected registry/repository[:tag|@digest]",
        ),
        (
            f"reg.io/a@sha256:{LONG}",
            f"invalid digest {cut(f'sha256:{LONG}')} in source {cut(f'reg.io/a@sha256:{LONG}')}",
        ),
        (f"{LONG}_.io/a", f"invalid registry host {cut(f'{LONG}_.io')} in source {cut(f'{LONG}_.io/a')}"),
        (f"reg.io/a:-{LONG}", f"invalid tag {cut(f'-{LONG}', 140)} in source {cut(f'reg.io/a:-{LONG}')}"),
        (f"reg.io/A{LONG}", f"invalid repository name {cut(f'A{LONG}')} in source {cut(f'reg.io/A{LONG}')}"),
    ],
)
def test_parse_source_messages_in_full_and_cut_to_length(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_source(source)


def test_parse_challenge_quoting_case_and_unquoted_values() -> None:
    challenge = parse_challenge(
        '  BEARER Realm="https://auth.io/token", scope="repository:a:pull,push",error=insufficient_scope'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.io/token",
        "scope": "repository:a:pull,push",  # a comma inside quotes belongs to the value
        "error": "insufficient_scope",
    }
    escaped = parse_challenge(r'Basic realm="say \"hi\"", charset=""')
    assert escaped == Challenge("basic", {"realm": 'say "hi"', "charset": ""})
    assert parse_challenge("Bearer") == Challenge("bearer", {})
    assert parse_challenge("") is None


def test_retry_after_seconds_and_dates() -> None:
    assert _retry_after("0") == 0.0
    assert _retry_after("") is None
    assert _retry_after("-5") == 0.0  # never negative
    future = email.utils.formatdate(time.time() + 120, usegmt=True)
    seconds = _retry_after(future)
    assert seconds is not None
    assert 110.0 <= seconds <= 120.0


def test_an_upstream_retry_after_becomes_ours_in_whole_seconds() -> None:
    assert _unavailable(
        UpstreamUnavailable("busy", status=429, retry_after=_retry_after("7")), "m"
    ).headers == {"Retry-After": "7"}
    assert _unavailable(UpstreamUnavailable("busy", status=429), "m").headers == {"Retry-After": "1"}


@pytest.mark.parametrize("value", ["inf", "1e400", "0.5"])
def test_an_odd_upstream_retry_after_still_gives_a_429_with_a_whole_positive_delay(value: str) -> None:
    error = _unavailable(UpstreamUnavailable("busy", status=429, retry_after=_retry_after(value)), "m")
    assert error.status == 429
    assert int(error.headers["Retry-After"]) >= 1
