"""`dockyard db upgrade|check|current`: schema migrations."""

from __future__ import annotations

import typer

from dockyard.cli.local import DataDirOption, local_settings, open_database
from dockyard.cli.options import ConfigOption, SettingsDatabaseUrlOption
from dockyard.cli.output import OutputFormat, emit, fail, output_option

app = typer.Typer(help="Manage the database schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade_command(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: SettingsDatabaseUrlOption = None,
) -> None:
    """Apply every pending migration (creating the SQLite database in an existing data folder)."""
    from dockyard.migrations import current_revision, upgrade

    settings = local_settings(config, data_dir=data_dir, database_url=database_url)
    with open_database(settings, create=True) as db:
        upgrade(db)
        typer.echo(f"database at revision {current_revision(db)}")


@app.command("current")
def current_command(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: SettingsDatabaseUrlOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Show the schema revision the database is at, and the newest one."""
    from dockyard.migrations import current_revision, head_revision

    settings = local_settings(config, data_dir=data_dir, database_url=database_url)
    with open_database(settings) as db:
        emit({"current": current_revision(db), "head": head_revision(db)}, output)


@app.command("check")
def check_command(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: SettingsDatabaseUrlOption = None,
) -> None:
    """Fail if the database is behind the migrations or the models drifted from them."""
    from dockyard.migrations import current_revision, head_revision, schema_drift

    settings = local_settings(config, data_dir=data_dir, database_url=database_url)
    with open_database(settings) as db:
        current, head = current_revision(db), head_revision(db)
        if current != head:
            raise fail(f"database is at {current}, migrations are at {head}")
        drift = schema_drift(db)
        if drift:
            raise fail(f"models and migrations differ: {drift}")
    typer.echo("schema is up to date")
