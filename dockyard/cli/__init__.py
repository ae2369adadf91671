"""The `dockyard` command: serve the registry and manage a running one (az acr-style names)."""

from __future__ import annotations

import typer

from dockyard import __version__
from dockyard.cli import (
    access_commands,
    admin,
    auth,
    build_commands,
    cache_commands,
    event_commands,
    gc_commands,
    health_commands,
    identity_commands,
    import_commands,
    job_commands,
    purge_commands,
    recycle_commands,
    registry_commands,
    task_commands,
    webhook_commands,
)
from dockyard.cli import db as db_commands
from dockyard.cli import repository as repository_commands
from dockyard.cli import serve as serve_commands
from dockyard.cli import worker as worker_commands
from dockyard.cli.output import OutputFormat, emit, output_option

app = typer.Typer(
    name="dockyard",
    help="Dockyard: a self-hosted OCI container registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: …]" must not be read as Rich markup
)
app.command("serve")(serve_commands.serve)
app.command("worker")(worker_commands.worker)
app.command("login")(auth.login)
app.command("logout")(auth.logout)
app.command("check-health")(health_commands.check_health)
app.command("show")(registry_commands.show)
app.command("update")(registry_commands.update)
app.add_typer(registry_commands.credential_app, name="credential")
app.add_typer(registry_commands.network_rule_app, name="network-rule")
app.add_typer(repository_commands.app, name="repository")
repository_commands.app.command("list-deleted")(recycle_commands.list_deleted_repositories)
app.add_typer(recycle_commands.config_app, name="config")
app.add_typer(recycle_commands.manifest_app, name="manifest")
app.add_typer(access_commands.scope_map_app, name="scope-map")
app.add_typer(access_commands.token_app, name="token")
app.add_typer(identity_commands.user_app, name="user")
app.add_typer(identity_commands.sp_app, name="sp")
app.add_typer(identity_commands.role_app, name="role")
app.add_typer(webhook_commands.app, name="webhook")
app.add_typer(event_commands.app, name="event")
app.add_typer(job_commands.app, name="job")
app.add_typer(purge_commands.app, name="purge")
app.add_typer(gc_commands.app, name="gc")
app.command("show-usage")(gc_commands.show_usage)
app.command("import")(import_commands.import_image)
app.add_typer(registry_commands.audit_app, name="audit")
app.add_typer(registry_commands.signing_key_app, name="signing-key")
app.add_typer(admin.app, name="admin")
app.add_typer(db_commands.app, name="db")
app.add_typer(cache_commands.cache_app, name="cache")
app.add_typer(cache_commands.credential_set_app, name="credential-set")
app.command("build")(build_commands.build)
app.command("run")(build_commands.run)
app.command("patch")(build_commands.patch)
app.add_typer(task_commands.app, name="task")


@app.command("version")
def version(output: OutputFormat = output_option) -> None:
    """Print Dockyard's version."""
    emit({"version": __version__}, output, columns=["version"])


def main() -> None:
    """Entry point of the `dockyard` console script: a file or folder it cannot use is one line."""
    try:
        app()
    except OSError as exc:  # e.g. a credential file's folder that is a file, or a full disk
        typer.echo(f"ERROR: {exc}", err=True)
        raise SystemExit(1) from None
