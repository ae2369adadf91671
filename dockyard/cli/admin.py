"""`dockyard admin enable|reset-password`: the admin user, from where the database is reachable (no HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dockyard.cli.local import DataDirOption, local_settings, open_database, require_current_schema
from dockyard.cli.options import ConfigOption, SettingsDatabaseUrlOption, shown_once
from dockyard.cli.output import OutputFormat, emit, output_option
from dockyard.cli.registry_commands import PasswordName

app = typer.Typer(help="Local bootstrap commands that open the database directly.", no_args_is_help=True)


def _renew(
    config: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    *,
    enable: bool,
    names: list[str] | None,
    output: OutputFormat,
) -> None:
    """Regenerate the admin's passwords (all of ``names``, default both); enable it too if asked."""
    from dockyard.access.services import bootstrap, build_access_services
    from dockyard.access.services.identities import ADMIN, PASSWORD_NAMES

    settings = local_settings(config, data_dir=data_dir, database_url=database_url)
    with open_database(settings) as db:
        require_current_schema(db)
        access = build_access_services(settings, db)
        bootstrap(settings, access)
        admin = access.identities.set_admin_enabled(True) if enable else access.identities.admin()
        assert admin is not None  # bootstrap created it
        passwords = [
            access.identities.new_credential(admin.name, name, kind=ADMIN) for name in names or PASSWORD_NAMES
        ]
        action = "admin.enable" if enable else "admin.reset-password"
        access.audit.record(
            action,
            "success",
            principal=f"local:dockyard {action.replace('.', ' ')}",
            detail={"name": admin.name},
        )
    shown_once("admin passwords")
    if not admin.enabled:
        typer.echo(
            f"WARNING: the admin user {admin.name!r} is disabled; `dockyard admin enable` turns it on.",
            err=True,
        )
    result = {
        "username": admin.name,
        "enabled": admin.enabled,
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


@app.command("enable")
def enable(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: SettingsDatabaseUrlOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Enable the admin user and regenerate both its passwords (printed only now).

    For a deployment (PostgreSQL) where the admin user starts disabled: run it where the
    database is reachable, with the settings `dockyard serve` uses. The schema must be
    migrated (`dockyard db upgrade`); the admin user is created if the registry never started.
    """
    _renew(config, data_dir, database_url, enable=True, names=None, output=output)


@app.command("reset-password")
def reset_password(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: SettingsDatabaseUrlOption = None,
    password_name: Annotated[
        list[PasswordName] | None,
        typer.Option("--password-name", help="Which password to regenerate (repeatable) [default: both]."),
    ] = None,
    output: OutputFormat = output_option,
) -> None:
    """Regenerate the admin user's passwords without signing in (a lost password).

    Opens the database directly, like `admin enable`, but leaves the admin enabled or disabled
    as it is. The new values are printed only now; the old ones stop working (running servers
    notice within 30 seconds).
    """
    names = [n.value for n in password_name] if password_name else None
    _renew(config, data_dir, database_url, enable=False, names=names, output=output)
