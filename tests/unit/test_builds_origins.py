"""Context origins and plain-HTTP rules: where a task's git access token may go."""

from __future__ import annotations

import pytest

from dockyard.builds.origins import LOCAL, context_origin, plain_http_allowed, plain_http_refused


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("https://git.example/a.git#main", "https://GIT.example:443/b.git#dev:src"),
        ("http://git.example/a.git", "http://git.example:80/a.git"),
        ("/srv/git/a", "/dev/null"),
    ],
)
def test_same_origin(first: str, second: str) -> None:
    assert context_origin(first) == context_origin(second)


@pytest.mark.parametrize(
    "other",
    [
        "http://git.example/a.git",
        "https://git.example:8443/a.git",
        "https://evil.example/a.git",
        "https://git.example@evil.example/a.git",
        "https://git.example.evil.example/a.git",
        "oci://git.example/ctx:1",
        "git@git.example:a.git",
        "https://git.example:99999/a.git",
        "/srv/git/a",
    ],
)
def test_other_origin(other: str) -> None:
    assert context_origin(other) != context_origin("https://git.example/a.git")


def test_local_paths_are_one_origin() -> None:
    assert context_origin("/srv/git/a#main:sub") == LOCAL


def test_plain_http_needs_insecure_upstreams() -> None:
    assert plain_http_refused("http://git.example/a.git#main", []) == "git.example"
    assert plain_http_refused("http://git.example:8080/a.git", ["git.example:80"]) == "git.example:8080"
    assert plain_http_refused("http://git.example:8080/a.git", ["GIT.example:8080"]) is None
    assert plain_http_refused("http://git.example/a.git", ["git.example"]) is None
    assert plain_http_refused("https://git.example/a.git", []) is None
    assert plain_http_allowed("git.example", None, ["git.example:80"])
    assert not plain_http_allowed("git.example", 8080, ["other.example"])
