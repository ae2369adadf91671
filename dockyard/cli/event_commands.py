"""`dockyard event list`: the repository event log (ACR's repository event logs)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from dockyard.cli.client import connect
from dockyard.cli.options import RegistryOption, TopOption
from dockyard.cli.output import OutputFormat, emit, output_option

EVENT_COLUMNS = ["id", "time", "action", "repository", "tag", "digest", "actor", "clientIp"]


class EventAction(enum.StrEnum):
    push = "push"
    pull = "pull"
    delete = "delete"
    untag = "untag"
    chart_push = "chart_push"
    chart_delete = "chart_delete"
    quarantine = "quarantine"


def utc_time(value: str) -> str:
    """An ISO 8601 time as UTC (``…Z``); a time without an offset is taken as UTC.

    The registry compares times as written when it stores them in SQLite, so an offset such
    as ``+02:00`` is converted here. What does not parse is sent as is, for the registry to refuse.
    """
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


app = typer.Typer(help="Read the repository event log: pushes, pulls, deletes, untags.", no_args_is_help=True)


@app.command("list")
def list_events(
    repository: Annotated[
        str | None, typer.Option("--repository", help="Only this repository, e.g. team/app.")
    ] = None,
    action: Annotated[EventAction | None, typer.Option("--action", help="Only this action.")] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only events at or after this ISO 8601 time (UTC unless it has an offset)."
        ),
    ] = None,
    top: TopOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """List the newest events, oldest first (100 unless --top)."""
    params: dict[str, Any] = {"limit": top or 100}
    if repository:
        params["repository"] = repository
    if action is not None:
        params["action"] = action.value
    if since:
        params["since"] = utc_time(since)
    with connect(registry) as client:
        emit(client.json("GET", "/api/v1/events", params=params)["value"], output, EVENT_COLUMNS)
