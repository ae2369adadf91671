"""`dockyard serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dockyard import __version__
from dockyard.config import LogLevel, load_settings


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 5000].")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Folder for the embedded database and blobs [default: ./dockyard-data]."),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Database URL, e.g. postgresql://user:pass@host/db [default: SQLite].")
    ] = None,
    storage_path: Annotated[
        Path | None, typer.Option(help="Blob store folder [default: DATA_DIR/storage].")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file.")] = None,
    log_level: Annotated[LogLevel | None, typer.Option(help="Log verbosity.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="HTTP worker processes.")] = 1,
) -> None:
    """Run the registry: SQLite and a data folder by default, PostgreSQL with --database-url."""
    from dockyard.server import serve as run_server

    try:
        settings = load_settings(
            config,
            host=host,
            port=port,
            data_dir=data_dir,
            database_url=database_url,
            storage_path=storage_path,
            log_level=log_level,
        )
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"ERROR: {exc}", err=True)
        raise typer.Exit(2) from None
    database = settings.database_url.split("@")[-1] if "@" in settings.database_url else settings.database_url
    typer.echo(f"Dockyard {__version__} listening on http://{settings.host}:{settings.port}", err=True)
    typer.echo(f"  database: {database}", err=True)
    typer.echo(f"  storage:  {Path(str(settings.storage_path)).resolve()}", err=True)
    run_server(settings, workers=workers)
