"""Task files (dockyard.builds.taskfile): acr-task.yaml → TaskSpec, versions, bounds, shapes, ids and `when`
(templates, hostile input and the quick specs: test_builds_taskfile_input.py)."""

from __future__ import annotations

import textwrap

import pytest

from dockyard.builds.spec import Step, TaskSpec
from dockyard.builds.taskfile import (
    TaskFileError,
    dependencies,
    load_task_file,
    step_order,
)


def load(text: str) -> TaskSpec:
    return load_task_file(textwrap.dedent(text))


def refused(text: str, message: str) -> None:
    with pytest.raises(TaskFileError) as caught:
        load(text)
    assert str(caught.value) == message


# -- ACR's own examples -----------------------------------------------------------------------------


def test_acr_hello_world_build_and_push() -> None:
    spec = load(
        """\
        version: v1.1.0
        steps:
          - build: -t $Registry/hello-world:$ID .
          - push: ["$Registry/hello-world:$ID"]
        """
    )
    assert spec.version == "v1.1.0"
    assert spec.aliases
    assert spec.step_timeout == 600
    assert spec.working_directory == "/workspace"
    assert spec.env == ()
    build, push = spec.steps
    assert build == Step(
        id="acb_step_0", kind="build", command="-t $Registry/hello-world:$ID .", retry_delay=5
    )
    assert push == Step(id="acb_step_1", kind="push", images=("$Registry/hello-world:$ID",), retry_delay=5)
    assert dependencies(spec) == {"acb_step_0": (), "acb_step_1": ("acb_step_0",)}


def test_acr_parallel_build_test_and_helm_example() -> None:
    spec = load(
        """\
        version: v1.1.0
        steps:
          - id: build-web
            build: -t $Registry/hello-world:$ID .
            when: ["-"]
          - id: build-tests
            build: -t $Registry/hello-world-tests ./funcTests
            when: ["-"]
          - id: push
            push: ["$Registry/helloworld:$ID"]
            when: ["build-web", "build-tests"]
          - id: hello-world-web
            cmd: $Registry/helloworld:$ID
          - id: funcTests
            cmd: $Registry/helloworld:$ID
            env: ["host=helloworld:80"]
          - cmd: $Registry/functions/helm package --app-version $ID -d ./helm ./helm/helloworld/
          - cmd: >-
              $Registry/functions/helm upgrade helloworld ./helm/helloworld/ --reuse-values
              --set helloworld.image=$Registry/helloworld:$ID
        """
    )
    ids = [step.id for step in spec.steps]
    assert ids == [
        "build-web",
        "build-tests",
        "push",
        "hello-world-web",
        "funcTests",
        "acb_step_5",
        "acb_step_6",
    ]
    assert spec.steps[0].when == ("-",)
    assert spec.steps[2].when == ("build-web", "build-tests")
    assert spec.steps[4].env == ("host=helloworld:80",)
    assert spec.steps[6].command.endswith("--set helloworld.image=$Registry/helloworld:$ID")
    assert dependencies(spec) == {
        "build-web": (),
        "build-tests": (),
        "push": ("build-web", "build-tests"),
        "hello-world-web": ("push",),
        "funcTests": ("hello-world-web",),
        "acb_step_5": ("funcTests",),
        "acb_step_6": ("acb_step_5",),
    }
    assert step_order(spec) == [
        ["build-web", "build-tests"],
        ["push"],
        ["hello-world-web"],
        ["funcTests"],
        ["acb_step_5"],
        ["acb_step_6"],
    ]


def test_acr_v1_templates_unquoted_as_acr_expands_them_before_yaml() -> None:
    # ACR renders templates before parsing; a plain {{…}} would otherwise be a YAML flow mapping.
    spec = load(
        """\
        version: v1.0.0
        steps:
          - build: -t {{.Run.Registry}}/hello-world -f hello-world.dockerfile .
          - cmd: {{.Run.Registry}}/hello-world:{{.Run.ID}}
          - push:
            - {{.Run.Registry}}/hello-world:{{.Run.ID}}
            - "{{.Run.Registry}}/hello-world:{{.Values.tag}}"
        """
    )
    assert not spec.aliases
    assert spec.steps[1].command == "{{.Run.Registry}}/hello-world:{{.Run.ID}}"
    assert spec.steps[2].images == (
        "{{.Run.Registry}}/hello-world:{{.Run.ID}}",
        "{{.Run.Registry}}/hello-world:{{.Values.tag}}",
    )


def test_acr_step_timeout_and_step_properties() -> None:
    spec = load(
        """\
        version: v1.1.0
        stepTimeout: 60
        workingDirectory: /src
        env: ["A=1", "B=two words"]
        steps:
          - cmd: mcr.microsoft.com/hello-world
            timeout: 5
          - id: tests
            cmd: $Registry/app:$ID pytest -q
            retries: 3
            retryDelay: 10
            startDelay: 2
            ignoreErrors: true
            detach: false
            entryPoint: /bin/sh
            workingDirectory: /src/tests
            user: "1000:1000"
            pull: true
            disableWorkingDirectoryOverride: true
            env: ["CI=1"]
          - cmd: bash echo done
        """
    )
    first, tests, last = spec.steps
    assert spec.step_timeout == 60
    assert spec.working_directory == "/src"
    assert spec.env == ("A=1", "B=two words")
    assert first.timeout == 5
    assert last.timeout == 60
    assert last.retry_delay == 5  # ACR's default pause between retries
    assert tests == Step(
        id="tests",
        kind="cmd",
        command="$Registry/app:$ID pytest -q",
        timeout=60,
        retries=3,
        retry_delay=10,
        start_delay=2,
        ignore_errors=True,
        detach=False,
        env=("CI=1",),
        entry_point="/bin/sh",
        working_directory="/src/tests",
        user="1000:1000",
        pull=True,
        disable_working_directory_override=True,
    )


def test_detached_cmd_step() -> None:
    spec = load("steps:\n  - id: web\n    cmd: nginx\n    detach: true\n")
    assert spec.steps[0].detach is True


def test_acr_keyvault_secret_is_refused_with_the_alternative() -> None:
    refused(
        """\
        secrets:
          - id: username
            keyvault: https://myakv.vault.azure.net/secrets/UserName
        steps:
          - cmd: bash echo {{.Secrets.username}}
        """,
        "secrets[0].keyvault: Key Vault secrets are not supported; use --set-secret NAME=value and "
        "{{.Values.NAME}}",
    )


def test_other_secret_entries_are_refused() -> None:
    refused(
        "secrets: [{id: a}]\nsteps: [{cmd: x}]\n",
        "secrets[0]: secrets are not supported; use --set-secret NAME=value",
    )
    refused("secrets: a\nsteps: [{cmd: x}]\n", "secrets: expected a list, got a string")


def test_empty_secrets_are_accepted() -> None:
    assert load("secrets: []\nsteps: [{cmd: x}]\n").steps[0].command == "x"


@pytest.mark.parametrize("key", ["networks", "volumes", "alias"])
def test_refused_task_properties(key: str) -> None:
    refused(f"{key}: []\nsteps: [{{cmd: x}}]\n", f"{key} is not supported")


@pytest.mark.parametrize(
    "key",
    [
        "network",
        "privileged",
        "volumeMount",
        "volumeMounts",
        "isolation",
        "keep",
        "ports",
        "expose",
        "repeat",
        "secret",
        "cpus",
        "cache",
        "exitedWith",
        "retryOnErrors",
    ],
)
def test_refused_step_properties(key: str) -> None:
    refused(f"steps:\n  - cmd: a\n  - cmd: b\n    {key}: x\n", f"steps[1].{key} is not supported")


def test_unknown_keys_are_refused() -> None:
    refused("stepTimeOut: 5\nsteps: [{cmd: a}]\n", "stepTimeOut: unknown property")
    refused("steps: [{cmd: a, tiemout: 5}]\n", "steps[0].tiemout: unknown property")


# -- versions, defaults, bounds --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "version"),
    [("v1.0.0", "v1.0.0"), ("V1.1.0", "v1.1.0"), ("1.0-preview-1", "v1.0.0"), ("v1.1.0", "v1.1.0")],
)
def test_versions(given: str, version: str) -> None:
    spec = load(f"version: {given}\nsteps: [{{cmd: a}}]\n")
    assert spec.version == version
    assert spec.aliases is (version == "v1.1.0")


def test_default_version_has_no_aliases() -> None:
    spec = load("steps: [{cmd: a}]\n")
    assert spec.version == "v1.0.0"
    assert not spec.aliases


@pytest.mark.parametrize("given", ["v2.0.0", "1.1", "latest", "v1.0.0 "])
def test_unknown_versions(given: str) -> None:
    with pytest.raises(TaskFileError, match=r"^version: .* is not supported \(use v1.0.0 or v1.1.0\)$"):
        load(f"version: '{given}'\nsteps: [{{cmd: a}}]\n")


def test_version_must_be_a_string() -> None:
    refused("version: 1.1\nsteps: [{cmd: a}]\n", "version: expected a string, got a number")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stepTimeout: 0\nsteps: [{cmd: a}]", "stepTimeout: must be between 1 and 28800, got 0"),
        ("stepTimeout: 28801\nsteps: [{cmd: a}]", "stepTimeout: must be between 1 and 28800, got 28801"),
        ("stepTimeout: '60'\nsteps: [{cmd: a}]", "stepTimeout: expected an integer, got a string"),
        ("stepTimeout: true\nsteps: [{cmd: a}]", "stepTimeout: expected an integer, got a boolean"),
        ("stepTimeout: 1.5\nsteps: [{cmd: a}]", "stepTimeout: expected an integer, got a number"),
        ("steps: [{cmd: a, timeout: 0}]", "steps[0].timeout: must be between 1 and 28800, got 0"),
        ("steps: [{cmd: a, timeout: -5}]", "steps[0].timeout: must be between 1 and 28800, got -5"),
        ("steps: [{cmd: a, timeout: 28801}]", "steps[0].timeout: must be between 1 and 28800, got 28801"),
        ("steps: [{cmd: a, retries: -1}]", "steps[0].retries: must be between 0 and 100, got -1"),
        ("steps: [{cmd: a, retries: 101}]", "steps[0].retries: must be between 0 and 100, got 101"),
        ("steps: [{cmd: a, retryDelay: -1}]", "steps[0].retryDelay: must be between 0 and 28800, got -1"),
        (
            "steps: [{cmd: a, retryDelay: 28801}]",
            "steps[0].retryDelay: must be between 0 and 28800, got 28801",
        ),
        ("steps: [{cmd: a, startDelay: -1}]", "steps[0].startDelay: must be between 0 and 28800, got -1"),
        (
            "steps: [{cmd: a, startDelay: 28801}]",
            "steps[0].startDelay: must be between 0 and 28800, got 28801",
        ),
        (
            "steps: [{cmd: a, ignoreErrors: 1}]",
            "steps[0].ignoreErrors: expected true or false, got an integer",
        ),
        ("steps: [{cmd: a, detach: 'yes'}]", "steps[0].detach: expected true or false, got a string"),
        ("steps: [{cmd: a, pull: null}]", "steps[0].pull: expected true or false, got null"),
        (
            "steps: [{cmd: a, disableWorkingDirectoryOverride: []}]",
            "steps[0].disableWorkingDirectoryOverride: expected true or false, got a list",
        ),
    ],
)
def test_bad_numbers_and_booleans(text: str, message: str) -> None:
    refused(text, message)


def test_bounds_are_inclusive() -> None:
    spec = load(
        "stepTimeout: 28800\nsteps:\n"
        "  - {cmd: a, timeout: 1, retries: 100, retryDelay: 0, startDelay: 28800}\n"
        "  - {cmd: b, retryDelay: 28800, startDelay: 0, retries: 0}\n"
    )
    first, second = spec.steps
    assert (first.timeout, first.retries, first.retry_delay, first.start_delay) == (1, 100, 0, 28800)
    assert (second.timeout, second.retry_delay) == (28800, 28800)


# -- types and shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the task file is empty"),
        ("# only a comment\n", "the task file is empty"),
        ("- build: .", "task file: expected a mapping, got a list"),
        ("just text", "task file: expected a mapping, got a string"),
        ("version: v1.0.0", "steps: a task file needs at least one step"),
        ("steps: []", "steps: a task file needs at least one step"),
        ("steps:", "steps: a task file needs at least one step"),
        ("steps: {cmd: a}", "steps: expected a list, got a mapping"),
        ("steps: cmd a", "steps: expected a list, got a string"),
        ("steps: [cmd a]", "steps[0]: expected a mapping, got a string"),
        ("steps: [{cmd: a}, null]", "steps[1]: expected a mapping, got null"),
        ("steps: [{1: a}]", "steps[0]: keys must be strings, got an integer 1"),
        ("steps: [{id: a}]", "steps[0]: a step needs exactly one of build, push, cmd (found none)"),
        (
            "steps: [{build: a, push: [b]}]",
            "steps[0]: a step needs exactly one of build, push, cmd (found build, push)",
        ),
        (
            "steps: [{build: ., cmd: b}]",
            "steps[0]: a step needs exactly one of build, push, cmd (found build, cmd)",
        ),
        ("steps: [{build: ['-t', 'x']}]", "steps[0].build: expected a string, got a list"),
        ("steps: [{build: ''}]", "steps[0].build: must not be empty"),
        ("steps: [{cmd: '   '}]", "steps[0].cmd: must not be empty"),
        ("steps: [{cmd: 5}]", "steps[0].cmd: expected a string, got an integer"),
        ("steps: [{push: app:1}]", "steps[0].push: expected a list, got a string"),
        ("steps: [{push: []}]", "steps[0].push: list at least one image"),
        ("steps: [{push: [app, 5]}]", "steps[0].push[1]: expected a string, got an integer"),
        ("steps: [{push: [{a: b}]}]", "steps[0].push[0]: expected a string, got a mapping"),
        ("steps: [{cmd: a, env: A=1}]", "steps[0].env: expected a list, got a string"),
        ("steps: [{cmd: a, env: [A]}]", "steps[0].env[0]: expected NAME=value, got 'A'"),
        ("steps: [{cmd: a, env: ['=1']}]", "steps[0].env[0]: expected NAME=value, got '=1'"),
        ("steps: [{cmd: a, env: ['1A=1']}]", "steps[0].env[0]: expected NAME=value, got '1A=1'"),
        ("env: {A: 1}\nsteps: [{cmd: a}]", "env: expected a list, got a mapping"),
        ("env: [A=1, 3]\nsteps: [{cmd: a}]", "env[1]: expected a string, got an integer"),
        ("workingDirectory: 5\nsteps: [{cmd: a}]", "workingDirectory: expected a string, got an integer"),
        ("workingDirectory: ''\nsteps: [{cmd: a}]", "workingDirectory: must not be empty"),
        ("steps: [{cmd: a, entryPoint: ''}]", "steps[0].entryPoint: must not be empty"),
        ("steps: [{cmd: a, user: 0}]", "steps[0].user: expected a string, got an integer"),
        ("steps: [{cmd: a, when: '-'}]", "steps[0].when: expected a list, got a string"),
        ("steps: [{cmd: a, when: [1]}]", "steps[0].when[0]: expected a string, got an integer"),
        ("steps: [{cmd: a, timeout: 2019-01-01}]", "steps[0].timeout: expected an integer, got date"),
        ("steps: [{cmd: !!binary aGk=}]", "steps[0].cmd: expected a string, got bytes"),
        ("steps: [{cmd: 'echo \"unbalanced'}]", "steps[0].cmd: No closing quotation in 'echo \"unbalanced'"),
        ('steps: [{build: "-t \'x ."}]', 'steps[0].build: No closing quotation in "-t \'x ."'),
    ],
)
def test_bad_shapes(text: str, message: str) -> None:
    refused(text, message)


@pytest.mark.parametrize(
    "key", ["detach", "entryPoint", "user", "pull", "disableWorkingDirectoryOverride", "workingDirectory"]
)
@pytest.mark.parametrize("kind", ["build: .", "push: [a]"])
def test_cmd_only_properties(key: str, kind: str) -> None:
    value = "true" if key in ("detach", "pull", "disableWorkingDirectoryOverride") else "x"
    refused(f"steps:\n  - {kind}\n    {key}: {value}\n", f"steps[0].{key}: applies to cmd steps only")


def test_env_and_timing_apply_to_every_kind() -> None:
    spec = load(
        "steps:\n"
        "  - {build: ., env: [DOCKER_BUILDKIT=1], retries: 1, timeout: 9}\n"
        "  - {push: [a], startDelay: 3, ignoreErrors: true}\n"
    )
    assert spec.steps[0].env == ("DOCKER_BUILDKIT=1",)
    assert spec.steps[0].retries == 1
    assert spec.steps[1].start_delay == 3
    assert spec.steps[1].ignore_errors


def test_yaml_booleans_and_quoted_numbers_stay_typed() -> None:
    spec = load("steps: [{cmd: a, ignoreErrors: yes, id: 'no'}]\n")
    assert spec.steps[0].ignore_errors is True
    assert spec.steps[0].id == "no"


# -- ids and when -----------------------------------------------------------------------------------


@pytest.mark.parametrize("step_id", ["a", "A9", "build-web", "acb_step_7", "x.y", "a" * 63, "9lives"])
def test_valid_ids(step_id: str) -> None:
    assert load(f"steps: [{{id: '{step_id}', cmd: a}}]").steps[0].id == step_id


@pytest.mark.parametrize(
    "step_id", ["-", "-a", "_a", ".a", "a b", "a/b", "a" * 64, "acb_root", "é", "a\tb", "a:b"]
)
def test_invalid_ids(step_id: str) -> None:
    with pytest.raises(TaskFileError, match=r"^steps\[0\]\.id: .* is not a valid step id"):
        load(f"steps: [{{id: '{step_id}', cmd: a}}]")


def test_empty_id() -> None:
    refused("steps: [{id: '', cmd: a}]", "steps[0].id: must not be empty")


def test_duplicate_ids() -> None:
    refused(
        "steps:\n  - {id: a, cmd: x}\n  - {id: b, cmd: x}\n  - {id: a, cmd: x}\n",
        'steps[2].id: "a" is already the id of steps[0]',
    )


def test_explicit_id_may_not_collide_with_a_default_id() -> None:
    refused(
        "steps:\n  - {cmd: x}\n  - {id: acb_step_0, cmd: x}\n",
        'steps[1].id: "acb_step_0" is already the id of steps[0]',
    )


def test_unknown_when_id() -> None:
    refused("steps:\n  - {id: a, cmd: x}\n  - {cmd: y, when: [a, x]}\n", 'steps[1].when: unknown step id "x"')


def test_when_dash_with_ids() -> None:
    refused(
        'steps:\n  - {id: a, cmd: x}\n  - {cmd: y, when: [a, "-"]}\n',
        'steps[1].when: "-" cannot be combined with step ids',
    )
    refused(
        'steps:\n  - {id: a, cmd: x}\n  - {cmd: y, when: ["-", a]}\n',
        'steps[1].when: "-" cannot be combined with step ids',
    )


def test_when_self() -> None:
    refused("steps:\n  - {id: a, cmd: x, when: [a]}\n", 'steps[0].when: a step cannot wait for itself ("a")')


def test_when_twice() -> None:
    refused(
        "steps:\n  - {id: a, cmd: x}\n  - {id: b, cmd: x}\n  - {cmd: y, when: [a, b, a]}\n",
        "steps[2].when: a step id is listed twice",
    )


def test_empty_or_null_when_means_after_the_previous_step() -> None:
    spec = load(
        "steps:\n  - {id: a, cmd: x}\n  - {id: b, cmd: y, when: []}\n  - {id: c, cmd: z, when: null}\n"
    )
    assert [step.when for step in spec.steps] == [None, None, None]
    assert dependencies(spec) == {"a": (), "b": ("a",), "c": ("b",)}


def test_when_may_name_a_later_step() -> None:
    spec = load("steps:\n  - {id: a, cmd: x, when: [b]}\n  - {id: b, cmd: y, when: ['-']}\n")
    assert dependencies(spec) == {"a": ("b",), "b": ()}
    assert step_order(spec) == [["b"], ["a"]]


def test_cycle_through_explicit_whens() -> None:
    refused(
        "steps:\n  - {id: a, cmd: x, when: [c]}\n  - {id: b, cmd: y, when: [a]}\n"
        "  - {id: c, cmd: z, when: [b]}\n",
        "steps[0].when: the steps wait for each other: a -> c -> b -> a",
    )


def test_cycle_through_the_implicit_previous_step() -> None:
    # b has no when: it waits for a, and a waits for b.
    refused(
        "steps:\n  - {id: a, cmd: x, when: [b]}\n  - {id: b, cmd: y}\n",
        "steps[0].when: the steps wait for each other: a -> b -> a",
    )


def test_cycle_reported_even_when_first_steps_are_fine() -> None:
    refused(
        "steps:\n  - {id: ok, cmd: x}\n  - {id: c, cmd: x, when: [ok, d]}\n  - {id: d, cmd: y, when: [c]}\n"
        "  - {id: e, cmd: z, when: [d]}\n",
        "steps[1].when: the steps wait for each other: c -> d -> c",
    )


def test_dependencies_and_order_of_a_diamond() -> None:
    spec = load(
        "steps:\n  - {id: a, cmd: x}\n  - {id: b, cmd: x, when: [a]}\n  - {id: c, cmd: x, when: [a]}\n"
        "  - {id: d, cmd: x, when: [c, b]}\n  - {id: e, cmd: x, when: ['-']}\n  - {id: f, cmd: x}\n"
    )
    deps = dependencies(spec)
    assert list(deps) == ["a", "b", "c", "d", "e", "f"]
    assert deps == {"a": (), "b": ("a",), "c": ("a",), "d": ("c", "b"), "e": (), "f": ("e",)}
    assert step_order(spec) == [["a", "e"], ["b", "c", "f"], ["d"]]


def test_dependencies_of_a_hand_built_spec() -> None:
    spec = TaskSpec(
        steps=(Step(id="x", kind="cmd", command="a"), Step(id="y", kind="cmd", command="b", when=("-",)))
    )
    assert dependencies(spec) == {"x": (), "y": ()}


def test_step_order_refuses_a_hand_built_cycle() -> None:
    spec = TaskSpec(
        steps=(
            Step(id="x", kind="cmd", command="a", when=("y",)),
            Step(id="y", kind="cmd", command="b", when=("x",)),
        )
    )
    with pytest.raises(
        TaskFileError, match=r"^steps\[0\]\.when: the steps wait for each other: x -> y -> x$"
    ):
        step_order(spec)
