"""`dockyard gc run|status` (online garbage collection) and `dockyard show-usage` (as `az acr show-usage`)."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import typer

from dockyard.cli.client import connect
from dockyard.cli.options import RegistryOption
from dockyard.cli.output import OutputFormat, emit, fail, output_option

app = typer.Typer(help="Garbage collection: free what no manifest needs.", no_args_is_help=True)

RUN_COLUMNS = [
    "id",
    "status",
    "trigger",
    "dryRun",
    "untagged",
    "gracePeriodSeconds",
    "createdTime",
    "finishedTime",
]
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> int:
    """``90``, ``90s``, ``30m``, ``1h`` or ``2d`` as seconds."""
    match = _DURATION.match(value.strip().lower())
    if match is None:
        raise typer.BadParameter(f"{value!r} is not a duration like 30m, 1h or 0")
    return int(match.group(1)) * _UNITS[match.group(2)]


def freed_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per kind of garbage: items and bytes freed (or, dry, that would be)."""
    freed = run.get("freed") or {}
    return [{"kind": kind, "items": f["items"], "bytes": f["bytes"]} for kind, f in freed.items()]


@app.command("run")
def run(
    grace_period: Annotated[
        str | None,
        typer.Option(
            "--grace-period",
            help="Leave alone anything newer than this (e.g. 1h, 30m, 0); default: the server's.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be freed; delete nothing.")
    ] = False,
    untagged: Annotated[
        bool,
        typer.Option(
            "--untagged", help="Also delete untagged manifests that no index lists (and orphaned referrers)."
        ),
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the run to finish.")] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait at most.")] = 3600.0,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Run garbage collection now on the server and print what it freed."""
    body: dict[str, Any] = {"dryRun": dry_run, "untagged": untagged}
    if grace_period is not None:
        body["gracePeriodSeconds"] = parse_duration(grace_period)
    with connect(registry) as client:
        started = client.json("POST", "/api/v1/gc/runs", json=body)
        if not wait:
            emit(started, output, columns=RUN_COLUMNS)
            return
        deadline = time.monotonic() + timeout
        current = started
        while current["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                raise fail(f"run {started['id']} is still {current['status']}; see `dockyard gc status`")
            time.sleep(0.5)
            current = client.json("GET", f"/api/v1/gc/runs/{started['id']}")
    if current["status"] != "succeeded":
        raise fail(f"run {current['id']} failed: {current.get('error')}")
    emit(
        freed_rows(current) if output.value != "json" else current, output, columns=["kind", "items", "bytes"]
    )
    if current.get("error"):
        typer.echo(f"WARNING: {current['error']}", err=True)


@app.command("status")
def status(
    top: Annotated[int, typer.Option("--top", help="How many runs, newest first.")] = 10,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Show the latest garbage-collection runs."""
    with connect(registry) as client:
        runs = client.json("GET", "/api/v1/gc/runs", params={"limit": top})["value"]
    for item in runs:
        freed = item.get("freed") or {}
        item["itemsFreed"] = sum(f["items"] for f in freed.values())
        item["bytesFreed"] = sum(f["bytes"] for f in freed.values())
    emit(runs, output, columns=[*RUN_COLUMNS, "itemsFreed", "bytesFreed", "error"])


def show_usage(
    repository: Annotated[
        str | None, typer.Option("--repository", help="A repository's size instead (shared layers once).")
    ] = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Show the registry's storage and resource usage (as `az acr show-usage`)."""
    with connect(registry) as client:
        if repository:
            data = client.json("GET", "/api/v1/registry/usage", params={"repository": repository})
            emit(data, output, columns=["name", "sizeBytes", "blobBytes", "manifestBytes", "manifestCount"])
            return
        data = client.json("GET", "/api/v1/registry/usage")
    if output.value == "json":
        emit(data, output)
    else:
        emit(data["value"], output, columns=["name", "limit", "currentValue", "unit"])
