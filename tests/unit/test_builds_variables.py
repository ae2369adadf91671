"""Run variables (dockyard.builds.variables): {{.Run.*}}, {{.Values.*}}, v1.1.0 aliases, secret masking."""

from __future__ import annotations

import pytest

from dockyard.builds.spec import RunVariables
from dockyard.builds.variables import UnknownVariable, mask, render, template_alias

VARIABLES = RunVariables(
    run_id="dy7",
    registry="reg.example:5000",
    registry_name="reg",
    date="20300601-120000z",
    os="linux",
    architecture="arm64",
    commit="abc123",
    branch="main",
    task_name="hello",
    shared_volume="/workspace",
    values={"tag": "v1", "token": "s3cr3t", "dollar": "a$ID", "tpl": "{{.Run.ID}}", "empty": ""},
    secret_values=frozenset({"token"}),
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ID", "dy7"),
        ("Registry", "reg.example:5000"),
        ("RegistryName", "reg"),
        ("Date", "20300601-120000z"),
        ("OS", "linux"),
        ("Architecture", "arm64"),
        ("Commit", "abc123"),
        ("Branch", "main"),
        ("TaskName", "hello"),
        ("SharedVolume", "/workspace"),
    ],
)
def test_every_run_variable(name: str, expected: str) -> None:
    assert render(f"<{{{{.Run.{name}}}}}>", VARIABLES) == f"<{expected}>"


def test_templates_allow_spaces_and_repeat() -> None:
    text = "-t {{ .Run.Registry }}/app:{{.Run.ID}} -t {{.Run.Registry}}/app:{{ .Values.tag }}"
    assert render(text, VARIABLES) == "-t reg.example:5000/app:dy7 -t reg.example:5000/app:v1"


def test_values_and_empty_values() -> None:
    assert render("x{{.Values.empty}}y", VARIABLES) == "xy"
    assert render("{{.Values.tag}}", VARIABLES) == "v1"


def test_unknown_run_variable_is_named() -> None:
    with pytest.raises(UnknownVariable, match=r"unknown run variable \{\{\.Run\.Nope\}\}"):
        render("{{.Run.Nope}}", VARIABLES)


def test_missing_value_names_the_flag() -> None:
    with pytest.raises(
        UnknownVariable, match=r"no value for \{\{\.Values\.other\}\}: give it with --set other="
    ):
        render("a {{.Values.other}}", VARIABLES)


def test_unknown_variable_is_a_value_error() -> None:
    assert issubclass(UnknownVariable, ValueError)


def test_text_without_variables_is_unchanged() -> None:
    text = "echo $HOME ${ID} {{ not a template }} {.Run.ID} $"
    assert render(text, VARIABLES) == text
    assert render(text, VARIABLES, aliases=True) == text


def test_aliases_are_off_by_default() -> None:
    assert render("$Registry/app:$ID", VARIABLES) == "$Registry/app:$ID"
    assert render("$$ID", VARIABLES) == "$$ID"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$Registry/app:$ID", "reg.example:5000/app:dy7"),
        ("$RegistryName", "reg"),
        ("$RegistryName-x", "reg-x"),
        ("$Date $OS $Architecture", "20300601-120000z linux arm64"),
        ("$Commit@$Branch", "abc123@main"),
        ("$SharedVolume/out", "/workspace/out"),
        ("$IDx", "$IDx"),  # not an alias: a longer name
        ("$ID_2", "$ID_2"),
        ("$ID9", "$ID9"),
        ("$id", "$id"),  # aliases are case-sensitive
        ("$TaskName", "$TaskName"),  # not an ACR alias
        ("$$ID", "$ID"),
        ("$$HOME", "$$HOME"),  # $$ only matters before an alias
        ("a$ID.b", "ady7.b"),
        ("$ID$ID", "dy7dy7"),
        ("$$$ID", "$$ID"),
    ],
)
def test_aliases(text: str, expected: str) -> None:
    assert render(text, VARIABLES, aliases=True) == expected


def test_substituted_values_are_not_rescanned() -> None:
    # A value holding "$ID" or a template stays literal: values are data, not templates.
    assert render("{{.Values.dollar}}", VARIABLES, aliases=True) == "a$ID"
    assert render("{{.Values.tpl}}", VARIABLES, aliases=True) == "{{.Run.ID}}"
    assert render("{{.Values.tpl}}", VARIABLES) == "{{.Run.ID}}"


def test_templates_and_aliases_together() -> None:
    text = "-t $Registry/app:{{.Values.tag}}-$ID"
    assert render(text, VARIABLES, aliases=True) == "-t reg.example:5000/app:v1-dy7"


def test_template_alias() -> None:
    assert template_alias("Branch", VARIABLES) == "main"


def test_mask_replaces_every_secret_occurrence() -> None:
    assert mask("token=s3cr3t and again s3cr3t", VARIABLES) == "token=*** and again ***"


def test_mask_leaves_non_secret_values() -> None:
    assert mask("tag v1", VARIABLES) == "tag v1"


def test_mask_longest_secret_first() -> None:
    variables = RunVariables(
        run_id="r",
        registry="h",
        registry_name="h",
        date="d",
        values={"short": "abc", "long": "abcdef", "plain": "abcdef-plain"},
        secret_values=frozenset({"short", "long"}),
    )
    # Masking "abc" first would leave "def" of the longer secret in the log.
    assert mask("x abcdef y abc", variables) == "x *** y ***"


def test_mask_ignores_empty_and_undefined_secrets() -> None:
    variables = RunVariables(
        run_id="r",
        registry="h",
        registry_name="h",
        date="d",
        values={"empty": ""},
        secret_values=frozenset({"empty", "missing"}),
    )
    assert mask("nothing to hide", variables) == "nothing to hide"


def test_mask_is_deterministic_for_overlapping_secrets() -> None:
    variables = RunVariables(
        run_id="r",
        registry="h",
        registry_name="h",
        date="d",
        values={"a": "abab", "b": "baba"},
        secret_values=frozenset({"a", "b"}),
    )
    assert mask("ababa", variables) == "***a"
