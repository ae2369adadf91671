"""`dockyard admin enable`: turn the admin user on from where the database is reachable (no HTTP)."""

from __future__ import annotations

import typer

from dockyard.cli.options import ConfigOption, SettingsDatabaseUrlOption, shown_once
from dockyard.cli.output import OutputFormat, emit, fail, output_option
from dockyard.config import load_settings

app = typer.Typer(help="Local bootstrap commands that open the database directly.", no_args_is_help=True)


@app.command("enable")
def enable(
    config: ConfigOption = None,
    database_url: SettingsDatabaseUrlOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Enable the admin user and regenerate both its passwords (printed only now).

    For a deployment (PostgreSQL) where the admin user starts disabled: run it where the
    database is reachable, with the settings `dockyard serve` uses. The schema must be
    migrated (`dockyard db upgrade`); the admin user is created if the registry never started.
    """
    import sqlalchemy as sa

    from dockyard.access.services import bootstrap, build_access_services
    from dockyard.access.services.identities import ADMIN, PASSWORD_NAMES
    from dockyard.db import Database
    from dockyard.migrations import current_revision, head_revision

    try:
        settings = load_settings(config, database_url=database_url)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc), 2) from None
    db = Database(settings.database_url, pool_size=1)
    try:
        current, head = current_revision(db), head_revision(db)
        if current != head:
            raise fail(f"the database is at revision {current}, not {head}: run `dockyard db upgrade` first")
        access = build_access_services(settings, db)
        bootstrap(settings, access)
        admin = access.identities.set_admin_enabled(True)
        passwords = [
            access.identities.new_credential(admin.name, name, kind=ADMIN) for name in PASSWORD_NAMES
        ]
        access.audit.record(
            "admin.enable", "success", principal="local:dockyard admin enable", detail={"name": admin.name}
        )
    except sa.exc.SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {exc}") from None
    finally:
        db.dispose()
    shown_once("admin passwords")
    result = {
        "username": admin.name,
        "enabled": True,
        "passwords": [{"name": p.name, "value": p.value} for p in passwords],
    }
    if output is OutputFormat.json:
        emit(result, output)
    else:
        emit(
            [{"username": admin.name, **p} for p in result["passwords"]],
            output,
            ["username", "name", "value"],
        )
