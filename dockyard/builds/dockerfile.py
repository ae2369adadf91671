"""The base images of a Dockerfile's stages, ``ARG``s substituted, as base-image triggers see them (pure).

ACR tracks only the final (runtime) stage's base. ``final_stage_bases`` parses the Dockerfile
as BuildKit does for what matters here: parser directives (``# escape=``), line continuations,
comments, heredocs, case-insensitive instructions, ``FROM [--platform=…] image [AS name]``,
global ``ARG``s (defaults overridden by build arguments) and ``$VAR``, ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:+alt}``, ``${VAR+alt}``, ``${VAR:?message}``.
References are returned as written after substitution (``alpine`` stays ``alpine``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from dockyard.builds.spec import DEFAULT_PLATFORM

MAX_DOCKERFILE_BYTES = 1024 * 1024
#: An expanded value longer than this is refused (``ARG B=$A$A$A…`` chains grow exponentially).
MAX_VALUE_LENGTH = 64 * 1024

_DIRECTIVE = re.compile(r"#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*\Z")
_KNOWN_DIRECTIVES = {"syntax", "escape", "check"}
_NAME = re.compile(r"[A-Za-z0-9_]+")
_HEREDOC = re.compile(r"\d*<<(-?)(['\"]?)([^\s'\"<>|&;]+)\2\Z")
_HEREDOC_INSTRUCTIONS = {"run", "copy", "add"}


class DockerfileError(ValueError):
    """A Dockerfile whose stages cannot be resolved; the message names the line."""


@dataclass(frozen=True)
class Stage:
    """One ``FROM``: its base (after substitution), its ``AS`` name (lower-cased) and line."""

    base: str
    name: str | None
    line: int


def _directives(lines: list[str]) -> tuple[str, int]:
    """The escape character and the index of the first line after the parser directives."""
    escape = "\\"
    seen: set[str] = set()
    for index, line in enumerate(lines):
        match = _DIRECTIVE.match(line.lstrip("\ufeff") if index == 0 else line)
        if not match or match.group(1).lower() not in _KNOWN_DIRECTIVES:
            return escape, index
        key = match.group(1).lower()
        if key in seen:
            raise DockerfileError(f"line {index + 1}: the {key} directive is given twice")
        seen.add(key)
        if key == "escape":
            if match.group(2) not in ("\\", "`"):
                raise DockerfileError(f"line {index + 1}: invalid escape character {match.group(2)!r}")
            escape = match.group(2)
    return escape, len(lines)


def _ignored(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def _instructions(text: str) -> tuple[str, list[tuple[int, str]]]:
    """The escape character and the logical lines (continuations joined, comments and heredocs dropped)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCKERFILE_BYTES:
        raise DockerfileError(f"the Dockerfile is larger than {MAX_DOCKERFILE_BYTES // 1024} KiB")
    lines = text.replace("\r\n", "\n").split("\n")
    escape, index = _directives(lines)
    result: list[tuple[int, str]] = []
    while index < len(lines):
        first, line = index, lines[index]
        index += 1
        if _ignored(line):
            continue
        parts = []
        while True:
            stripped = line.rstrip(" \t")
            if not stripped.endswith(escape):
                parts.append(line)
                break
            parts.append(stripped[:-1])
            while index < len(lines) and _ignored(lines[index]):
                index += 1
            if index >= len(lines):
                break
            line = lines[index]
            index += 1
        instruction = "".join(parts)
        result.append((first + 1, instruction))
        index = _skip_heredocs(instruction, lines, index)
    return escape, result


def _keyword(instruction: str) -> tuple[str, str]:
    """An instruction's keyword (lower-cased) and its arguments."""
    words = instruction.split(None, 1)
    return words[0].lower(), words[1] if len(words) > 1 else ""


def _skip_heredocs(instruction: str, lines: list[str], index: int) -> int:
    """The index of the line after the heredoc bodies (``RUN <<EOF`` … ``EOF``) of ``instruction``."""
    keyword, arguments = _keyword(instruction)
    if keyword not in _HEREDOC_INSTRUCTIONS:
        return index
    for word in arguments.split():
        heredoc = _HEREDOC.match(word)
        if not heredoc:
            continue
        terminator, strip_tabs = heredoc.group(3), heredoc.group(1) == "-"
        while index < len(lines):
            body = lines[index]
            index += 1
            if (body.lstrip("\t") if strip_tabs else body) == terminator:
                break
    return index


def _split_words(text: str, escape: str) -> list[str]:
    """Split on unquoted whitespace, keeping quotes and escapes for ``_expand``."""
    words: list[str] = []
    current: list[str] = []
    quote: str | None = None
    index = 0
    while index < len(text):
        char = text[index]
        if char == escape and quote != "'" and index + 1 < len(text):
            current += [char, text[index + 1]]
            index += 2
            continue
        if quote:
            quote = None if char == quote else quote
            current.append(char)
        elif char in "'\"":
            quote = char
            current.append(char)
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
        index += 1
    if current:
        words.append("".join(current))
    return words


class _Expander:
    """One word's quote removal and variable substitution, as BuildKit's shell lexer does it."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str, line: int) -> None:
        self.text, self.env, self.escape, self.line = text, env, escape, line
        self.index = 0

    def error(self, message: str) -> DockerfileError:
        return DockerfileError(f"line {self.line}: {message}")

    def word(self, stop: str = "") -> str:
        out: list[str] = []
        text = self.text
        while self.index < len(text):
            char = text[self.index]
            if stop and char == stop:
                return self._checked("".join(out))
            if char == self.escape:
                out.append(text[self.index + 1 : self.index + 2])
                self.index += 2
            elif char == "'":
                end = text.find("'", self.index + 1)
                if end < 0:
                    raise self.error("unterminated single quote")
                out.append(text[self.index + 1 : end])
                self.index = end + 1
            elif char == '"':
                self.index += 1
                out.append(self._double_quoted())
            elif char == "$":
                out.append(self._dollar())
            else:
                out.append(char)
                self.index += 1
        if stop:
            raise self.error(f"missing {stop!r} in {text[:120]!r}")
        return self._checked("".join(out))

    def _checked(self, value: str) -> str:
        if len(value) > MAX_VALUE_LENGTH:
            raise self.error("a substituted value is too long")
        return value

    def _double_quoted(self) -> str:
        out: list[str] = []
        text = self.text
        while self.index < len(text):
            char = text[self.index]
            if char == '"':
                self.index += 1
                return "".join(out)
            if char == self.escape and text[self.index + 1 : self.index + 2] in ('"', "$", self.escape):
                out.append(text[self.index + 1])
                self.index += 2
            elif char == "$":
                out.append(self._dollar())
            else:
                out.append(char)
                self.index += 1
        raise self.error("unterminated double quote")

    def _dollar(self) -> str:
        text = self.text
        self.index += 1
        if text.startswith("{", self.index):
            return self._braced()
        name = _NAME.match(text, self.index)
        if not name:
            return "$"
        self.index = name.end()
        return self.env.get(name.group(0), "")

    def _braced(self) -> str:
        text = self.text
        name = _NAME.match(text, self.index + 1)
        if not name:
            raise self.error(f"bad substitution in {text[:120]!r}")
        self.index = name.end()
        variable = name.group(0)
        value = self.env.get(variable)
        if text.startswith("}", self.index):
            self.index += 1
            return value or ""
        operator = next(
            (op for op in (":-", ":+", ":?", "-", "+", "?") if text.startswith(op, self.index)), None
        )
        if operator is None:
            problem = "missing '}'" if self.index >= len(text) else "unsupported substitution"
            raise self.error(f"{problem} in {text[:120]!r}")
        self.index += len(operator)
        word = self.word("}")
        self.index += 1
        unset = value is None or (operator.startswith(":") and value == "")
        if operator.endswith("-"):
            return word if unset else value or ""
        if operator.endswith("+"):
            return "" if unset else word
        if unset:
            raise self.error(f"{variable}: {word or 'is not set'}")
        return value or ""


def _expand(word: str, env: Mapping[str, str], escape: str, line: int) -> str:
    return _Expander(word, env, escape, line).word()


def _platform_args(platform: str) -> dict[str, str]:
    os_, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    values = {"PLATFORM": platform, "OS": os_, "ARCH": arch, "VARIANT": variant}
    return {f"{scope}{key}": value for scope in ("TARGET", "BUILD") for key, value in values.items()}


def stages(text: str, build_args: Mapping[str, str], *, platform: str = DEFAULT_PLATFORM) -> list[Stage]:
    """Every ``FROM`` of the Dockerfile, its base substituted with the global ``ARG``s."""
    escape, instructions = _instructions(text)
    env: dict[str, str] = _platform_args(platform)
    result: list[Stage] = []
    for line, instruction in instructions:
        keyword, arguments = _keyword(instruction)
        if keyword == "arg" and not result:
            for word in _split_words(arguments, escape):
                name, has_default, default = _expand(word, env, escape, line).partition("=")
                if not name:
                    raise DockerfileError(f"line {line}: ARG needs a name")
                if name in build_args:
                    env[name] = build_args[name]
                elif has_default:
                    env[name] = default
        elif keyword == "from":
            result.append(_stage(arguments, env, escape, line))
    if not result:
        raise DockerfileError("the Dockerfile has no FROM instruction")
    return result


def _stage(arguments: str, env: Mapping[str, str], escape: str, line: int) -> Stage:
    words = arguments.split()
    while words and words[0].startswith("--"):
        if not words[0].lower().startswith("--platform="):
            raise DockerfileError(f"line {line}: FROM does not take {words[0].split('=')[0]}")
        words.pop(0)
    if len(words) == 3 and words[1].lower() == "as":
        name: str | None = words[2].lower()
    elif len(words) == 1:
        name = None
    else:
        raise DockerfileError(f"line {line}: expected FROM [--platform=…] image [AS name]")
    base = _expand(words[0], env, escape, line)
    if not base or any(char.isspace() for char in base):
        raise DockerfileError(f"line {line}: the base image {words[0]!r} expands to {base!r}")
    return Stage(base=base, name=name, line=line)


def _resolve(all_stages: list[Stage], index: int) -> str:
    """The image a stage is built on, following ``FROM <earlier stage>`` chains."""
    while True:
        base = all_stages[index].base.lower()
        earlier = [i for i in range(index) if all_stages[i].name == base]
        if not earlier:
            return all_stages[index].base
        index = earlier[-1]


def final_stage_bases(
    text: str,
    build_args: Mapping[str, str],
    target: str | None = None,
    *,
    platform: str = DEFAULT_PLATFORM,
) -> tuple[str, ...]:
    """The final stage's (or ``target``'s) base image, stage aliases followed; ``scratch`` → ()."""
    all_stages = stages(text, build_args, platform=platform)
    index = len(all_stages) - 1
    if target is not None:
        named = [i for i, stage in enumerate(all_stages) if stage.name == target.lower()]
        if not named:
            raise DockerfileError(f"target stage {target!r} not found")
        index = named[0]
    base = _resolve(all_stages, index)
    return () if base.lower() == "scratch" else (base,)


def all_stage_bases(
    text: str, build_args: Mapping[str, str], *, platform: str = DEFAULT_PLATFORM
) -> tuple[str, ...]:
    """Every image the stages start from (not stage names, not ``scratch``), once each, in order."""
    all_stages = stages(text, build_args, platform=platform)
    bases = (_resolve(all_stages, index) for index in range(len(all_stages)))
    return tuple(dict.fromkeys(base for base in bases if base.lower() != "scratch"))
