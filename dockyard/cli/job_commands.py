"""`dockyard job list|retry|stats`: the job queue, read from the database directly (like `db`)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dockyard.cli.local import DataDirOption, local_settings, open_database, require_current_schema
from dockyard.cli.options import ConfigOption, SettingsDatabaseUrlOption, TopOption
from dockyard.cli.output import OutputFormat, emit, fail, output_option

if TYPE_CHECKING:
    from dockyard.events.queue import Job

JOB_COLUMNS = ["id", "kind", "status", "attempts", "maxAttempts", "runAt", "lastError"]

app = typer.Typer(
    help="Inspect and retry background jobs (dead-lettered ones above all).", no_args_is_help=True
)


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    dead = "dead"


def _view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "attempts": job.attempts,
        "maxAttempts": job.max_attempts,
        "runAt": job.run_at.isoformat(),
        "createdAt": job.created_at.isoformat(),
        "lastError": job.last_error,
        "payload": job.payload,
    }


@app.command("list")
def list_jobs(
    status: Annotated[JobStatus | None, typer.Option("--status", help="Only jobs in this state.")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Only jobs of this kind.")] = None,
    top: TopOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: SettingsDatabaseUrlOption = None,
    output: OutputFormat = output_option,
) -> None:
    """List the newest jobs, newest first (100 unless --top)."""
    from dockyard.events.queue import JobService

    settings = local_settings(config, data_dir=data_dir, database_url=database_url)
    with open_database(settings) as db:
        require_current_schema(db)
        found = JobService(db).list(status=status.value if status else None, kind=kind, limit=top or 100)
    emit([_view(job) for job in found], output, JOB_COLUMNS)


@app.command("retry")
def retry_job(
    job_id: Annotated[int, typer.Argument(help="The job's id (see `dockyard job list --status dead`).")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: SettingsDatabaseUrlOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Queue a dead (or succeeded) job again, with a fresh set of attempts."""
    from dockyard.events.queue import JobService

    settings = local_settings(config, data_dir=data_dir, database_url=database_url)
    with open_database(settings) as db:
        require_current_schema(db)
        service = JobService(db)
        if not service.retry(job_id):
            job = service.get(job_id)
            raise fail(
                f"job {job_id} not found" if job is None else f"job {job_id} is {job.status}, not dead"
            )
        job = service.get(job_id)
    assert job is not None
    emit(_view(job), output, JOB_COLUMNS)


@app.command("stats")
def job_stats(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: SettingsDatabaseUrlOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Queue depth by status and the age of the oldest due queued job."""
    from dockyard.events.queue import JobService

    settings = local_settings(config, data_dir=data_dir, database_url=database_url)
    with open_database(settings) as db:
        require_current_schema(db)
        stats = JobService(db).stats()
    emit({**stats.depth, "oldestDueAgeSeconds": stats.oldest_due_age_seconds}, output)
