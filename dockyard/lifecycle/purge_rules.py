"""What ``dockyard purge`` deletes, as ``acr purge`` (Azure/acr-cli) decides it: pure functions, no I/O.

- ``--filter 'repoRegex:tagRegex'``: split at the first colon outside a ``(?i:…)`` group or a
  ``[[:alpha:]]`` class; the repository regex is anchored (``^…$``), the tag regex is not
  (``v1`` matches ``v10``); several filters on one repository are joined with ``|``.
- ``--ago 2d3h6m``: whole days, then a Go duration; capped at 150 years.
- ``--keep N``: of the matching tags older than the cut-off, sorted newest first, the first N stay.
- ``--untagged``: manifests without tags (after the tag deletions) older than the cut-off go too,
  except the children of an index that stays, referrers whose subject stays and subjects of
  referrers that stay; they are deleted parents first (index before child, referrer before subject).
"""

from __future__ import annotations

import graphlib
import re as std_re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import regex

#: acr-cli's filter split: a colon that is not part of ``(?flags:`` nor of ``[[:class:]]``.
_FILTER_COLON = regex.compile(r"(?<!\(\?[imsU-]{0,5}|\[*\^*\[\^*):(?!\]\]*)")
MAX_AGO_DAYS = 150 * 365
#: How long one regex match may take (acr-cli's --filter-timeout-seconds default is 60).
MATCH_TIMEOUT_SECONDS = 5.0
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = std_re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_LITERAL = std_re.compile(r"[A-Za-z0-9_/\-]+")


class PurgeInputError(ValueError):
    """A filter or duration that cannot be used (the message says why)."""


@dataclass(frozen=True)
class Filter:
    """One ``--filter``: a repository regex and a tag regex."""

    repository: str
    tag: str

    @property
    def literal(self) -> bool:
        """Whether the repository part can only match itself (acr-cli then skips the catalog)."""
        return bool(_LITERAL.fullmatch(self.repository))


#: RE2's (so acr-cli's) largest repeat count, and a bound on a regex's size once its counted
#: repeats are expanded: ``regex`` compiles ``(a{1000}){1000}`` into ~300 MiB, with no timeout.
MAX_REPEAT = 1000
MAX_EXPANDED = 20_000  # for all filters of a purge together
_COUNTED = std_re.compile(r"\{([0-9]*)(?:,([0-9]*))?\}")


def _skip_atom(pattern: str, position: int) -> int:
    """The end of the escape or character class starting at ``position`` (else ``position``)."""
    if pattern[position] == "\\":
        end = position + 2
        if pattern[position + 1 : end] in ("p", "P", "x", "N", "u", "U") and pattern[end : end + 1] == "{":
            end = pattern.find("}", end) + 1 or len(pattern)
        return end
    if pattern[position] != "[":
        return position
    first = position + (2 if pattern[position + 1 : position + 2] == "^" else 1)  # "[]…]": "]" literal
    depth, end = 1, first
    while end < len(pattern) and depth:
        if pattern[end] == "\\":
            end += 1
        elif pattern[end] == "[":
            depth += 1
        elif pattern[end] == "]" and end > first:
            depth -= 1
        end += 1
    return end


def _repeat_count(digits: str) -> int:
    """A repeat count's value, read from at most 7 significant digits (enough to exceed MAX_REPEAT)."""
    return int(digits.lstrip("0")[:7] or 0)


def expanded_size(pattern: str) -> int:
    """An upper bound of ``pattern``'s size with counted repeats (``{n,m}``) expanded.

    Groups nest; a character class, escape or other atom counts 1; ``{n}``/``{n,m}`` multiplies
    the atom before it. PurgeInputError when a count exceeds MAX_REPEAT, as in RE2."""
    stack: list[list[int]] = [[]]  # per open group: the sizes of its atoms so far
    position = 0
    while position < len(pattern):
        char, atoms = pattern[position], stack[-1]
        end = _skip_atom(pattern, position)
        counted = _COUNTED.match(pattern, position) if char == "{" else None
        if end > position:
            atoms.append(1)
            position = end
            continue
        if counted is not None and counted.group(0) != "{}":
            low, high = counted.group(1), counted.group(2)
            count = max(_repeat_count(low), _repeat_count(high) if high else 0)
            if count > MAX_REPEAT:
                raise PurgeInputError(f"repeat count {counted.group(0)[:20]!r} is over {MAX_REPEAT}")
            if atoms:
                atoms[-1] *= max(count, 1)
            position = counted.end()
            continue
        if char == "(":
            stack.append([])
        elif char == ")" and len(stack) > 1:
            inner = stack.pop()
            stack[-1].append(max(sum(inner), 1))
        elif char not in "|*+?^$":
            atoms.append(1)
        position += 1
    while len(stack) > 1:
        inner = stack.pop()
        stack[-1].append(max(sum(inner), 1))
    return sum(stack[0])


def parse_filter(text: str) -> Filter:
    """``repoRegex:tagRegex`` → a ``Filter`` (both regexes compiled once to check them)."""
    parts = _FILTER_COLON.split(text)
    if len(parts) != 2:
        raise PurgeInputError(f"unable to correctly parse filter {text!r}: use 'repoRegex:tagRegex'")
    repository, tag = parts
    if not repository:
        raise PurgeInputError(f"filter {text!r}: missing repository name/expression")
    if not tag:
        raise PurgeInputError(f"filter {text!r}: missing tag name/expression")
    for part in (repository, tag):
        try:
            if expanded_size(part) > MAX_EXPANDED:
                raise PurgeInputError(
                    f"filter {text[:200]!r}: regular expression {part[:200]!r} is too large"
                )
            regex.compile(part)
        except regex.error as exc:
            raise PurgeInputError(f"filter {text!r}: invalid regular expression {part!r}: {exc}") from None
        except (RecursionError, OverflowError):  # the regex module's parser recurses per nested group
            raise PurgeInputError(
                f"filter {text[:200]!r}: regular expression {part[:200]!r} is nested too deeply"
            ) from None
    return Filter(repository, tag)


def parse_go_duration(text: str) -> timedelta:
    """A Go ``time.ParseDuration`` string without a sign (``3h6m``, ``1.5h``, ``90s``)."""
    if text == "0":
        return timedelta(0)
    position, seconds = 0, 0.0
    while position < len(text):
        match = _GO_PART.match(text, position)
        if match is None or match.group(1) in ("", "."):
            raise PurgeInputError(f"invalid duration {text!r}")
        seconds += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    if not text:
        raise PurgeInputError("invalid duration ''")
    return timedelta(seconds=min(seconds, MAX_AGO_DAYS * 86400.0))


def parse_ago(text: str) -> timedelta:
    """``--ago``: ``[N]d`` then an optional Go duration (``2d3h6m``, ``30d``, ``12h``), at most 150 years."""
    text = text.strip()
    days = 0
    rest = text
    head = std_re.match(r"([0-9]+)d", text)
    if head is not None:
        digits = head.group(1).lstrip("0") or "0"  # int() refuses over 4,300 digits; all cap anyway
        days, rest = (int(digits) if len(digits) <= 9 else MAX_AGO_DAYS), text[head.end() :]
    elif "d" in text:
        raise PurgeInputError(f"invalid --ago {text!r}: days come first, as in 2d3h6m")
    if not text:
        raise PurgeInputError("--ago is empty")
    try:
        extra = parse_go_duration(rest) if rest else timedelta(0)
    except PurgeInputError:
        raise PurgeInputError(
            f"invalid --ago {text!r}: use [days]d then a Go duration, e.g. 2d3h6m"
        ) from None
    return min(timedelta(days=min(days, MAX_AGO_DAYS)) + extra, timedelta(days=MAX_AGO_DAYS))


def _search(pattern: regex.Pattern[str], text: str, source: str) -> bool:
    """Whether ``pattern`` matches in ``text``; PurgeInputError when it runs out of time."""
    try:
        return pattern.search(text, timeout=MATCH_TIMEOUT_SECONDS) is not None
    except TimeoutError:
        raise PurgeInputError(
            f"regular expression {source[:200]!r} timed out after {MATCH_TIMEOUT_SECONDS:g} s"
            f" on {text[:200]!r}"
        ) from None


def tag_filters(filters: Sequence[Filter], repositories: Iterable[str]) -> dict[str, str]:
    """Repository → the tag regex to apply there, as acr-cli's ``CollectTagFilters``.

    A literal repository name is taken as given (it may not exist: the run says so); a regex is
    matched, anchored as ``^regex$``, against ``repositories``.
    """
    names = sorted(set(repositories))
    result: dict[str, str] = {}
    for item in filters:
        if item.literal:
            matched = [item.repository]
        else:
            pattern = regex.compile("^" + item.repository + "$")
            matched = [n for n in names if _search(pattern, n, item.repository)]
        for name in matched:
            result[name] = f"{result[name]}|{item.tag}" if name in result else item.tag
    return result


@dataclass(frozen=True)
class TagRow:
    """A tag as purge sees it."""

    name: str
    digest: str
    updated_at: datetime
    #: Deleting it is refused (delete or write disabled); such tags are never selected.
    locked: bool = False


@dataclass(frozen=True)
class ManifestRow:
    """A manifest as purge sees it: its tags, the children it lists and the subject it refers to."""

    digest: str
    media_type: str
    updated_at: datetime
    tags: int
    children: tuple[str, ...] = ()
    subject: str | None = None
    locked: bool = False


def select_tags(tags: Sequence[TagRow], tag_regex: str, cutoff: datetime | None, keep: int) -> list[TagRow]:
    """The tags to delete: matching ``tag_regex`` (a search, not anchored), last updated strictly
    before ``cutoff`` (None: any time), not locked, minus the ``keep`` newest of those."""
    pattern = regex.compile(tag_regex)
    newest_first = sorted(tags, key=lambda t: (-t.updated_at.timestamp(), t.name))
    eligible = [
        tag
        for tag in newest_first
        if _search(pattern, tag.name, tag_regex)
        and (cutoff is None or tag.updated_at < cutoff)
        and not tag.locked
    ]
    return eligible[max(keep, 0) :]


def without_tags(manifests: Sequence[ManifestRow], deleted: Iterable[TagRow]) -> list[ManifestRow]:
    """The manifests as they will be once ``deleted`` tags are gone (what a dry run looks at)."""
    lost: dict[str, int] = {}
    for tag in deleted:
        lost[tag.digest] = lost.get(tag.digest, 0) + 1
    return [
        ManifestRow(m.digest, m.media_type, m.updated_at, max(m.tags - lost.get(m.digest, 0), 0),
                    m.children, m.subject, m.locked)
        if m.digest in lost
        else m
        for m in manifests
    ]  # fmt: skip


def select_untagged(manifests: Sequence[ManifestRow], cutoff: datetime | None) -> list[ManifestRow]:
    """The untagged manifests to delete, parents first (see the module docstring)."""
    by_digest: Mapping[str, ManifestRow] = {m.digest: m for m in manifests}
    deleting = {
        m.digest
        for m in manifests
        if m.tags == 0 and not m.locked and (cutoff is None or m.updated_at < cutoff)
    }
    referrers: dict[str, list[str]] = {}
    for m in manifests:
        if m.subject is not None:
            referrers.setdefault(m.subject, []).append(m.digest)
    changed = True
    while changed:
        changed = False
        for m in manifests:
            if m.digest in deleting:
                if m.subject is not None and m.subject in by_digest and m.subject not in deleting:
                    deleting.discard(m.digest)  # a referrer of a subject that stays
                    changed = True
                elif any(r not in deleting for r in referrers.get(m.digest, ())):
                    deleting.discard(m.digest)  # the subject of a referrer that stays
                    changed = True
            else:
                for child in m.children:
                    if child in deleting:
                        deleting.discard(child)  # listed by an index that stays
                        changed = True
    return _parents_first([by_digest[d] for d in sorted(deleting)], deleting)


def _parents_first(chosen: list[ManifestRow], deleting: set[str]) -> list[ManifestRow]:
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for m in chosen:
        sorter.add(m.digest)
        for child in m.children:
            if child in deleting:
                sorter.add(child, m.digest)
        if m.subject is not None and m.subject in deleting:
            sorter.add(m.subject, m.digest)
    by_digest = {m.digest: m for m in chosen}
    return [by_digest[d] for d in sorter.static_order()]


def cutoff_of(now: datetime, ago: timedelta | None) -> datetime | None:
    """The instant before which things count as old (None: no age limit)."""
    return None if ago is None else now - ago
