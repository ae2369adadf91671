"""A local build context as docker sends it: a gzip'd tar of a folder, minus what `.dockerignore` excludes.

The matcher follows docker's own (moby/patternmatcher), not gitignore's: a pattern is anchored at
the context root (``*.md`` is only the root's Markdown files; ``**/*.md`` is all of them), ``*`` and
``?`` never cross a ``/``, ``**`` crosses any number of folders, ``[a-c]``/``[^a]`` are character
classes, ``\\`` escapes, and a pattern that matches a folder matches everything in it. Patterns
are applied in order and the last one matching a path decides; ``!pattern`` re-includes. Lines
starting with ``#`` are comments; leading and trailing ``/`` and ``./`` are dropped (Go's
``filepath.Clean``). The Dockerfile and `.dockerignore` are always sent, as docker does.

pathspec was considered: its gitignore patterns match un-anchored names at any depth and treat a
trailing ``/`` specially, so emulating docker with it needs as much code as this.
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Pattern:
    """One `.dockerignore` line, compiled."""

    text: str
    exclusion: bool  # a ``!`` line: re-includes what it matches
    regex: re.Pattern[str]

    def matches(self, path: str) -> bool:
        """Whether this pattern matches ``path`` (``a/b/c``) or one of its parent folders."""
        if self.regex.match(path):
            return True
        parts = path.split("/")
        return any(self.regex.match("/".join(parts[:i])) for i in range(1, len(parts)))


def _clean(pattern: str) -> str:
    """Go's filepath.Clean, then without a leading ``/`` (moby does both)."""
    cleaned = posixpath.normpath(pattern)
    if cleaned.startswith("//"):
        cleaned = cleaned[1:]
    return cleaned.lstrip("/") or "."


def _compile(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher's translation of a pattern to a regular expression."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(.*/)?")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            i += 1
            if i < n:
                out.append(re.escape(pattern[i]))
        elif ch == "[":
            # a character class passes through as Go's regexp reads it: [a-c], [^a]
            end = pattern.find("]", i + 2)
            if end < 0:
                raise ValueError(f"unterminated character class in .dockerignore pattern {pattern!r}")
            out.append("[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return re.compile("".join(out))


def parse(text: str) -> list[Pattern]:
    """The patterns of a `.dockerignore` file, in order."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
            if not line:
                raise ValueError('.dockerignore: "!" must be followed by a pattern')
        cleaned = _clean(line)
        patterns.append(Pattern(text=cleaned, exclusion=exclusion, regex=_compile(cleaned)))
    return patterns


def excluded(path: str, patterns: Sequence[Pattern]) -> bool:
    """Whether ``path`` (relative, ``/``-separated) is left out: the last matching pattern decides."""
    result = False
    for pattern in patterns:
        if result == pattern.exclusion and pattern.matches(path):
            result = not pattern.exclusion
    return result


def context_files(root: Path, dockerfile: str | None = "Dockerfile") -> Iterator[str]:
    """The context's paths (folders before their contents, sorted) that docker would send."""
    ignore = root / ".dockerignore"
    patterns = parse(ignore.read_text(encoding="utf-8")) if ignore.is_file() else []
    always = {".dockerignore"}
    if dockerfile:
        always.add(posixpath.normpath(dockerfile.replace(os.sep, "/")))
    any_exclusion = any(p.exclusion for p in patterns)

    def walk(folder: Path, prefix: str) -> Iterator[str]:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            rel = f"{prefix}{entry.name}"
            is_dir = entry.is_dir(follow_symlinks=False)
            skipped = rel not in always and excluded(rel, patterns)
            if not skipped:
                yield rel
            # an excluded folder may still hold re-included files (``!`` lines), as docker walks
            # it, or the Dockerfile
            if is_dir and (not skipped or any_exclusion or any(a.startswith(rel + "/") for a in always)):
                yield from walk(Path(entry.path), rel + "/")

    yield from walk(root, "")


def write_context(root: Path, out: BinaryIO, dockerfile: str | None = "Dockerfile") -> int:
    """Write the context of ``root`` to ``out`` as a gzip'd tar; the number of entries written.

    Owners are reset to root (0:0), as docker does; modes and modification times are kept.
    """
    count = 0
    with (
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel in context_files(root, dockerfile):
            info = tar.gettarinfo(str(root / rel), arcname=rel)
            if info is None:  # a socket: not a file a build can use
                continue
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with (root / rel).open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
            count += 1
    return count


def context_bytes(root: Path, dockerfile: str | None = "Dockerfile") -> bytes:
    """The gzip'd tar in memory (for tests and small contexts)."""
    buffer = io.BytesIO()
    write_context(root, buffer, dockerfile)
    return buffer.getvalue()
