"""A ``build`` step's ``docker build`` arguments → BuildRequest (pure).

The flags ACR task files use: ``-t/--tag`` (repeatable), ``-f/--file``, ``--build-arg k=v``,
``--target``, ``--platform``, ``--label k=v``, ``--no-cache``, ``--pull``, and exactly one
positional context, ``.`` or a sub-folder of the run's context. ``--build-arg k`` without a value
takes ``k`` from the step's environment, as docker takes it from the client's, and is left out
when the environment has no ``k``. Values are given as ``--flag value``, ``--flag=value`` or, for
the one-letter flags, ``-tvalue``.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping

from dockyard.builds.interfaces import BuildError
from dockyard.builds.spec import BuildRequest

_VALUED = {
    "-t": "tag",
    "--tag": "tag",
    "-f": "file",
    "--file": "file",
    "--build-arg": "build-arg",
    "--target": "target",
    "--platform": "platform",
    "--label": "label",
}
_SWITCHES = {"--no-cache": "no-cache", "--pull": "pull"}
_TRUE, _FALSE = frozenset({"true", "1"}), frozenset({"false", "0"})
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^git@|^github\.com/")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\Z")


def relative_path(text: str, what: str) -> str:
    """``text`` as a normalised path inside the context (``.`` for the context itself); BuildError
    for absolute paths, ``..`` escapes and URLs."""
    if not text or text == "-" or "\x00" in text:
        raise BuildError(f"{what} {text!r}: expected a path inside the run's context")
    if _URL.match(text):
        raise BuildError(f"{what} {text!r}: remote contexts (URLs) are not supported; give a folder")
    if text.startswith("/"):
        raise BuildError(f"{what} {text!r}: must be relative to the run's context")
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        raise BuildError(f"{what} {text!r}: leaves the run's context")
    return normal


def _pair(value: str, flag: str, env: Mapping[str, str] | None) -> tuple[str, str] | None:
    key, equals, rest = value.partition("=")
    if not _KEY.match(key):
        raise BuildError(f"{flag} {value!r}: expected KEY=value")
    if equals:
        return key, rest
    if flag == "--build-arg" and env is not None and key in env:
        return key, env[key]
    if flag == "--build-arg":
        return None
    raise BuildError(f"{flag} {value!r}: expected KEY=value")


def _switch(flag: str, value: str | None) -> bool:
    if value is None or value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise BuildError(f"{flag}={value}: expected true or false")


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise BuildError(f"cannot parse the build arguments: {exc}") from None


def _scan(words: list[str]) -> tuple[dict[str, list[str]], dict[str, bool], list[str], list[str]]:
    """The flags' values, the switches, the positional words and the unknown flags of ``words``."""
    values: dict[str, list[str]] = {name: [] for name in set(_VALUED.values())}
    switches = {"no-cache": False, "pull": False}
    contexts: list[str] = []
    unknown: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            contexts.extend(words[index:])
            break
        if not word.startswith("-") or word == "-":
            contexts.append(word)
            continue
        flag, equals, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if not word.startswith("--") and len(word) > 2 and word[:2] in _VALUED:
            flag, equals, inline = word[:2], "=", word[2:]
        if flag in _SWITCHES:
            switches[_SWITCHES[flag]] = _switch(flag, inline if equals else None)
            continue
        if flag not in _VALUED:
            unknown.append(flag)
            continue
        if equals:
            value = inline
        elif index < len(words):
            value = words[index]
            index += 1
        else:
            raise BuildError(f"{flag} needs a value")
        values[_VALUED[flag]].append(value)
    return values, switches, contexts, unknown


def parse_build_command(text: str, env: Mapping[str, str] | None = None) -> BuildRequest:
    """The ``docker build`` arguments ``text`` (variables already rendered) → BuildRequest.

    ``env`` (the step's environment) gives the value of ``--build-arg KEY`` written without one.
    Unknown flags, a missing or second context, URLs and paths leaving the context raise BuildError.
    """
    values, switches, contexts, unknown = _scan(_split(text))
    if unknown:
        raise BuildError(f"unsupported build flag(s): {', '.join(dict.fromkeys(unknown))}")
    if len(contexts) != 1:
        raise BuildError(
            "a build step needs exactly one context (e.g. `.`), got "
            + (", ".join(repr(c) for c in contexts) if contexts else "none")
        )
    for name in ("file", "target", "platform"):
        if len(values[name]) > 1:
            raise BuildError(f"--{name} given {len(values[name])} times")
    tags = tuple(values["tag"])
    if any(not tag or any(c.isspace() for c in tag) for tag in tags):
        raise BuildError("-t: empty or blank image name")
    build_args = tuple(p for v in values["build-arg"] if (p := _pair(v, "--build-arg", env)) is not None)
    labels = tuple(p for v in values["label"] if (p := _pair(v, "--label", None)) is not None)
    dockerfile = values["file"][0] if values["file"] else None
    return BuildRequest(
        tags=tags,
        context=relative_path(contexts[0], "build context"),
        dockerfile=relative_path(dockerfile, "-f") if dockerfile is not None else None,
        build_args=build_args,
        target=values["target"][0] if values["target"] else None,
        platform=values["platform"][0] if values["platform"] else None,
        labels=labels,
        no_cache=switches["no-cache"],
        pull=switches["pull"],
    )
