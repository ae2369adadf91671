"""parse_build_command: docker build's flags as ACR task files write them → BuildRequest."""

from __future__ import annotations

import pytest

from dockyard.builds.buildcmd import parse_build_command, relative_path
from dockyard.builds.interfaces import BuildError
from dockyard.builds.spec import BuildRequest


def test_every_flag() -> None:
    request = parse_build_command(
        "-t reg:5000/app:1 --tag=reg:5000/app:latest -f docker/Dockerfile.prod --build-arg A=1 "
        "--build-arg=B=two=2 --target final --platform linux/arm64 --label org.x=y --label=z= "
        "--no-cache --pull app"
    )
    assert request == BuildRequest(
        tags=("reg:5000/app:1", "reg:5000/app:latest"),
        context="app",
        dockerfile="docker/Dockerfile.prod",
        build_args=(("A", "1"), ("B", "two=2")),
        target="final",
        platform="linux/arm64",
        labels=(("org.x", "y"), ("z", "")),
        no_cache=True,
        pull=True,
    )


def test_defaults_and_short_inline_forms() -> None:
    assert parse_build_command(".") == BuildRequest(tags=())
    request = parse_build_command("-tapp:1 -fDockerfile.x ./sub/../sub/")
    assert request.tags == ("app:1",)
    assert request.dockerfile == "Dockerfile.x"
    assert request.context == "sub"
    assert parse_build_command("--no-cache=false --pull=true .").no_cache is False
    assert parse_build_command("--no-cache=false --pull=true .").pull is True
    assert parse_build_command("--no-cache=1 --pull=0 .") == BuildRequest(tags=(), no_cache=True, pull=False)


def test_quoting_keeps_spaces() -> None:
    request = parse_build_command("""--build-arg "MSG=hello world" --label 'a=b c' -t x .""")
    assert request.build_args == (("MSG", "hello world"),)
    assert request.labels == (("a", "b c"),)


def test_build_arg_without_value_comes_from_the_step_env() -> None:
    assert parse_build_command("--build-arg TOKEN .", {"TOKEN": "s3"}).build_args == (("TOKEN", "s3"),)
    assert parse_build_command("--build-arg TOKEN --build-arg X=1 .", {}).build_args == (("X", "1"),)
    assert parse_build_command("--build-arg TOKEN .").build_args == ()


def test_double_dash_ends_the_flags() -> None:
    assert parse_build_command("-t a -- sub").context == "sub"
    with pytest.raises(BuildError, match="exactly one context"):
        parse_build_command("-- -t a")  # "-t" and "a" are two positionals


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-t a", "exactly one context.*none"),
        ("-t a . other", "exactly one context.*'.', 'other'"),
        ("--squash --rm -q --squash .", "unsupported build flag\\(s\\): --squash, --rm, -q$"),
        ("--network=host .", "unsupported build flag\\(s\\): --network"),
        ("-t", "-t needs a value"),
        ("--file", "--file needs a value"),
        ("-f a -f b .", "--file given 2 times"),
        ("--target a --target b .", "--target given 2 times"),
        ("--platform a --platform=b .", "--platform given 2 times"),
        ("--label novalue .", "--label 'novalue': expected KEY=value"),
        ("--build-arg =x .", "expected KEY=value"),
        ("--build-arg 1A=x .", "expected KEY=value"),
        ("--no-cache=maybe .", "--no-cache=maybe: expected true or false"),
        ("-t '' .", "empty or blank"),
        ("-t 'a b' .", "empty or blank"),
        ("'unterminated .", "cannot parse the build arguments"),
        ("https://github.com/x/y.git", "URLs"),
        ("git@github.com:x/y.git", "URLs"),
        ("github.com/x/y", "URLs"),
        ("/abs", "must be relative"),
        ("..", "leaves the run's context"),
        ("a/../../b", "leaves the run's context"),
        ("-", "expected a path inside"),
        ("-f /etc/passwd .", "-f '/etc/passwd': must be relative"),
        ("-f ../Dockerfile .", "-f '../Dockerfile': leaves"),
        ("-f - .", "-f '-': expected a path"),
    ],
)
def test_refused(text: str, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        parse_build_command(text)


def test_relative_path_normalises() -> None:
    assert relative_path("./a//b/", "x") == "a/b"
    assert relative_path("a/..", "x") == "."
    with pytest.raises(BuildError, match="x ''"):
        relative_path("", "x")
    with pytest.raises(BuildError):
        relative_path("a\x00b", "x")


@pytest.mark.parametrize(
    ("platform", "machine", "flags"),
    [
        (None, "x86_64", []),
        ("linux/amd64", "x86_64", []),
        ("linux/arm64", "x86_64", ["--platform", "linux/arm64"]),
        ("linux/arm64", "aarch64", []),
        ("linux/amd64", "aarch64", ["--platform", "linux/amd64"]),
        ("linux/amd64", "riscv64", ["--platform", "linux/amd64"]),
    ],
)
def test_platform_flag_only_for_another_platform(platform, machine, flags):
    from dockyard.builds.buildah import platform_flags

    assert platform_flags(platform, machine) == flags
