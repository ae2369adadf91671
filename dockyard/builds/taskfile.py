"""ACR task files (``acr-task.yaml``) → TaskSpec, and the specs of quick builds, runs and patches (pure).

Every error is a TaskFileError whose message starts with the path of the offending value
(``steps[2].when: unknown step id "x"``). Run variables (``{{.Run.ID}}``, ``{{.Values.x}}``,
``$ID``) stay in the text: the executor renders them per run with ``variables.render``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from dockyard.builds.patch import patch_dockerfile
from dockyard.builds.spec import (
    DEFAULT_STEP_TIMEOUT,
    DEFAULT_WORKING_DIRECTORY,
    MAX_RUN_TIMEOUT,
    Step,
    StepKind,
    TaskSpec,
)

#: Task files larger than this are refused before YAML sees them.
MAX_TASK_FILE_BYTES = 256 * 1024
#: Deeper nesting than this is refused (no task file needs more than four levels).
MAX_DEPTH = 32
MAX_STEPS = 256
MAX_RETRIES = 100
#: ACR's default pause between retries (acr-builder's ``defaultStepRetryDelayInSeconds``).
DEFAULT_RETRY_DELAY = 5
#: Quick builds: ACR logs its build step with an 8 h timeout and its push step with 1 h; the
#: run's own timeout is what normally ends them.
QUICK_BUILD_TIMEOUT = MAX_RUN_TIMEOUT
QUICK_PUSH_TIMEOUT = 3600
#: The build argument that carries the image a patch run starts from.
PATCH_IMAGE_ARG = "DOCKYARD_PATCH_IMAGE"
REGISTRY_PREFIX = "{{.Run.Registry}}/"

_VERSIONS = {"v1.0.0": "v1.0.0", "1.0-preview-1": "v1.0.0", "v1.1.0": "v1.1.0"}
_STEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_ENV_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=", re.ASCII)
#: Any Go-template action; the ones we support are checked by _check_templates.
_ACTION = re.compile(r"\{\{.*?\}\}")
_SUPPORTED_ACTION = re.compile(
    r"\{\{\s*\.(?:Run\.(?:ID|Registry|RegistryName|Date|OS|Architecture|Commit|Branch|TaskName|"
    r"SharedVolume)|Values\.[A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}\Z"
)
_TASK_KEYS = {"version", "stepTimeout", "workingDirectory", "env", "secrets", "steps"}
_REFUSED_TASK_KEYS = {"networks", "volumes", "alias"}
_KINDS: tuple[StepKind, ...] = ("build", "push", "cmd")
_CMD_ONLY = {"detach", "entryPoint", "user", "pull", "disableWorkingDirectoryOverride", "workingDirectory"}
_STEP_KEYS = {
    "id",
    "when",
    "timeout",
    "retries",
    "retryDelay",
    "startDelay",
    "ignoreErrors",
    "env",
    *_CMD_ONLY,
    *_KINDS,
}
_REFUSED_STEP_KEYS = {
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
    "exitedWithout",
    "retryOnErrors",
}


class TaskFileError(ValueError):
    """A task file (or a quick build's arguments) that cannot be run; the message names the path."""


#: libyaml's loader when pyyaml has it (ten times faster), else the pure-Python one.
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _check_events(text: str) -> None:
    """Refuse aliases (no billion-laughs expansion), deep nesting and duplicate keys, before building."""
    # One entry per open collection: the keys seen so far (a mapping) or None (a sequence), and
    # whether the mapping's next node is a key.
    stack: list[tuple[set[str] | None, list[bool]]] = []
    for event in yaml.parse(text, Loader=_FAST_LOADER):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise TaskFileError(f"line {line}: YAML aliases (*{event.anchor}) are not supported")
        if isinstance(event, _CLOSE):
            stack.pop()
            continue
        if stack and stack[-1][0] is not None:
            keys, expect_key = stack[-1]
            if expect_key[0] and isinstance(event, yaml.ScalarEvent):
                if event.value in keys:
                    raise TaskFileError(f"line {line}: {event.value[:80]} is given twice")
                keys.add(event.value)
            expect_key[0] = not expect_key[0]
        if isinstance(event, _OPEN):
            if len(stack) >= MAX_DEPTH:
                raise TaskFileError(f"line {line}: nested too deeply")
            stack.append((set() if isinstance(event, yaml.MappingStartEvent) else None, [True]))


def _protect_templates(text: str) -> tuple[str, Callable[[str], str]]:
    """Replace each ``{{…}}`` by a plain token, as ACR expands templates before parsing the YAML.

    ``cmd: {{.Run.Registry}}/app`` is then a string, not a flow mapping; ``restore`` puts the
    templates back into the parsed strings.
    """
    actions: list[str] = []
    used = set(text)
    # A private-use character the text does not hold marks the tokens (YAML takes it as plain text).
    mark = next((chr(code) for code in range(0xE000, 0xF900) if chr(code) not in used), None)
    if mark is None:
        raise TaskFileError("the task file uses every private-use character")

    def token(match: re.Match[str]) -> str:
        actions.append(match.group(0))
        return f"{mark}{len(actions) - 1}{mark}"

    protected = _ACTION.sub(token, text)
    pattern = re.compile(mark + r"(\d+)" + mark)

    def restore(value: str) -> str:
        return pattern.sub(lambda m: actions[int(m.group(1))], value)

    return protected, restore


def _restore_all(value: Any, restore: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return restore(value)
    if isinstance(value, list):
        return [_restore_all(item, restore) for item in value]
    if isinstance(value, dict):
        return {_restore_all(key, restore): _restore_all(item, restore) for key, item in value.items()}
    return value


def _parse_yaml(text: str) -> Any:
    if not isinstance(text, str):
        raise TaskFileError("the task file must be text")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TASK_FILE_BYTES:
        raise TaskFileError(f"the task file is larger than {MAX_TASK_FILE_BYTES // 1024} KiB")
    if "\x00" in text:
        raise TaskFileError("the task file contains a NUL character")
    protected, restore = _protect_templates(text)
    try:
        _check_events(protected)
        document = yaml.load(protected, Loader=_FAST_LOADER)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark else ""
        raise TaskFileError(f"{where}invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise TaskFileError(f"invalid YAML: {exc}") from None
    return _restore_all(document, restore)


def _kind_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(
        type(value), "a mapping" if isinstance(value, dict) else type(value).__name__
    )


def _string(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise TaskFileError(f"{path}: expected a string, got {_kind_name(value)}")
    if not allow_empty and not value.strip():
        raise TaskFileError(f"{path}: must not be empty")
    _check_templates(value, path)
    return value


def _check_templates(value: str, path: str) -> None:
    for action in _ACTION.findall(value):
        if not _SUPPORTED_ACTION.match(action):
            raise TaskFileError(
                f"{path}: unsupported template {action}: use {{{{.Run.<name>}}}} or {{{{.Values.<name>}}}}"
            )


def _integer(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskFileError(f"{path}: expected an integer, got {_kind_name(value)}")
    if not low <= value <= high:
        raise TaskFileError(f"{path}: must be between {low} and {high}, got {value}")
    return value


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise TaskFileError(f"{path}: expected true or false, got {_kind_name(value)}")
    return value


def _string_list(value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        raise TaskFileError(f"{path}: expected a list, got {_kind_name(value)}")
    return [_string(item, f"{path}[{index}]") for index, item in enumerate(value)]


def _env(value: Any, path: str) -> tuple[str, ...]:
    entries = _string_list(value, path)
    for index, entry in enumerate(entries):
        if not _ENV_ENTRY.match(entry):
            raise TaskFileError(f"{path}[{index}]: expected NAME=value, got {entry[:80]!r}")
    return tuple(entries)


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TaskFileError(f"{path}: expected a mapping, got {_kind_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise TaskFileError(f"{path}: keys must be strings, got {_kind_name(key)} {key!r}")
    return value


def _check_keys(document: dict[str, Any], path: str, allowed: set[str], refused: set[str]) -> None:
    prefix = f"{path}." if path else ""
    for key in document:
        if key in refused:
            raise TaskFileError(f"{prefix}{key} is not supported")
        if key not in allowed:
            raise TaskFileError(f"{prefix}{key}: unknown property")


def _secrets(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise TaskFileError(f"secrets: expected a list, got {_kind_name(value)}")
    for index, entry in enumerate(value):
        path = f"secrets[{index}]"
        if isinstance(entry, dict) and "keyvault" in entry:
            raise TaskFileError(
                f"{path}.keyvault: Key Vault secrets are not supported; "
                "use --set-secret NAME=value and {{.Values.NAME}}"
            )
        raise TaskFileError(f"{path}: secrets are not supported; use --set-secret NAME=value")


_STRING_OPTIONS = (("entryPoint", "entry_point"), ("workingDirectory", "working_directory"), ("user", "user"))
_BOOLEAN_OPTIONS = (
    ("ignoreErrors", "ignore_errors"),
    ("detach", "detach"),
    ("pull", "pull"),
    ("disableWorkingDirectoryOverride", "disable_working_directory_override"),
)


def _step_kind(document: dict[str, Any], path: str) -> StepKind:
    kinds = [kind for kind in _KINDS if kind in document]
    if len(kinds) != 1:
        found = ", ".join(kinds) or "none"
        raise TaskFileError(f"{path}: a step needs exactly one of build, push, cmd (found {found})")
    if kinds[0] != "cmd":
        for key in sorted(_CMD_ONLY & document.keys()):
            raise TaskFileError(f"{path}.{key}: applies to cmd steps only")
    return kinds[0]


def _step_id(document: dict[str, Any], path: str, index: int) -> str:
    if "id" not in document:
        return f"acb_step_{index}"
    step_id = _string(document["id"], f"{path}.id")
    if not _STEP_ID.match(step_id) or step_id == "acb_root":
        raise TaskFileError(
            f"{path}.id: {step_id[:80]!r} is not a valid step id "
            "(letters, digits, '.', '_', '-'; at most 63; starts with a letter or digit)"
        )
    return step_id


def _step(raw: Any, index: int, step_timeout: int) -> Step:
    """One step; its ``when`` is checked against the other steps by ``_check_when``."""
    path = f"steps[{index}]"
    document = _mapping(raw, path)
    _check_keys(document, path, _STEP_KEYS, _REFUSED_STEP_KEYS)
    kind = _step_kind(document, path)
    command, images = "", ()
    if kind == "push":
        images = tuple(_string_list(document["push"], f"{path}.push"))
        if not images:
            raise TaskFileError(f"{path}.push: list at least one image")
    else:
        command = _string(document[kind], f"{path}.{kind}")
        _split(command, f"{path}.{kind}")
    when = None
    if document.get("when") is not None:
        when = tuple(_string_list(document["when"], f"{path}.when")) or None
    optional: dict[str, Any] = {}
    for key, field in _STRING_OPTIONS:
        if key in document:
            optional[field] = _string(document[key], f"{path}.{key}")
    for key, field in _BOOLEAN_OPTIONS:
        if key in document:
            optional[field] = _boolean(document[key], f"{path}.{key}")
    return Step(
        id=_step_id(document, path, index),
        kind=kind,
        command=command,
        images=images,
        when=when,
        timeout=_integer(document.get("timeout", step_timeout), f"{path}.timeout", 1, MAX_RUN_TIMEOUT),
        retries=_integer(document.get("retries", 0), f"{path}.retries", 0, MAX_RETRIES),
        retry_delay=_integer(
            document.get("retryDelay", DEFAULT_RETRY_DELAY), f"{path}.retryDelay", 0, MAX_RUN_TIMEOUT
        ),
        start_delay=_integer(document.get("startDelay", 0), f"{path}.startDelay", 0, MAX_RUN_TIMEOUT),
        env=_env(document.get("env", []), f"{path}.env"),
        **optional,
    )


def _check_when(steps: Sequence[Step]) -> None:
    """Unique ids; each ``when`` is ``["-"]`` or ids of other steps, each once; no cycles."""
    seen: dict[str, int] = {}
    for index, step in enumerate(steps):
        if step.id in seen:
            raise TaskFileError(f'steps[{index}].id: "{step.id}" is already the id of steps[{seen[step.id]}]')
        seen[step.id] = index
    for index, step in enumerate(steps):
        path = f"steps[{index}].when"
        if step.when is None or step.when == ("-",):
            continue
        for name in step.when:
            if name == "-":
                raise TaskFileError(f'{path}: "-" cannot be combined with step ids')
            if name == step.id:
                raise TaskFileError(f'{path}: a step cannot wait for itself ("{name}")')
            if name not in seen:
                raise TaskFileError(f'{path}: unknown step id "{name}"')
        if len(set(step.when)) != len(step.when):
            raise TaskFileError(f"{path}: a step id is listed twice")


def _split(command: str, path: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise TaskFileError(f"{path}: {exc} in {command[:120]!r}") from None


def _version(value: Any) -> str:
    given = _string(value, "version")
    if given.lower() not in _VERSIONS:
        raise TaskFileError(f"version: {given[:40]!r} is not supported (use v1.0.0 or v1.1.0)")
    return _VERSIONS[given.lower()]


def load_task_file(text: str) -> TaskSpec:
    """Parse and validate an ``acr-task.yaml``; TaskFileError names the first problem's path."""
    document = _parse_yaml(text)
    if document is None:
        raise TaskFileError("the task file is empty")
    document = _mapping(document, "task file")
    _check_keys(document, "", _TASK_KEYS, _REFUSED_TASK_KEYS)
    version = _version(document.get("version", "v1.0.0"))
    step_timeout = _integer(
        document.get("stepTimeout", DEFAULT_STEP_TIMEOUT), "stepTimeout", 1, MAX_RUN_TIMEOUT
    )
    working_directory = DEFAULT_WORKING_DIRECTORY
    if "workingDirectory" in document:
        working_directory = _string(document["workingDirectory"], "workingDirectory")
    env = _env(document.get("env", []), "env")
    _secrets(document.get("secrets"))
    raw_steps = document.get("steps")
    if raw_steps is None:
        raw_steps = []
    if not isinstance(raw_steps, list):
        raise TaskFileError(f"steps: expected a list, got {_kind_name(raw_steps)}")
    if not raw_steps:
        raise TaskFileError("steps: a task file needs at least one step")
    if len(raw_steps) > MAX_STEPS:
        raise TaskFileError(f"steps: at most {MAX_STEPS} steps, got {len(raw_steps)}")
    steps = [_step(raw, index, step_timeout) for index, raw in enumerate(raw_steps)]
    _check_when(steps)
    spec = TaskSpec(
        steps=tuple(steps),
        version=version,
        step_timeout=step_timeout,
        working_directory=working_directory,
        env=env,
    )
    step_order(spec)  # refuses cycles
    return spec


def dependencies(spec: TaskSpec) -> dict[str, tuple[str, ...]]:
    """Each step's prerequisite step ids, in step order: no ``when`` = the previous step, ``-`` = none."""
    result: dict[str, tuple[str, ...]] = {}
    previous: str | None = None
    for step in spec.steps:
        if step.when is None:
            result[step.id] = () if previous is None else (previous,)
        elif step.when == ("-",):
            result[step.id] = ()
        else:
            result[step.id] = tuple(step.when)
        previous = step.id
    return result


def step_order(spec: TaskSpec) -> list[list[str]]:
    """The steps in waves, each waiting only for steps of earlier waves; TaskFileError on a cycle."""
    remaining = dependencies(spec)
    done: set[str] = set()
    waves: list[list[str]] = []
    while remaining:
        wave = [step for step, needs in remaining.items() if done.issuperset(needs)]
        if not wave:
            cycle = _find_cycle(remaining)
            index = next(i for i, step in enumerate(spec.steps) if step.id == cycle[0])
            raise TaskFileError(f"steps[{index}].when: the steps wait for each other: {' -> '.join(cycle)}")
        waves.append(wave)
        done.update(wave)
        for step in wave:
            del remaining[step]
    return waves


def _find_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str]:
    """A cycle among ``graph``'s unfinished steps, as a path that returns to its first step."""
    start = next(iter(graph))
    path = [start]
    while True:
        following = next(need for need in graph[path[-1]] if need in graph)
        if following in path:
            cycle = path[path.index(following) :]
            return [*cycle, cycle[0]]
        path.append(following)


def _registry_image(image: Any, path: str) -> str:
    """``app:1`` → ``{{.Run.Registry}}/app:1``; images on other registries are refused."""
    image = _string(image, path)
    if image.startswith(REGISTRY_PREFIX):
        return image
    if any(char.isspace() for char in image):
        raise TaskFileError(f"{path}: an image name cannot contain spaces")
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        raise TaskFileError(
            f"{path}: give the repository without a registry host ({image[:120]!r}): "
            "runs push to this registry"
        )
    return REGISTRY_PREFIX + image


def quick_build_spec(
    images: Sequence[str],
    dockerfile: str | None,
    build_args: Sequence[tuple[str, str]],
    platform: str | None,
    no_push: bool,
    no_cache: bool = False,
) -> TaskSpec:
    """``az acr build``: one ``build`` step tagging each image in this registry, then a ``push`` step."""
    if isinstance(images, str):
        raise TaskFileError("images: expected a list of images, got a string")
    tags = tuple(_registry_image(image, f"images[{index}]") for index, image in enumerate(images))
    if not tags and not no_push:
        raise TaskFileError("images: give at least one image (-t) to push, or --no-push")
    words: list[str] = []
    for tag in tags:
        words += ["-t", tag]
    if dockerfile is not None:
        words += ["-f", _string(dockerfile, "file")]
    for index, (key, value) in enumerate(build_args):
        _string(key, f"args[{index}]")
        _string(value, f"args[{index}]", allow_empty=True)
        if "=" in key or any(char.isspace() for char in key):
            raise TaskFileError(f"args[{index}]: invalid build argument name {key[:80]!r}")
        words += ["--build-arg", f"{key}={value}"]
    if platform is not None:
        words += ["--platform", _string(platform, "platform")]
    if no_cache:
        words.append("--no-cache")
    words.append(".")
    steps = [Step(id="build", kind="build", command=shlex.join(words), timeout=QUICK_BUILD_TIMEOUT)]
    if not no_push:
        steps.append(Step(id="push", kind="push", images=tags, timeout=QUICK_PUSH_TIMEOUT))
    return TaskSpec(steps=tuple(steps), step_timeout=QUICK_BUILD_TIMEOUT)


def quick_cmd_spec(cmd: str) -> TaskSpec:
    """``az acr run --cmd "<image> args"``: one ``cmd`` step, bounded by the run's timeout."""
    command = _string(cmd, "cmd")
    _split(command, "cmd")
    step = Step(id="acb_step_0", kind="cmd", command=command, timeout=MAX_RUN_TIMEOUT)
    return TaskSpec(steps=(step,), step_timeout=MAX_RUN_TIMEOUT)


def patch_spec(image: str, tag: str) -> tuple[TaskSpec, str]:
    """A patch run: build ``image`` with its OS packages upgraded as ``tag``, then push it.

    Returns the spec and the Dockerfile the executor writes into an empty context. The Dockerfile
    starts ``FROM ${DOCKYARD_PATCH_IMAGE}`` and the build step passes that argument, so
    ``dockerfile.final_stage_bases`` records the patched image as the run's base.
    """
    source = _registry_image(image, "image")
    target = _registry_image(tag, "tag")
    text = f"ARG {PATCH_IMAGE_ARG}\n" + patch_dockerfile(f"${{{PATCH_IMAGE_ARG}}}")
    words = ["-t", target, "--build-arg", f"{PATCH_IMAGE_ARG}={source}", "."]
    steps = (
        Step(id="patch", kind="build", command=shlex.join(words), timeout=QUICK_BUILD_TIMEOUT),
        Step(id="push", kind="push", images=(target,), timeout=QUICK_PUSH_TIMEOUT),
    )
    return TaskSpec(steps=steps, step_timeout=QUICK_BUILD_TIMEOUT), text
