"""`dockyard task …` (as `az acr task`): tasks, their runs, logs, timers and trigger secrets."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dockyard.cli.build_commands import (
    RUN_COLUMNS,
    ImageOption,
    NoLogsOption,
    NoWaitOption,
    PlatformOption,
    SetOption,
    SetSecretOption,
    follow,
    pairs,
    run_path,
    stream_log,
    summary,
)
from dockyard.cli.client import RegistryClient, connect, delete_confirmed
from dockyard.cli.options import RegistryOption, Status, TopOption, TrueFalse, YesOption, shown_once
from dockyard.cli.output import OutputFormat, emit, fail, output_option

TASK_COLUMNS = [
    "name",
    "status",
    "context",
    "file",
    "cmd",
    "images",
    "platform",
    "commitTriggerEnabled",
    "baseImageTriggerEnabled",
    "timers",
]
CREATED_COLUMNS = ["name", "status", "context", "images", "triggerSecret", "triggerUrls"]
TIMER_COLUMNS = ["name", "schedule", "enabled"]

app = typer.Typer(
    help="Manage tasks: builds triggered by commits, base images and timers.", no_args_is_help=True
)
timer_app = typer.Typer(help="Manage a task's timers (5-field cron, UTC).", no_args_is_help=True)
app.add_typer(timer_app, name="timer")

NameOption = Annotated[str, typer.Option("--name", "-n", help="The task's name (5-50 of A-Z a-z 0-9 _ -).")]
RunIdOption = Annotated[str, typer.Option("--run-id", help="The run's ID (e.g. dy12).")]
TimerNameOption = Annotated[str, typer.Option("--timer-name", help="The timer's name.")]
ContextOption = Annotated[
    str | None,
    typer.Option(
        "--context",
        "-c",
        help="A git URL (…#branch:folder), a local git repository, a tarball URL, oci://… or /dev/null.",
    ),
]
FileOption = Annotated[
    str | None, typer.Option("--file", "-f", help="The Dockerfile or the task file (.yaml) in the context.")
]
CmdOption = Annotated[str | None, typer.Option("--cmd", help='Run one container: "<image> args".')]
ArgOption = Annotated[
    list[str] | None, typer.Option("--arg", help="A build argument: name=value (repeatable).")
]
SecretArgOption = Annotated[
    list[str] | None, typer.Option("--secret-arg", help="A secret build argument: name=value (repeatable).")
]
NoPushOption = Annotated[
    bool | None, typer.Option("--no-push/--push", help="Build without pushing (or push again).")
]
TimeoutOption = Annotated[int | None, typer.Option("--timeout", min=1, help="A run's timeout in seconds.")]
CommitTrigger = Annotated[
    TrueFalse | None, typer.Option("--commit-trigger-enabled", help="Run on pushes [default: true].")
]
PullRequestTrigger = Annotated[
    TrueFalse | None,
    typer.Option("--pull-request-trigger-enabled", help="Run on pull requests [default: false]."),
]
BaseImageTrigger = Annotated[
    TrueFalse | None,
    typer.Option("--base-image-trigger-enabled", help="Run when a base image changes [default: true]."),
]
GitTokenOption = Annotated[
    str | None, typer.Option("--git-access-token", help="A token to clone a private https repository.")
]
StatusOption = Annotated[
    Status | None, typer.Option("--status", case_sensitive=False, help="Enabled or Disabled.")
]


def _task_path(client: RegistryClient, name: str) -> str:
    return f"/api/v1/tasks/{client.segment(name)}"


def _with_full_urls(client: RegistryClient, task: dict[str, Any]) -> dict[str, Any]:
    """The task with its trigger URLs as full URLs (the registry's address in front)."""
    urls = task.get("triggerUrls")
    if isinstance(urls, dict):
        task = {**task, "triggerUrls": {k: f"{client.base_url}{v}" for k, v in urls.items()}}
    return task


def _flag(value: TrueFalse | None) -> bool | None:
    return None if value is None else value is TrueFalse.true


def _task_body(
    *,
    context: str | None,
    file: str | None,
    cmd: str | None,
    image: list[str] | None,
    arg: list[str] | None,
    secret_arg: list[str] | None,
    values: list[str] | None,
    secret_values: list[str] | None,
    platform: str | None,
    no_push: bool | None,
    timeout: int | None,
    commit_trigger: TrueFalse | None,
    pull_request_trigger: TrueFalse | None,
    base_image_trigger: TrueFalse | None,
    git_access_token: str | None,
    status: Status | None,
) -> dict[str, Any]:
    """The fields given on the command line, in the API's names (absent ones left out)."""
    body: dict[str, Any] = {
        "context": context,
        "file": file,
        "cmd": cmd,
        "images": image or None,
        "args": pairs(arg, "--arg") or None,
        "secretArgs": pairs(secret_arg, "--secret-arg") or None,
        "values": pairs(values, "--set") or None,
        "secretValues": pairs(secret_values, "--set-secret") or None,
        "platform": platform,
        "noPush": no_push,
        "timeout": timeout,
        "commitTriggerEnabled": _flag(commit_trigger),
        "pullRequestTriggerEnabled": _flag(pull_request_trigger),
        "baseImageTriggerEnabled": _flag(base_image_trigger),
        "gitAccessToken": git_access_token,
        "status": status.value.capitalize() if status else None,
    }
    return {k: v for k, v in body.items() if v is not None}


def _schedules(values: list[str] | None) -> list[dict[str, Any]]:
    """``--schedule CRON`` or ``--schedule NAME:CRON`` (repeatable); unnamed timers are t1, t2, …"""
    timers = []
    for index, value in enumerate(values or [], start=1):
        name, colon, cron = value.partition(":")
        if not colon or " " in name:
            name, cron = f"t{index}", value
        timers.append({"name": name, "schedule": cron.strip(), "enabled": True})
    return timers


def _print_secret(client: RegistryClient, task: dict[str, Any], output: OutputFormat) -> None:
    task = _with_full_urls(client, task)
    emit(task, output, CREATED_COLUMNS)
    if task.get("triggerSecret"):
        shown_once("trigger secret")


@app.command("create")
def create(
    name: NameOption,
    context: ContextOption = None,
    file: FileOption = None,
    cmd: CmdOption = None,
    image: ImageOption = None,
    arg: ArgOption = None,
    secret_arg: SecretArgOption = None,
    values: SetOption = None,
    secret_values: SetSecretOption = None,
    platform: PlatformOption = None,
    no_push: NoPushOption = None,
    timeout: TimeoutOption = None,
    schedule: Annotated[
        list[str] | None,
        typer.Option("--schedule", help='A timer: "CRON" or "NAME:CRON", 5 fields, UTC (repeatable).'),
    ] = None,
    commit_trigger: CommitTrigger = None,
    pull_request_trigger: PullRequestTrigger = None,
    base_image_trigger: BaseImageTrigger = None,
    git_access_token: GitTokenOption = None,
    status: StatusOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Create a task; prints its trigger secret (once) and trigger URLs."""
    if context is None:
        raise fail(
            "give --context/-c (a git URL, a local git repository, a tarball URL, oci://… or /dev/null)", 2
        )
    if file is None and cmd is None:
        raise fail("give --file/-f (a Dockerfile or a task file) or --cmd", 2)
    body = _task_body(
        context=context,
        file=file,
        cmd=cmd,
        image=image,
        arg=arg,
        secret_arg=secret_arg,
        values=values,
        secret_values=secret_values,
        platform=platform,
        no_push=no_push,
        timeout=timeout,
        commit_trigger=commit_trigger,
        pull_request_trigger=pull_request_trigger,
        base_image_trigger=base_image_trigger,
        git_access_token=git_access_token,
        status=status,
    )
    body["name"] = name
    timers = _schedules(schedule)
    if timers:
        body["timers"] = timers
    with connect(registry) as client:
        _print_secret(client, client.json("POST", "/api/v1/tasks", json=body), output)


@app.command("update")
def update(
    name: NameOption,
    context: ContextOption = None,
    file: FileOption = None,
    cmd: CmdOption = None,
    image: ImageOption = None,
    arg: ArgOption = None,
    secret_arg: SecretArgOption = None,
    values: SetOption = None,
    secret_values: SetSecretOption = None,
    platform: PlatformOption = None,
    no_push: NoPushOption = None,
    timeout: TimeoutOption = None,
    commit_trigger: CommitTrigger = None,
    pull_request_trigger: PullRequestTrigger = None,
    base_image_trigger: BaseImageTrigger = None,
    git_access_token: GitTokenOption = None,
    status: StatusOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Change a task; options not given keep their values (timers: `dockyard task timer`)."""
    body = _task_body(
        context=context,
        file=file,
        cmd=cmd,
        image=image,
        arg=arg,
        secret_arg=secret_arg,
        values=values,
        secret_values=secret_values,
        platform=platform,
        no_push=no_push,
        timeout=timeout,
        commit_trigger=commit_trigger,
        pull_request_trigger=pull_request_trigger,
        base_image_trigger=base_image_trigger,
        git_access_token=git_access_token,
        status=status,
    )
    if not body:
        raise fail("nothing to update: give an option to change", 2)
    with connect(registry) as client:
        task = client.json("PATCH", _task_path(client, name), json=body)
        emit(_with_full_urls(client, task), output, TASK_COLUMNS)


@app.command("show")
def show(name: NameOption, registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """Show a task (never its secrets)."""
    with connect(registry) as client:
        emit(_with_full_urls(client, client.json("GET", _task_path(client, name))), output, TASK_COLUMNS)


@app.command("list")
def list_tasks(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """List the tasks."""
    with connect(registry) as client:
        tasks = [_with_full_urls(client, t) for t in client.json("GET", "/api/v1/tasks")["tasks"]]
    emit(tasks, output, TASK_COLUMNS)


@app.command("delete")
def delete(
    name: NameOption,
    yes: YesOption = False,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Delete a task (its queued runs are canceled; its runs' records stay)."""
    delete_confirmed(registry, f"task {name}", lambda c: _task_path(c, name), name, yes=yes, output=output)


@app.command("run")
def run_task(
    name: NameOption,
    arg: ArgOption = None,
    values: SetOption = None,
    secret_values: SetSecretOption = None,
    commit: Annotated[str | None, typer.Option("--commit", help="Build this commit (git contexts).")] = None,
    branch: Annotated[str | None, typer.Option("--branch", help="Build this branch (git contexts).")] = None,
    no_push: NoPushOption = None,
    no_logs: NoLogsOption = False,
    no_wait: NoWaitOption = False,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Run a task now, streaming its log; exits non-zero unless the run succeeded."""
    body: dict[str, Any] = {
        "values": pairs(values, "--set"),
        "secretValues": pairs(secret_values, "--set-secret"),
        "args": pairs(arg, "--arg"),
    }
    for key, value in (("commit", commit), ("branch", branch), ("noPush", no_push)):
        if value is not None:
            body[key] = value
    with connect(registry) as client:
        started = client.json("POST", f"{_task_path(client, name)}/runs", json=body)
        follow(client, started, logs=not no_logs, wait=not no_wait, output=output)


@app.command("logs")
def logs(
    run_id: Annotated[str | None, typer.Option("--run-id", help="The run's ID.")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="The task: its latest run.")] = None,
    registry: RegistryOption = None,
) -> None:
    """Print a run's log, following it until the run ends."""
    from urllib.parse import urlsplit

    if (run_id is None) == (name is None):
        raise fail("give --run-id or --name, one of them", 2)
    with connect(registry) as client:
        if run_id is None:
            latest = client.json("GET", "/api/v1/runs", params={"task": name, "top": 1})["runs"]
            if not latest:
                raise fail(f"task {name} has no runs yet")
            run_id = latest[0]["runId"]
        try:
            ended = stream_log(client, run_id)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        closing = summary(ended, urlsplit(client.base_url).netloc, status=False)
        if closing:
            typer.echo(closing, err=True)


@app.command("list-runs")
def list_runs(
    name: Annotated[str | None, typer.Option("--name", "-n", help="Only this task's runs.")] = None,
    run_status: Annotated[
        str | None, typer.Option("--run-status", help="Only runs in this status, e.g. Failed.")
    ] = None,
    top: TopOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """List runs, newest first."""
    params = {"task": name, "status": run_status}
    with connect(registry) as client:
        runs = list(client.pages("/api/v1/runs", "runs", {k: v for k, v in params.items() if v}, top))
    emit(runs, output, RUN_COLUMNS)


@app.command("show-run")
def show_run(
    run_id: RunIdOption, registry: RegistryOption = None, output: OutputFormat = output_option
) -> None:
    """Show a run: its status, steps, base and output images."""
    with connect(registry) as client:
        emit(client.json("GET", run_path(run_id)), output, RUN_COLUMNS)


@app.command("cancel-run")
def cancel_run(
    run_id: RunIdOption, registry: RegistryOption = None, output: OutputFormat = output_option
) -> None:
    """Cancel a queued or running run."""
    with connect(registry) as client:
        client.request("POST", f"{run_path(run_id)}/cancel")
        emit(client.json("GET", run_path(run_id)), output, RUN_COLUMNS)


@app.command("trigger-secret")
def trigger_secret(
    name: NameOption, registry: RegistryOption = None, output: OutputFormat = output_option
) -> None:
    """Renew a task's trigger secret (the old one stops working) and print it once."""
    with connect(registry) as client:
        _print_secret(client, client.json("POST", f"{_task_path(client, name)}/trigger-secret"), output)


# -- timers ---------------------------------------------------------------------------------------


def _timer_path(client: RegistryClient, name: str, timer: str) -> str:
    return f"{_task_path(client, name)}/timers/{client.segment(timer)}"


@timer_app.command("add")
def timer_add(
    name: NameOption,
    timer_name: TimerNameOption,
    schedule: Annotated[str, typer.Option("--schedule", help='5-field cron in UTC, e.g. "0 3 * * *".')],
    enabled: Annotated[TrueFalse, typer.Option("--enabled", help="Whether it fires.")] = TrueFalse.true,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Add a timer to a task."""
    body = {"name": timer_name, "schedule": schedule, "enabled": enabled is TrueFalse.true}
    with connect(registry) as client:
        emit(client.json("POST", f"{_task_path(client, name)}/timers", json=body), output, TIMER_COLUMNS)


@timer_app.command("update")
def timer_update(
    name: NameOption,
    timer_name: TimerNameOption,
    schedule: Annotated[str | None, typer.Option("--schedule", help="A new schedule.")] = None,
    enabled: Annotated[TrueFalse | None, typer.Option("--enabled", help="Whether it fires.")] = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Change a timer's schedule or switch it on or off."""
    body: dict[str, Any] = {}
    if schedule is not None:
        body["schedule"] = schedule
    if enabled is not None:
        body["enabled"] = enabled is TrueFalse.true
    if not body:
        raise fail("nothing to update: give --schedule or --enabled", 2)
    with connect(registry) as client:
        emit(client.json("PATCH", _timer_path(client, name, timer_name), json=body), output, TIMER_COLUMNS)


@timer_app.command("list")
def timer_list(
    name: NameOption, registry: RegistryOption = None, output: OutputFormat = output_option
) -> None:
    """List a task's timers."""
    with connect(registry) as client:
        answer = client.json("GET", f"{_task_path(client, name)}/timers")
    emit(answer["timers"] if isinstance(answer, dict) else answer, output, TIMER_COLUMNS)


@timer_app.command("remove")
def timer_remove(
    name: NameOption,
    timer_name: TimerNameOption,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Remove a timer from a task."""
    with connect(registry) as client:
        client.request("DELETE", _timer_path(client, name, timer_name))
    emit({"removed": timer_name}, output)
