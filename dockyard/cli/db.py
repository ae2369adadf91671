"""`dockyard db upgrade|check|current`: schema migrations."""

from __future__ import annotations

from pathlib import Path

import typer

from dockyard.cli.options import ConfigOption, SettingsDatabaseUrlOption
from dockyard.cli.output import OutputFormat, emit, fail, output_option
from dockyard.config import load_settings

app = typer.Typer(help="Manage the database schema.", no_args_is_help=True)


def _database(config: Path | None, database_url: str | None):  # noqa: ANN202 - Database, imported lazily
    from dockyard.db import Database

    return Database(load_settings(config, database_url=database_url).database_url, pool_size=1)


@app.command("upgrade")
def upgrade_command(config: ConfigOption = None, database_url: SettingsDatabaseUrlOption = None) -> None:
    """Apply every pending migration."""
    from dockyard.migrations import current_revision, upgrade

    db = _database(config, database_url)
    upgrade(db)
    typer.echo(f"database at revision {current_revision(db)}")


@app.command("current")
def current_command(
    config: ConfigOption = None,
    database_url: SettingsDatabaseUrlOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Show the schema revision the database is at, and the newest one."""
    from dockyard.migrations import current_revision, head_revision

    db = _database(config, database_url)
    emit({"current": current_revision(db), "head": head_revision(db)}, output)


@app.command("check")
def check_command(config: ConfigOption = None, database_url: SettingsDatabaseUrlOption = None) -> None:
    """Fail if the database is behind the migrations or the models drifted from them."""
    from dockyard.migrations import current_revision, head_revision, schema_drift

    db = _database(config, database_url)
    if current_revision(db) != head_revision(db):
        raise fail(f"database is at {current_revision(db)}, migrations are at {head_revision(db)}")
    drift = schema_drift(db)
    if drift:
        raise fail(f"models and migrations differ: {drift}")
    typer.echo("schema is up to date")
