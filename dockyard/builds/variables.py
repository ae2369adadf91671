"""Run variables in task files and build arguments: ``{{.Run.ID}}``, ``{{.Values.x}}``, ``$ID`` (pure)."""

from __future__ import annotations

import re

from dockyard.builds.spec import RunVariables

_TEMPLATE = re.compile(r"\{\{\s*\.(Run|Values)\.([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
#: v1.1.0 aliases; longest names first so ``$RegistryName`` is not read as ``$Registry`` + ``Name``.
_ALIASES = (
    "RegistryName",
    "Registry",
    "Architecture",
    "SharedVolume",
    "Commit",
    "Branch",
    "Date",
    "OS",
    "ID",
)
_ALIAS = re.compile(r"\$(" + "|".join(_ALIASES) + r")(?![A-Za-z0-9_])")
#: One pass over templates and (``$``-escaped) aliases, so substituted values are never re-scanned.
_ANY = re.compile(_TEMPLATE.pattern + r"|(\$?)" + _ALIAS.pattern)
_RUN_FIELDS = {
    "ID": "run_id",
    "Registry": "registry",
    "RegistryName": "registry_name",
    "Date": "date",
    "OS": "os",
    "Architecture": "architecture",
    "Commit": "commit",
    "Branch": "branch",
    "TaskName": "task_name",
    "SharedVolume": "shared_volume",
}


class UnknownVariable(ValueError):
    """A ``{{.Run.X}}`` or ``{{.Values.x}}`` the run does not define."""


def render(text: str, variables: RunVariables, *, aliases: bool = False) -> str:
    """``text`` with its run variables and values replaced; UnknownVariable names the first unknown one.

    ``aliases`` (task files of version v1.1.0 and later) also replaces ``$ID``, ``$Registry``, … .
    ``$$`` stays a literal ``$`` only where an alias would otherwise match (``$$ID`` → ``$ID``).
    """

    def template(match: re.Match[str]) -> str:
        scope, name = match.group(1), match.group(2)
        if scope == "Run":
            if name not in _RUN_FIELDS:
                raise UnknownVariable(f"unknown run variable {{{{.Run.{name}}}}}")
            return str(getattr(variables, _RUN_FIELDS[name]))
        if name not in variables.values:
            raise UnknownVariable(f"no value for {{{{.Values.{name}}}}}: give it with --set {name}=…")
        return variables.values[name]

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return template(match)
        if not aliases:
            return match.group(0)
        if match.group(3):  # ``$$ID``: a literal ``$ID``
            return match.group(0)[1:]
        return template_alias(match.group(4), variables)

    return _ANY.sub(substitute, text)


def template_alias(name: str, variables: RunVariables) -> str:
    """The value of the alias ``$name``."""
    return str(getattr(variables, _RUN_FIELDS[name]))


def mask(text: str, variables: RunVariables) -> str:
    """``text`` with every secret value (``--set-secret``) replaced by ``***``."""
    secrets = {variables.values.get(key, "") for key in variables.secret_values} - {""}
    for secret in sorted(secrets, key=lambda value: (-len(value), value)):
        text = text.replace(secret, "***")
    return text
