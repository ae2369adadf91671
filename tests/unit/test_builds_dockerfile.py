"""Dockerfile base images (dockyard.builds.dockerfile): final stage, ARG substitution, parsing rules."""

from __future__ import annotations

import re
import textwrap

import pytest

from dockyard.builds import dockerfile
from dockyard.builds.dockerfile import DockerfileError, Stage, all_stage_bases, final_stage_bases, stages


def final(text: str, args: dict[str, str] | None = None, target: str | None = None) -> tuple[str, ...]:
    return final_stage_bases(textwrap.dedent(text), args or {}, target)


def test_single_stage() -> None:
    assert final("FROM alpine:3.19\nRUN apk add curl\n") == ("alpine:3.19",)


def test_reference_is_returned_as_written() -> None:
    assert final("FROM alpine") == ("alpine",)
    assert final("FROM reg.example:5000/team/app@sha256:" + "a" * 64) == (
        "reg.example:5000/team/app@sha256:" + "a" * 64,
    )


def test_multi_stage_takes_the_final_stage() -> None:
    text = """\
        FROM golang:1.22 AS build
        RUN go build -o /app .
        FROM gcr.io/distroless/static:nonroot
        COPY --from=build /app /app
        """
    assert final(text) == ("gcr.io/distroless/static:nonroot",)
    assert all_stage_bases(textwrap.dedent(text), {}) == ("golang:1.22", "gcr.io/distroless/static:nonroot")


def test_final_stage_built_on_an_earlier_stage_follows_the_chain() -> None:
    text = """\
        FROM debian:12 AS base
        FROM base AS deps
        FROM golang:1 AS build
        FROM DEPS
        """
    assert final(text) == ("debian:12",)
    assert all_stage_bases(textwrap.dedent(text), {}) == ("debian:12", "golang:1")


def test_a_stage_name_defined_later_is_an_image() -> None:
    text = "FROM app AS first\nFROM alpine AS app\n"
    assert final(text, target="first") == ("app",)


def test_last_definition_of_a_repeated_name_wins() -> None:
    text = "FROM a:1 AS x\nFROM b:1 AS x\nFROM x\n"
    assert final(text) == ("b:1",)


def test_scratch() -> None:
    assert final("FROM scratch\nCOPY app /\n") == ()
    assert final("FROM golang AS b\nFROM SCRATCH\n") == ()
    assert final("FROM scratch AS base\nFROM base\n") == ()
    assert all_stage_bases("FROM scratch AS s\nFROM s\nFROM alpine\n", {}) == ("alpine",)


def test_target() -> None:
    text = "FROM golang:1 AS Build\nFROM alpine AS test\nFROM build AS release\nFROM scratch\n"
    assert final(text, target="build") == ("golang:1",)
    assert final(text, target="TEST") == ("alpine",)
    assert final(text, target="release") == ("golang:1",)
    assert final(text) == ()


def test_unknown_target() -> None:
    with pytest.raises(DockerfileError, match=r"^target stage 'nope' not found$"):
        final("FROM a AS x\n", target="nope")


def test_case_insensitive_instructions_and_as() -> None:
    assert final("from alpine:3 as Base\nrun true\nFrOm base\n") == ("alpine:3",)


def test_platform_flag() -> None:
    text = "FROM --platform=$BUILDPLATFORM golang:1 AS build\nFROM --platform=linux/arm64 alpine:3\n"
    assert final(text) == ("alpine:3",)
    assert all_stage_bases(text, {}) == ("golang:1", "alpine:3")


def test_other_from_flags_are_errors() -> None:
    with pytest.raises(DockerfileError, match=r"^line 1: FROM does not take --pull$"):
        final("FROM --pull=always alpine\n")


@pytest.mark.parametrize(
    "text",
    ["FROM\n", "FROM a b\n", "FROM a AS\n", "FROM a AS b c\n", "FROM a FOR b\n", "FROM --platform=x\n"],
)
def test_malformed_from(text: str) -> None:
    with pytest.raises(DockerfileError, match=r"^line 1: expected FROM \[--platform=…\] image \[AS name\]$"):
        final(text)


def test_no_from() -> None:
    with pytest.raises(DockerfileError, match=r"^the Dockerfile has no FROM instruction$"):
        final("# just a comment\nARG A=1\n")
    with pytest.raises(DockerfileError, match="has no FROM"):
        final("")


# -- ARG substitution -------------------------------------------------------------------------------


def test_global_arg_default() -> None:
    assert final("ARG VERSION=3.19\nFROM alpine:${VERSION}\n") == ("alpine:3.19",)
    assert final("ARG VERSION=3.19\nFROM alpine:$VERSION\n") == ("alpine:3.19",)


def test_build_arg_overrides_the_default() -> None:
    assert final("ARG VERSION=3.19\nFROM alpine:${VERSION}\n", {"VERSION": "3.20"}) == ("alpine:3.20",)


def test_build_arg_fills_an_arg_without_default() -> None:
    assert final("ARG BASE\nFROM ${BASE}\n", {"BASE": "reg/base:1"}) == ("reg/base:1",)


def test_undeclared_build_args_are_not_visible() -> None:
    with pytest.raises(DockerfileError, match=r"^line 1: the base image '\$\{BASE\}' expands to ''$"):
        final("FROM ${BASE}\n", {"BASE": "reg/base:1"})


def test_args_after_the_first_from_do_not_change_from() -> None:
    text = "ARG V=1\nFROM a:${V}\nARG V=2\nFROM b:${V}\n"
    assert final(text) == ("b:1",)


def test_arg_defaults_use_earlier_args() -> None:
    text = "ARG REGISTRY=reg:5000\nARG IMAGE=${REGISTRY}/team/app\nARG TAG=1\nFROM ${IMAGE}:${TAG}\n"
    assert final(text) == ("reg:5000/team/app:1",)
    assert final(text, {"REGISTRY": "other"}) == ("other/team/app:1",)
    assert final(text, {"IMAGE": "x"}) == ("x:1",)


def test_several_args_in_one_instruction_and_quotes() -> None:
    text = "ARG A=one B=\"two\" C='three'\nFROM x/$A-$B-$C\n"
    assert final(text) == ("x/one-two-three",)


@pytest.mark.parametrize(
    ("expression", "env", "expected"),
    [
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A:-d}", {"A": "v"}, "v"),
        ("${A-d}", {}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A-d}", {"A": "v"}, "v"),
        ("${A:+x}", {}, ""),
        ("${A:+x}", {"A": ""}, ""),
        ("${A:+x}", {"A": "v"}, "x"),
        ("${A+x}", {}, ""),
        ("${A+x}", {"A": ""}, "x"),
        ("${A+x}", {"A": "v"}, "x"),
        ("${A:?oops}", {"A": "v"}, "v"),
        ("${A?oops}", {"A": ""}, ""),
        ("${A:-${B:-deep}}", {}, "deep"),
        ("${A:-${B}}", {"B": "b"}, "b"),
        ("${A}${B}", {"A": "a", "B": "b"}, "ab"),
        ("$A$B", {"A": "a", "B": "b"}, "ab"),
        ("$A.x", {"A": "a"}, "a.x"),
        ("${A:-x}y", {}, "xy"),
        ("$", {}, "$"),
        ("a$", {}, "a$"),
        ("$-x", {}, "$-x"),
        ("\\$A", {"A": "a"}, "$A"),
        ("'$A'", {"A": "a"}, "$A"),
        ('"$A"', {"A": "a"}, "a"),
        ('"\\$A"', {"A": "a"}, "$A"),
        ('"a\\b"', {}, "a\\b"),
        ("${A:-'q'}", {}, "q"),
        ('${A:-"$B"}', {"B": "b"}, "b"),
        ("${A:-}", {}, ""),
        ("$UNSET", {}, ""),
    ],
)
def test_substitution(expression: str, env: dict[str, str], expected: str) -> None:
    text = "".join(f"ARG {name}\n" for name in env) + f"FROM x/{expression}/y\n"
    stage = stages(text, env)[0]
    assert stage.base == f"x/{expected}/y"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("${A:?required}", "line 1: A: required"),
        ("${A?}", "line 1: A: is not set"),
        ("${A", r"line 1: missing '}' in"),
        ("${A:-x", r"line 1: missing '}' in"),
        ("${}", "line 1: bad substitution in"),
        ("${A#x}", "line 1: unsupported substitution in"),
        ("${A/x/y}", "line 1: unsupported substitution in"),
        ("'abc", "line 1: unterminated single quote"),
        ('"abc', "line 1: unterminated double quote"),
    ],
)
def test_substitution_errors(expression: str, message: str) -> None:
    with pytest.raises(DockerfileError, match="^" + re.escape(message)):
        final(f"FROM {expression}\n")


def test_platform_args_are_predefined() -> None:
    text = "FROM base-${TARGETARCH}${TARGETVARIANT:+-$TARGETVARIANT}:${TARGETOS}\n"
    assert final(text) == ("base-amd64:linux",)
    assert final_stage_bases(text, {}, platform="linux/arm/v7") == ("base-arm-v7:linux",)
    assert all_stage_bases("FROM x:$BUILDPLATFORM", {}, platform="linux/arm64") == ("x:linux/arm64",)


def test_arg_without_name() -> None:
    with pytest.raises(DockerfileError, match=r"^line 1: ARG needs a name$"):
        final("ARG =x\nFROM a\n")


def test_expansion_bomb_is_bounded() -> None:
    lines = ["ARG A0=" + "x" * 64]
    lines += [f"ARG A{i}=${{A{i - 1}}}${{A{i - 1}}}${{A{i - 1}}}${{A{i - 1}}}" for i in range(1, 20)]
    lines.append("FROM $A19")
    with pytest.raises(DockerfileError, match="a substituted value is too long"):
        final_stage_bases("\n".join(lines), {})


def test_expanded_base_with_spaces_is_refused() -> None:
    with pytest.raises(DockerfileError, match=r"^line 2: the base image '\$B' expands to 'a b'$"):
        final('ARG B="a b"\nFROM $B\n')


# -- lexical rules ---------------------------------------------------------------------------------


def test_comments_blank_lines_and_indentation() -> None:
    text = "# comment\n\n   # indented comment\n  FROM   alpine:1   AS   base  \n\t\nFROM base\n"
    assert final_stage_bases(text, {}) == ("alpine:1",)


def test_comments_and_blank_lines_inside_a_from_continuation() -> None:
    text = "FROM a \\\n# comment\n   # indented comment\n\n AS b\nFROM b\n"
    assert final_stage_bases(text, {}) == ("a",)


def test_continuation_without_space_before_the_escape() -> None:
    assert stages("FROM alpine:3\\\n AS b\n", {}) == [Stage("alpine:3", "b", 1)]


def test_explicit_backslash_escape_directive() -> None:
    assert final_stage_bases("# escape=\\\nFROM a \\\n AS b\nFROM b\n", {}) == ("a",)


def test_lone_carriage_returns_are_not_line_breaks() -> None:
    # BuildKit splits lines on \n (dropping a \r before it), not on a lone \r.
    with pytest.raises(DockerfileError, match="expected FROM"):
        final_stage_bases("FROM a\rFROM b\n", {})


def test_size_bound_is_inclusive() -> None:
    text = "FROM a\n#"
    text += "x" * (dockerfile.MAX_DOCKERFILE_BYTES - len(text))
    assert final_stage_bases(text, {}) == ("a",)


def test_arg_words_keep_escaped_and_quoted_spaces() -> None:
    message = r"^line 2: the base image '\$A' expands to 'x y'$"
    with pytest.raises(DockerfileError, match=message):
        final_stage_bases("ARG A=x\\ y\nFROM $A\n", {})
    with pytest.raises(DockerfileError, match=message):
        final_stage_bases('ARG A="x y"\nFROM $A\n', {})
    with pytest.raises(DockerfileError, match=message):
        final_stage_bases("ARG A='x y'\nFROM $A\n", {})
    with pytest.raises(DockerfileError, match=message.replace("line 2", "line 3")):
        final_stage_bases("# escape=`\nARG A=x` y\nFROM $A\n", {})


def test_arg_values_with_escapes_and_quotes() -> None:
    assert final_stage_bases("# escape=`\nARG A=x`$y\nFROM $A\n", {}) == ("x$y",)
    assert final_stage_bases('ARG A="q\\"x" B=2\nFROM x/$A:$B\n', {}) == ('x/q"x:2',)
    assert final_stage_bases("ARG A='a\\b' B=\\'c\nFROM x/$A$B\n", {}) == ("x/a\\b'c",)
    assert final_stage_bases("ARG A='a'-'b' B=''c\nFROM x/$A$B\n", {}) == ("x/a-bc",)


def test_arg_errors_name_their_line() -> None:
    with pytest.raises(DockerfileError, match=r"^line 2: B: missing$"):
        final_stage_bases("# c\nARG A=${B:?missing}\nFROM a\n", {})


def test_value_length_bound_is_inclusive() -> None:
    limit = dockerfile.MAX_VALUE_LENGTH
    assert final_stage_bases("ARG A\nFROM $A\n", {"A": "x" * limit}) == ("x" * limit,)
    with pytest.raises(DockerfileError, match="too long"):
        final_stage_bases("ARG A\nFROM $A\n", {"A": "x" * (limit + 1)})


def test_all_stage_bases_use_build_args() -> None:
    assert all_stage_bases("ARG V=1\nFROM a:$V\nFROM b:$V\n", {"V": "2"}) == ("a:2", "b:2")


def test_platform_without_architecture() -> None:
    assert final_stage_bases(
        "FROM x:${TARGETOS}-${TARGETARCH:-none}-${TARGETVARIANT:-none}", {}, platform="linux"
    ) == ("x:linux-none-none",)


def test_line_continuations() -> None:
    text = "FROM \\\n  alpine:3 \\\n  AS base\nRUN echo a \\\n# a comment inside\n\n  b\nFROM \\\n base\n"
    assert final_stage_bases(text, {}) == ("alpine:3",)
    assert stages(text, {}) == [Stage("alpine:3", "base", 1), Stage("base", None, 8)]


def test_continuation_with_trailing_spaces_and_at_the_end() -> None:
    assert final_stage_bases("FROM alpine \\  \n  AS x\nFROM x \\", {}) == ("alpine",)
    assert final_stage_bases("FROM alpine:1 \\\n\n", {}) == ("alpine:1",)


def test_crlf_line_endings() -> None:
    assert final_stage_bases("ARG V=1\r\nFROM a:${V} \\\r\n AS b\r\nFROM b\r\n", {}) == ("a:1",)


def test_escape_directive_backtick() -> None:
    text = (
        "# escape=`\n\nFROM mcr.microsoft.com/windows/servercore:ltsc2022 `\n  AS base\n"
        "RUN dir c:\\\nFROM base\n"
    )
    assert final_stage_bases(text, {}) == ("mcr.microsoft.com/windows/servercore:ltsc2022",)


def test_escape_directive_backtick_escapes_dollar() -> None:
    assert stages("# escape=`\nARG A=1\nFROM x`$A:$A\n", {})[0].base == "x$A:1"


def test_syntax_and_check_directives_then_escape() -> None:
    text = "# syntax=docker/dockerfile:1\n# check=skip=all\n#escape=`\nFROM a `\n AS b\nFROM b\n"
    assert final_stage_bases(text, {}) == ("a",)


def test_directives_stop_at_the_first_comment_or_blank_line() -> None:
    # The escape "directive" after a comment is a comment: backslash still continues lines.
    text = "# a comment\n# escape=`\nFROM a \\\n AS b\nFROM b\n"
    assert final_stage_bases(text, {}) == ("a",)
    text = "\n# escape=`\nFROM a \\\n AS b\nFROM b\n"
    assert final_stage_bases(text, {}) == ("a",)


def test_unknown_directive_ends_directives() -> None:
    text = "# foo=bar\n# escape=`\nFROM a \\\n AS b\nFROM b\n"
    assert final_stage_bases(text, {}) == ("a",)


def test_bom_before_directive() -> None:
    text = "\ufeff# escape=`\nFROM a `\n AS b\nFROM b\n"
    assert final_stage_bases(text, {}) == ("a",)


def test_bad_directives() -> None:
    with pytest.raises(DockerfileError, match=r"^line 1: invalid escape character 'x'$"):
        final_stage_bases("# escape=x\nFROM a\n", {})
    with pytest.raises(DockerfileError, match=r"^line 2: the escape directive is given twice$"):
        final_stage_bases("# escape=`\n# ESCAPE=\\\nFROM a\n", {})


def test_heredoc_bodies_are_not_instructions() -> None:
    text = textwrap.dedent(
        """\
        FROM alpine:3 AS base
        RUN <<EOF
        FROM evil:1
        EOF
        COPY <<-"END" /etc/conf
        \tFROM evil:2
        \tEND
        RUN cat <<one <<'two' && true
        FROM evil:3
        one
        FROM evil:4
        two
        FROM busybox:1
        """
    )
    assert final_stage_bases(text, {}) == ("busybox:1",)
    assert all_stage_bases(text, {}) == ("alpine:3", "busybox:1")


def test_heredoc_dash_strips_tabs_only_with_dash() -> None:
    assert final_stage_bases("FROM a\nRUN <<-EOF\n\techo\n\tEOF\nFROM b\n", {}) == ("b",)
    # Without "-", a tab-indented terminator does not end the body.
    text = "FROM a\nRUN <<EOF\n\tEOF\nFROM evil\nEOF\nFROM b\n"
    assert all_stage_bases(text, {}) == ("a", "b")


def test_heredoc_with_fd_and_quotes() -> None:
    text = 'FROM a\nRUN 3<<"X" cat <&3\nFROM evil\nX\nFROM b\n'
    assert all_stage_bases(text, {}) == ("a", "b")


def test_shell_shift_is_not_a_heredoc() -> None:
    text = "FROM a AS x\nRUN echo $((1<<2))\nFROM x\n"
    assert final_stage_bases(text, {}) == ("a",)


def test_unterminated_heredoc_consumes_the_rest() -> None:
    text = "FROM a\nRUN <<EOF\nFROM b\n"
    assert final_stage_bases(text, {}) == ("a",)


def test_heredoc_only_for_run_copy_add() -> None:
    text = "FROM a\nLABEL x=<<EOF\nFROM b\n"
    assert final_stage_bases(text, {}) == ("b",)


def test_size_bound() -> None:
    big = "FROM a\n" + "#" * dockerfile.MAX_DOCKERFILE_BYTES
    with pytest.raises(DockerfileError, match=r"^the Dockerfile is larger than 1024 KiB$"):
        final_stage_bases(big, {})


def test_stage_lines() -> None:
    text = "# c\nARG A=1\n\nFROM x:$A AS One\nRUN a \\\n b\nFROM one\n"
    assert stages(text, {}) == [Stage("x:1", "one", 4), Stage("one", None, 7)]


def test_dockerfile_error_is_a_value_error() -> None:
    assert issubclass(DockerfileError, ValueError)
