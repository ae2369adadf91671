"""Options and small helpers the command modules share."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        "-r",
        help="Registry URL or host [env DOCKYARD_REGISTRY; default: the registry `dockyard login` "
        "last signed in to, else http://127.0.0.1:5000].",
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
TopOption = Annotated[int | None, typer.Option("--top", min=1, help="Return at most this many items.")]
ExpiryOption = Annotated[
    int | None,
    typer.Option("--expiration-in-days", min=1, help="Expire after this many days [default: never]."),
]

# Local settings, for the commands that run the registry or open its database.
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file.")]
DatabaseUrlOption = Annotated[
    str | None, typer.Option(help="Database URL, e.g. postgresql://user:pass@host/db [default: SQLite].")
]
SettingsDatabaseUrlOption = Annotated[
    str | None, typer.Option(help="Database URL [default: the settings' database].")
]
StoragePathOption = Annotated[
    Path | None, typer.Option(help="Blob store folder [default: DATA_DIR/storage].")
]
StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        metavar="URL",
        help="Blob store: s3://bucket/prefix (AWS_* variables or s3_* settings) or a folder.",
    ),
]


# The choices of settings that are enums in dockyard.config, repeated here because importing
# the settings (pydantic) would cost every command a fifth of a second; a test keeps them equal.
class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class TlsMode(enum.StrEnum):
    off = "off"
    files = "files"
    self_signed = "self-signed"


class LogFormat(enum.StrEnum):
    text = "text"
    json = "json"


LogLevelOption = Annotated[LogLevel | None, typer.Option(help="Log verbosity.")]
LogFormatOption = Annotated[
    LogFormat | None, typer.Option(help="Log lines as text, or as one JSON object each [default: text].")
]


class Status(enum.StrEnum):
    enabled = "enabled"
    disabled = "disabled"


class TrueFalse(enum.StrEnum):
    true = "true"
    false = "false"


def shown_once(what: str) -> None:
    """Tell the user (on stderr) that a generated secret is printed only now."""
    typer.echo(f"Shown only now, never again: save the {what}.", err=True)


def rewrite_variadic(
    args: Sequence[str], options: Sequence[str], fold: Callable[[str, list[str]], list[str]]
) -> list[str]:
    """Give click's fixed-arity options az's ``--option WORD [WORD…]`` form, before parsing.

    After each of ``options`` (as ``--option WORD`` or ``--option=WORD``), the words up to the
    next one starting with ``-`` are handed to ``fold(option, words)``, whose result replaces
    them. Everything else, and everything after ``--``, passes unchanged.
    """
    out: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            out += args[index:]
            break
        name, equals, value = arg.partition("=")
        if name not in options or (not equals and index + 1 >= len(args)):
            out.append(arg)
            index += 1
            continue
        if equals:
            words, index = [value], index + 1
        else:
            words, index = [args[index + 1]], index + 2
        while index < len(args) and not args[index].startswith("-"):
            words.append(args[index])
            index += 1
        out += fold(name, words)
    return out
