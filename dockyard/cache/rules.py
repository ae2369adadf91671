"""Cache rules, pure: names, source and target grammar, and which rule serves a repository.

A static rule maps one repository (``docker.io/library/ubuntu`` → ``ubuntu``); a wildcard rule
maps a namespace (``registry:5000/team/*`` → ``hub/*``: ``hub/a/b`` comes from ``team/a/b``).
A static rule may overlap a wildcard; the most specific rule wins (static, then the longest prefix).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.names import is_valid_name

#: ACR: 5 to 50 alphanumerics and dashes.
RULE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9-]{4,49}\Z")
LOGIN_SERVER = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9-]+)*(?::[0-9]{1,5})?\Z"
)
DOCKER_HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB = "registry-1.docker.io"
WILDCARD = "/*"


def invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID_REQUEST, message)


def check_name(name: str, what: str = "rule") -> str:
    """A rule or credential set name (ACR's grammar), else INVALID_REQUEST."""
    if not RULE_NAME.match(name):
        raise invalid(f"{what} name {name[:80]!r} must be 5 to 50 letters, digits and dashes")
    return name


def normal_login_server(server: str) -> str:
    """``host[:port]`` lower-cased, Docker Hub's names folded into its API host."""
    server = server.strip().lower()
    for prefix in ("https://", "http://"):
        server = server.removeprefix(prefix)
    server = server.rstrip("/")
    if not LOGIN_SERVER.match(server) or len(server) > 255 or not _plain_address(server):
        raise invalid(f"login server {server[:80]!r} is not host[:port]")
    return DOCKER_HUB if server in DOCKER_HUB_NAMES else server


def _plain_address(server: str) -> bool:
    """A host ending in a number must be a dotted-quad IPv4 address (URL parsers read ``0177.0.0.1``,
    ``2130706433`` or ``127.1`` as addresses, or refuse them)."""
    host = server.rsplit(":", 1)[0] if ":" in server else server
    last = host.rsplit(".", 1)[-1]
    if not (last.isdigit() or last.startswith("0x")):
        return True
    try:
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


@dataclass(frozen=True)
class Source:
    """A rule's source: the upstream registry and a repository (or ``prefix`` with ``wildcard``)."""

    registry: str
    repository: str
    wildcard: bool

    def upstream_repository(self, rest: str) -> str:
        """The upstream repository for ``rest`` (what the wildcard matched; '' for a static rule)."""
        name = f"{self.repository}/{rest}" if self.wildcard and self.repository else rest or self.repository
        if self.registry == DOCKER_HUB and "/" not in name:
            name = f"library/{name}"
        return name


def parse_source(text: str) -> Source:
    """``login-server/repository`` or ``login-server/prefix/*`` (no tag, no digest)."""
    server, _, path = text.strip().partition("/")
    if not path:
        raise invalid(f"source repository {text[:200]!r} must be login-server/repository")
    registry = normal_login_server(server)
    wildcard = path == "*" or path.endswith(WILDCARD)
    repository = "" if path == "*" else path.removesuffix(WILDCARD)
    if repository and not is_valid_name(repository):
        raise invalid(f"source repository {text[:200]!r}: {repository[:200]!r} is not a repository name")
    if registry == DOCKER_HUB and repository and not wildcard and "/" not in repository:
        repository = f"library/{repository}"
    return Source(registry, repository, wildcard)


def parse_target(text: str) -> tuple[str, bool]:
    """(repository or prefix, wildcard) of a rule's target repository."""
    wildcard = text.endswith(WILDCARD)
    name = text.removesuffix(WILDCARD)
    if not is_valid_name(name):
        raise invalid(f"target repository {text[:200]!r} must be a repository name or prefix/*")
    return name, wildcard


def check_rule(source: str, target: str) -> Source:
    """Validate a rule's source and target together (both static or both wildcards)."""
    parsed = parse_source(source)
    _, wildcard = parse_target(target)
    if parsed.wildcard != wildcard:
        raise invalid("the source and target repositories must both end in /* or neither")
    return parsed


@dataclass(frozen=True)
class Rule:
    """A cache rule as the read path needs it."""

    id: int
    name: str
    source: Source
    target: str
    wildcard: bool
    credential_set: str | None


@dataclass(frozen=True)
class Match:
    """Where a repository under a rule comes from."""

    rule: Rule
    registry: str
    repository: str


class RuleSet:
    """Every rule, indexed for the one question the registry asks per request."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self._static: dict[str, Rule] = {}
        prefixes: list[Rule] = []
        for rule in rules:
            if rule.wildcard:
                prefixes.append(rule)
            else:
                self._static[rule.target] = rule
        #: Longest prefix first: the most specific wildcard wins.
        self._prefixes = sorted(prefixes, key=lambda r: len(r.target), reverse=True)

    def __bool__(self) -> bool:
        return bool(self._static or self._prefixes)

    def match(self, repository: str) -> Match | None:
        """The rule ``repository`` is under, and its upstream repository; None if none."""
        rule = self._static.get(repository)
        if rule is not None:
            return Match(rule, rule.source.registry, rule.source.upstream_repository(""))
        for rule in self._prefixes:
            if repository.startswith(rule.target + "/"):
                rest = repository[len(rule.target) + 1 :]
                return Match(rule, rule.source.registry, rule.source.upstream_repository(rest))
        return None
