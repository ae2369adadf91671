"""Options and small helpers the command modules share."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        "-r",
        help="Registry URL or host [env DOCKYARD_REGISTRY, default http://127.0.0.1:5000].",
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
TopOption = Annotated[int | None, typer.Option("--top", min=1, help="Return at most this many items.")]
ExpiryOption = Annotated[
    int | None,
    typer.Option("--expiration-in-days", min=1, help="Expire after this many days [default: never]."),
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
