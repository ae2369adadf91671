"""Task files, continued: templates, hostile input, and the quick build, run and patch specs."""

from __future__ import annotations

import re
import shlex

import pytest

from dockyard.builds import taskfile
from dockyard.builds.dockerfile import final_stage_bases
from dockyard.builds.spec import Step
from dockyard.builds.taskfile import (
    TaskFileError,
    dependencies,
    load_task_file,
    patch_spec,
    quick_build_spec,
    quick_cmd_spec,
)
from tests.unit.test_builds_taskfile import load, refused

# -- templates --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{.Run.ID}}",
        "{{ .Run.Registry }}",
        "{{.Run.RegistryName}}",
        "{{.Run.Date}}",
        "{{.Run.OS}}",
        "{{.Run.Architecture}}",
        "{{.Run.Commit}}",
        "{{.Run.Branch}}",
        "{{.Run.TaskName}}",
        "{{.Run.SharedVolume}}",
        "{{.Values.my_value}}",
        "{{.Values.a-b.c}}",
    ],
)
def test_supported_templates_are_kept(template: str) -> None:
    spec = load(f"steps: [{{cmd: 'img:{template} x'}}]")
    assert spec.steps[0].command == f"img:{template} x"


@pytest.mark.parametrize(
    "template",
    ["{{.Run.Nope}}", "{{.Secrets.x}}", "{{if .Run.ID}}", "{{.Values}}", "{{}}", '{{ printf "%s" 1 }}'],
)
def test_unsupported_templates_are_refused(template: str) -> None:
    with pytest.raises(TaskFileError, match=r"^steps\[0\]\.cmd: unsupported template "):
        load(f"steps: [{{cmd: 'img {template}'}}]")


def test_templates_in_push_env_and_ids_are_checked() -> None:
    with pytest.raises(TaskFileError, match=r"^steps\[0\]\.push\[0\]: unsupported template \{\{\.Run\.X\}\}"):
        load("steps: [{push: ['{{.Run.X}}/a']}]")
    with pytest.raises(TaskFileError, match=r"^env\[0\]: unsupported template"):
        load("env: ['A={{.Foo}}']\nsteps: [{cmd: a}]")
    with pytest.raises(TaskFileError, match=r"^steps\[0\]\.id: .* is not a valid step id"):
        load("steps: [{id: '{{.Run.ID}}', cmd: a}]")


def test_template_in_a_number_field_is_a_type_error() -> None:
    refused(
        "steps:\n  - cmd: a\n    timeout: {{.Values.timeout}}\n",
        "steps[0].timeout: expected an integer, got a string",
    )


def test_private_use_characters_in_the_file_are_not_confused_with_templates() -> None:
    text = "steps:\n  - cmd: echo \ue0000\ue000 {{.Run.ID}} \ue0010\ue001\n"
    assert load_task_file(text).steps[0].command == "echo \ue0000\ue000 {{.Run.ID}} \ue0010\ue001"


def test_a_file_holding_every_private_use_character_is_refused() -> None:
    every = "".join(chr(code) for code in range(0xE000, 0xF900))
    with pytest.raises(TaskFileError, match=r"^the task file uses every private-use character$"):
        load_task_file(f"steps: [{{cmd: x}}]\n# {every}\n")
    almost = every.replace("\uf8ff", "")
    assert (
        load_task_file(f"steps: [{{cmd: '{{{{.Run.ID}}}}'}}]\n# {almost}\n").steps[0].command == "{{.Run.ID}}"
    )


def test_many_templates_stay_cheap() -> None:
    text = "steps: [{cmd: '" + "{{}}" * 20000 + "'}]"
    with pytest.raises(TaskFileError, match=r"^steps\[0\]\.cmd: unsupported template \{\{\}\}"):
        load_task_file(text)


def test_template_in_a_key_is_restored_and_refused() -> None:
    refused("steps:\n  - cmd: a\n    {{.Run.ID}}: b\n", "steps[0].{{.Run.ID}}: unknown property")


# -- hostile input ----------------------------------------------------------------------------------


def test_billion_laughs_is_refused_without_expanding() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for index in range(1, 10):
        previous = chr(ord("a") + index - 1)
        name = chr(ord("a") + index)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    lines.append("steps: [{cmd: x}]")
    with pytest.raises(TaskFileError, match=r"^line 2: YAML aliases \(\*a\) are not supported$"):
        load_task_file("\n".join(lines))


def test_merge_keys_need_aliases_and_are_refused() -> None:
    text = "base: &base {cmd: x}\nsteps:\n  - <<: *base\n"
    with pytest.raises(TaskFileError, match=r"YAML aliases \(\*base\) are not supported"):
        load_task_file(text)


def test_same_keys_in_different_mappings_are_fine() -> None:
    spec = load("steps:\n  - {id: a, cmd: x, env: [A=1]}\n  - {id: b, cmd: y, env: [A=1]}\nenv: [A=1]\n")
    assert [step.id for step in spec.steps] == ["a", "b"]
    spec = load("steps:\n  - cmd: x\n    env:\n      - id=1\n    id: a\n")
    assert spec.steps[0].id == "a"


def test_complex_keys_are_not_confused_with_values() -> None:
    # The "cmd" inside the sequence key is not a key of the step: no "given twice" here.
    with pytest.raises(TaskFileError, match=r"^line 2: invalid YAML: found unhashable key$"):
        load("steps:\n  - ? [cmd]\n    : x\n    cmd: y\n")
    with pytest.raises(TaskFileError, match=r"^line 1: invalid YAML: found unhashable key$"):
        load("? {cmd: 1, id: 2}\n: {cmd: 3}\ncmd: 4\n")


def test_an_anchor_alone_is_harmless() -> None:
    assert load("steps: &s [{cmd: x}]\n").steps[0].command == "x"


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(TaskFileError, match=r"^line 1: nested too deeply$"):
        load_task_file("steps: " + "[" * 100 + "]" * 100)
    # libyaml stops at its own limit (1000) while scanning ahead; either way it is refused quickly.
    with pytest.raises(
        TaskFileError, match=r"^line 1: (nested too deeply|invalid YAML: exceeded maximum nesting)"
    ):
        load_task_file("[" * 50000)


def test_nesting_at_the_limit_parses() -> None:
    depth = taskfile.MAX_DEPTH - 1  # the top mapping is one level
    with pytest.raises(TaskFileError, match=r"^steps\[0\]: expected a mapping, got a list$"):
        load_task_file("steps: " + "[" * depth + "]" * depth)
    with pytest.raises(TaskFileError, match=r"^line 1: nested too deeply$"):
        load_task_file("steps: " + "[" * (depth + 1) + "]" * (depth + 1))


def test_size_bound() -> None:
    padding = "#" * (taskfile.MAX_TASK_FILE_BYTES - 20) + "\n"
    assert load_task_file(padding[: taskfile.MAX_TASK_FILE_BYTES - 20] + "\nsteps: [{cmd: x}]").steps
    with pytest.raises(TaskFileError, match=r"^the task file is larger than 256 KiB$"):
        load_task_file(padding + "steps: [{cmd: x}]\n" + "#" * 40)


def test_size_bound_is_inclusive() -> None:
    text = "steps: [{cmd: x}]\n#"
    text += "x" * (taskfile.MAX_TASK_FILE_BYTES - len(text))
    assert load_task_file(text).steps[0].command == "x"


def test_size_bound_counts_bytes_not_characters() -> None:
    text = "steps: [{cmd: x}]\n#" + "é" * (taskfile.MAX_TASK_FILE_BYTES // 2)
    with pytest.raises(TaskFileError, match="larger than"):
        load_task_file(text)


def test_many_steps_are_refused() -> None:
    text = "steps:\n" + "  - cmd: x\n" * (taskfile.MAX_STEPS + 1)
    refused(text, f"steps: at most {taskfile.MAX_STEPS} steps, got {taskfile.MAX_STEPS + 1}")
    assert len(load("steps:\n" + "  - cmd: x\n" * taskfile.MAX_STEPS).steps) == taskfile.MAX_STEPS


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "steps: [{cmd: x}]\n---\nsteps: [{cmd: y}]\n",
            r"^line 2: invalid YAML: but found another document$",
        ),
        ("steps: [{cmd: x}\n", r"^line 2: invalid YAML: "),
        ("steps:\n\t- cmd: x\n", r"^line 2: invalid YAML: "),
        ("steps: [{cmd: !!python/object:os.system x}]", r"^line 1: invalid YAML: "),
        ("a: 1\na: 2\n", r"^line 2: a is given twice$"),
        ("steps: [{cmd: a}]\nsteps: [{cmd: b}]\n", r"^line 2: steps is given twice$"),
        ("steps:\n  - cmd: a\n    id: x\n    cmd: b\n", r"^line 4: cmd is given twice$"),
        ('steps: [{cmd: "\x00"}]', r"^the task file contains a NUL character$"),
        ('steps: [{cmd: "\x07"}]', r"^invalid YAML: unacceptable character #x0007"),
    ],
)
def test_malformed_yaml(text: str, pattern: str) -> None:
    with pytest.raises(TaskFileError, match=pattern):
        load_task_file(text)


def test_not_text() -> None:
    with pytest.raises(TaskFileError, match=r"^the task file must be text$"):
        load_task_file(b"steps: []")  # type: ignore[arg-type]


def test_task_file_error_is_a_value_error() -> None:
    assert issubclass(TaskFileError, ValueError)


def test_long_values_are_cut_in_messages() -> None:
    with pytest.raises(TaskFileError) as caught:
        load(f"steps: [{{cmd: a, env: ['{'x' * 5000}']}}]")
    assert len(str(caught.value)) < 200


# -- quick builds, runs and patches -------------------------------------------------------------------


def test_quick_build_spec() -> None:
    spec = quick_build_spec(
        ["app:{{.Run.ID}}", "team/app:latest"],
        "docker/Dockerfile.prod",
        [("VERSION", "1.2 beta"), ("EMPTY", ""), ("Q", 'it\'s "quoted"')],
        "linux/arm64/v8",
        no_push=False,
        no_cache=True,
    )
    build, push = spec.steps
    assert (build.id, build.kind, build.timeout) == ("build", "build", 28800)
    assert (push.id, push.kind, push.timeout) == ("push", "push", 3600)
    assert push.images == ("{{.Run.Registry}}/app:{{.Run.ID}}", "{{.Run.Registry}}/team/app:latest")
    assert dependencies(spec) == {"build": (), "push": ("build",)}
    assert not spec.aliases
    assert shlex.split(build.command) == [
        "-t",
        "{{.Run.Registry}}/app:{{.Run.ID}}",
        "-t",
        "{{.Run.Registry}}/team/app:latest",
        "-f",
        "docker/Dockerfile.prod",
        "--build-arg",
        "VERSION=1.2 beta",
        "--build-arg",
        "EMPTY=",
        "--build-arg",
        'Q=it\'s "quoted"',
        "--platform",
        "linux/arm64/v8",
        "--no-cache",
        ".",
    ]


def test_quick_build_timeouts() -> None:
    spec = quick_build_spec(["app"], None, [], None, no_push=False)
    assert spec.step_timeout == 28800
    assert [step.timeout for step in spec.steps] == [28800, 3600]


def test_quick_build_dotted_path_components_are_not_hosts() -> None:
    spec = quick_build_spec(["team/app.web/x:1"], None, [], None, no_push=False)
    assert spec.steps[1].images == ("{{.Run.Registry}}/team/app.web/x:1",)


def test_quick_build_argument_values_must_be_strings() -> None:
    with pytest.raises(TaskFileError, match=r"^args\[1\]: expected a string, got null$"):
        quick_build_spec(["app"], None, [("A", "1"), ("B", None)], None, no_push=False)  # type: ignore[list-item]


def test_quick_build_minimal_and_no_push() -> None:
    spec = quick_build_spec(["app"], None, [], None, no_push=True)
    assert len(spec.steps) == 1
    assert shlex.split(spec.steps[0].command) == ["-t", "{{.Run.Registry}}/app", "."]


def test_quick_build_without_images_needs_no_push() -> None:
    with pytest.raises(
        TaskFileError, match=r"^images: give at least one image \(-t\) to push, or --no-push$"
    ):
        quick_build_spec([], None, [], None, no_push=False)
    spec = quick_build_spec([], None, [], None, no_push=True)
    assert shlex.split(spec.steps[0].command) == ["."]


def test_quick_build_keeps_an_explicit_registry_variable() -> None:
    spec = quick_build_spec(["{{.Run.Registry}}/app:1"], None, [], None, no_push=False)
    assert spec.steps[1].images == ("{{.Run.Registry}}/app:1",)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("docker.io/library/app:1", "images[0]: give the repository without a registry host"),
        ("localhost/app", "images[0]: give the repository without a registry host"),
        ("host:5000/app", "images[0]: give the repository without a registry host"),
        ("app name", "images[0]: an image name cannot contain spaces"),
        ("", "images[0]: must not be empty"),
        ("app:{{.Run.Nope}}", "images[0]: unsupported template"),
    ],
)
def test_quick_build_bad_images(image: str, message: str) -> None:
    with pytest.raises(TaskFileError, match="^" + re.escape(message)):
        quick_build_spec([image], None, [], None, no_push=False)


def test_quick_build_images_as_a_string_is_refused() -> None:
    with pytest.raises(TaskFileError, match=r"^images: expected a list of images, got a string$"):
        quick_build_spec("app", None, [], None, no_push=False)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("A=B", "args[0]: invalid build argument name 'A=B'"),
        ("A B", "args[0]: invalid build argument name 'A B'"),
        ("", "args[0]: must not be empty"),
    ],
)
def test_quick_build_bad_build_args(key: str, message: str) -> None:
    with pytest.raises(TaskFileError, match="^" + re.escape(message) + "$"):
        quick_build_spec(["app"], None, [(key, "v")], None, no_push=False)


def test_quick_build_bad_dockerfile_and_platform() -> None:
    with pytest.raises(TaskFileError, match=r"^file: must not be empty$"):
        quick_build_spec(["app"], "", [], None, no_push=False)
    with pytest.raises(TaskFileError, match=r"^platform: must not be empty$"):
        quick_build_spec(["app"], None, [], "", no_push=False)


def test_quick_cmd_spec() -> None:
    spec = quick_cmd_spec("{{.Run.Registry}}/app:1 sh -c 'echo hi'")
    (step,) = spec.steps
    assert step == Step(
        id="acb_step_0", kind="cmd", command="{{.Run.Registry}}/app:1 sh -c 'echo hi'", timeout=28800
    )
    assert spec.step_timeout == 28800


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ("", "cmd: must not be empty"),
        ("app 'x", 'cmd: No closing quotation in "app \'x"'),
        ("app {{.Run.X}}", "cmd: unsupported template {{.Run.X}}: use {{.Run.<name>}} or {{.Values.<name>}}"),
    ],
)
def test_quick_cmd_spec_errors(cmd: str, message: str) -> None:
    with pytest.raises(TaskFileError) as caught:
        quick_cmd_spec(cmd)
    assert str(caught.value) == message


def test_patch_spec() -> None:
    spec, dockerfile = patch_spec("app:1", "app:1-patched")
    build, push = spec.steps
    assert (build.id, build.kind, push.id, push.kind) == ("patch", "build", "push", "push")
    assert shlex.split(build.command) == [
        "-t",
        "{{.Run.Registry}}/app:1-patched",
        "--build-arg",
        "DOCKYARD_PATCH_IMAGE={{.Run.Registry}}/app:1",
        ".",
    ]
    assert push.images == ("{{.Run.Registry}}/app:1-patched",)
    assert (build.timeout, push.timeout, spec.step_timeout) == (28800, 3600, 28800)
    assert dockerfile.startswith("ARG DOCKYARD_PATCH_IMAGE\nFROM ${DOCKYARD_PATCH_IMAGE}\nUSER root\nRUN ")
    # The recorded base of the patch run is the image being patched.
    assert final_stage_bases(dockerfile, {"DOCKYARD_PATCH_IMAGE": "reg:5000/app:1"}) == ("reg:5000/app:1",)


def test_patch_spec_errors() -> None:
    with pytest.raises(TaskFileError, match=r"^image: give the repository without a registry host"):
        patch_spec("other.io/app:1", "app:1-patched")
    with pytest.raises(TaskFileError, match=r"^tag: must not be empty$"):
        patch_spec("app:1", "")
