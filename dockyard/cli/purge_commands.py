"""`dockyard purge …`: delete old tags and untagged manifests, as `acr purge`, once or on a schedule.

The purge runs in the registry (a job on its job runtime): this command starts it, waits for it
and prints what it deleted the way acr purge does.
"""

from __future__ import annotations

import enum
import time
from typing import Annotated, Any

import typer

from dockyard.cli.client import RegistryClient, connect, delete_confirmed
from dockyard.cli.options import RegistryOption, TopOption, YesOption
from dockyard.cli.output import OutputFormat, emit, fail, output_option

app = typer.Typer(
    help="Delete tags older than a duration and untagged manifests (as `acr purge`), once or scheduled."
)
schedule_app = typer.Typer(help="Purges that run on a cron schedule (UTC).", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")

RUN_COLUMNS = ["id", "schedule", "status", "dryRun", "deletedTags", "deletedManifests", "freedBytes", "error"]
SCHEDULE_COLUMNS = ["name", "schedule", "filters", "ago", "keep", "untagged", "nextRunTime", "lastRunId"]
POLL_SECONDS = 0.25
DRY_RUN_BANNER = (
    "DRY RUN: The following output shows what WOULD be deleted if the purge command was executed. "
    "Nothing is deleted."
)

FilterOption = Annotated[
    list[str] | None,
    typer.Option(
        "--filter",
        "-f",
        help="repoRegex:tagRegex (repeatable). The repository regex is anchored, the tag regex is not.",
    ),
]
AgoOption = Annotated[
    str | None,
    typer.Option(
        "--ago", help="Delete what was last updated longer ago than this: [days]d + Go duration (2d3h6m)."
    ),
]
KeepOption = Annotated[
    int, typer.Option("--keep", min=0, help="Keep this many of the newest tags to be deleted.")
]
UntaggedOption = Annotated[
    bool, typer.Option("--untagged", help="Also delete manifests left without tags (honours --ago).")
]
UntaggedOnlyOption = Annotated[
    bool,
    typer.Option("--untagged-only", help="Delete only untagged manifests (--filter and --ago optional)."),
]


class PurgeOutput(enum.StrEnum):
    text = "text"
    json = "json"


def _body(
    filters: list[str] | None, ago: str | None, keep: int, untagged: bool, untagged_only: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {"filters": filters or [], "keep": keep, "untagged": untagged}
    body["untaggedOnly"] = untagged_only
    if ago is not None:
        body["ago"] = ago
    return body


def wait_for_run(client: RegistryClient, run_id: int, timeout: float) -> dict[str, Any]:
    """Poll the run until it has finished (or ``timeout`` seconds pass)."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.json("GET", f"/api/v1/purge/runs/{run_id}")
        if run["status"] in ("succeeded", "failed"):
            return run
        if time.monotonic() >= deadline:
            raise fail(
                f"purge run {run_id} has not finished after {timeout:g}s (status {run['status']}); "
                f"see `dockyard purge show-run --id {run_id}` (is a job runtime running?)"
            )
        time.sleep(POLL_SECONDS)


def report_lines(run: dict[str, Any], host: str) -> list[str]:
    """acr purge's output for a finished run, plus the digests and the space it frees."""
    dry = run["dryRun"]
    lines = [DRY_RUN_BANNER] if dry else []
    verb = "Would delete:" if dry else "Deleted"
    current: tuple[str, str] | None = None
    for item in run.get("items", []):
        repository, kind = item["repository"], item["kind"]
        if kind == "repository":
            lines.append(f"{repository} repository not found")
            continue
        if current != (repository, kind):
            what = "tags" if kind == "tag" else "manifests"
            lines.append(f"{'Would delete' if dry else 'Deleting'} {what} for repository: {repository}")
            current = (repository, kind)
        ref = (
            f"{host}/{repository}:{item['tag']}" if kind == "tag" else f"{host}/{repository}@{item['digest']}"
        )
        suffix = f" ({item['digest']})" if kind == "tag" else ""
        if item["action"] in ("deleted", "would-delete"):
            lines.append(f"{verb} {ref}{suffix}")
        elif item["action"] == "not-found":
            lines.append(f"Skipped {ref}, HTTP status: 404")
        else:
            lines.append(f"Skipped {ref}: {item.get('reason', '')}")
    if dry:
        lines += [
            "",
            f"Number of tags to be deleted: {run['deletedTags']}",
            f"Number of manifests to be deleted: {run['deletedManifests']}",
        ]
    else:
        lines += [
            "",
            f"Number of deleted tags: {run['deletedTags']}",
            f"Number of deleted manifests: {run['deletedManifests']}",
        ]
    if run.get("skipped"):
        lines.append(f"Number of skipped tags and manifests: {run['skipped']}")
    lines.append(
        f"Space {'to be freed' if dry else 'freed'}: {run['freedBytes']} bytes "
        "(blobs no remaining manifest references; garbage collection reclaims them when it runs)"
    )
    return lines


@app.callback(invoke_without_command=True)
def purge(
    ctx: typer.Context,
    filters: FilterOption = None,
    ago: AgoOption = None,
    keep: KeepOption = 0,
    untagged: UntaggedOption = False,
    untagged_only: UntaggedOnlyOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be deleted; delete nothing.")
    ] = False,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=32, help="Tag deletions in parallel [1-32].")
    ] = 1,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for the run.")] = 600,
    registry: RegistryOption = None,
    output: Annotated[PurgeOutput, typer.Option("--output", "-o", help="text (as acr purge) or json.")] = (
        PurgeOutput.text
    ),
) -> None:
    """Delete tags matching --filter older than --ago (keeping --keep), and with --untagged the
    manifests left without tags; waits for the run and prints what it deleted."""
    if ctx.invoked_subcommand is not None:
        return
    if not filters and not untagged_only:
        raise fail("--filter is required (unless --untagged-only); see `dockyard purge --help`", 2)
    body = {
        **_body(filters, ago, keep, untagged, untagged_only),
        "dryRun": dry_run,
        "concurrency": concurrency,
    }
    with connect(registry) as client:
        started = client.json("POST", "/api/v1/purge", json=body)
        run = wait_for_run(client, started["id"], timeout)
        host = client.base_url.split("://", 1)[-1]
    if output is PurgeOutput.json:
        emit(run, OutputFormat.json)
    else:
        typer.echo("\n".join(report_lines(run, host)))
    if run["status"] == "failed":
        raise fail(f"Failed to complete purge: {run['error']}")


@app.command("list-runs")
def list_runs(
    registry: RegistryOption = None,
    schedule: Annotated[str | None, typer.Option("--schedule", help="Only this schedule's runs.")] = None,
    top: TopOption = None,
    output: OutputFormat = output_option,
) -> None:
    """List purge runs, newest first."""
    params: dict[str, Any] = {"limit": top or 20}
    if schedule:
        params["schedule"] = schedule
    with connect(registry) as client:
        runs = client.json("GET", "/api/v1/purge/runs", params=params)["runs"]
    emit(runs, output, RUN_COLUMNS)


@app.command("show-run")
def show_run(
    run_id: Annotated[int, typer.Option("--id", help="The run's id.")],
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Show one purge run with every item it deleted or skipped."""
    with connect(registry) as client:
        emit(client.json("GET", f"/api/v1/purge/runs/{run_id}"), output)


@schedule_app.command("create")
def create_schedule(
    name: Annotated[str, typer.Option("--name", "-n", help="Schedule name.")],
    cron: Annotated[
        str, typer.Option("--schedule", help="5-field cron expression in UTC, e.g. '0 1 * * Sun'.")
    ],
    filters: FilterOption = None,
    ago: AgoOption = None,
    keep: KeepOption = 0,
    untagged: UntaggedOption = False,
    untagged_only: UntaggedOnlyOption = False,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Run a purge on a cron schedule (like `az acr task create --cmd "acr purge …" --schedule`)."""
    body = {"name": name, "schedule": cron, **_body(filters, ago, keep, untagged, untagged_only)}
    with connect(registry) as client:
        emit(client.json("POST", "/api/v1/purge/schedules", json=body), output)


@schedule_app.command("list")
def list_schedules(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """List purge schedules."""
    with connect(registry) as client:
        emit(client.json("GET", "/api/v1/purge/schedules")["schedules"], output, SCHEDULE_COLUMNS)


@schedule_app.command("show")
def show_schedule(
    name: Annotated[str, typer.Option("--name", "-n", help="Schedule name.")],
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Show a purge schedule and its next run."""
    with connect(registry) as client:
        emit(client.json("GET", f"/api/v1/purge/schedules/{client.segment(name)}"), output)


@schedule_app.command("delete")
def delete_schedule(
    name: Annotated[str, typer.Option("--name", "-n", help="Schedule name.")],
    registry: RegistryOption = None,
    yes: YesOption = False,
    output: OutputFormat = output_option,
) -> None:
    """Delete a purge schedule (its past runs stay listed)."""
    delete_confirmed(
        registry,
        f"purge schedule {name}",
        lambda client: f"/api/v1/purge/schedules/{client.segment(name)}",
        name,
        yes=yes,
        output=output,
    )
