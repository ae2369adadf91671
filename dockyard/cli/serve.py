"""`dockyard serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dockyard import __version__
from dockyard.cli.client import login_argument
from dockyard.cli.options import (
    ConfigOption,
    DatabaseUrlOption,
    LogFormatOption,
    LogLevelOption,
    StorageOption,
    StoragePathOption,
    TlsMode,
)


def cli_command() -> str:
    """How a shell runs this CLI: ``dockyard`` when PATH finds this one, else its full path."""
    import shutil
    import sys

    own = Path(sys.executable).parent / "dockyard"
    if not own.is_file():
        return f"{sys.executable} -m dockyard"
    found = shutil.which("dockyard")
    if found and Path(found).resolve() == own.resolve():
        return "dockyard"
    return str(own)


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 5000].")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Folder for the embedded database and blobs [default: ./dockyard-data]."),
    ] = None,
    database_url: DatabaseUrlOption = None,
    storage_path: StoragePathOption = None,
    storage: StorageOption = None,
    config: ConfigOption = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
    workers: Annotated[int, typer.Option(min=1, help="HTTP worker processes.")] = 1,
    tls: Annotated[
        TlsMode | None,
        typer.Option(
            "--tls",
            help="HTTPS: 'self-signed' (a local CA under DATA_DIR/tls), 'files' (--tls-cert/--tls-key) "
            "or 'off' (default: files if --tls-cert is given, else off).",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(metavar="FILE", help="PEM certificate (chain) to serve HTTPS with.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(metavar="FILE", help="PEM private key of --tls-cert (unencrypted).")
    ] = None,
    tls_san: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME", help="Extra DNS name or IP for the self-signed certificate (repeatable)."
        ),
    ] = None,
    insecure_http: Annotated[
        bool,
        typer.Option(
            "--insecure-http",
            help="Serve plain HTTP on a non-loopback address (e.g. behind a TLS-terminating proxy).",
        ),
    ] = False,
) -> None:
    """Run the registry: SQLite and a data folder by default, PostgreSQL with --database-url.

    Plain HTTP on 127.0.0.1 by default; HTTPS with --tls self-signed or --tls-cert/--tls-key.
    """
    from dockyard.config import load_settings
    from dockyard.observability.logs import write_notice
    from dockyard.server import serve as run_server
    from dockyard.tls import (
        TlsConfigError,
        client_address,
        configure,
        describe,
        trust_instructions,
        url_host,
    )

    try:
        settings = load_settings(
            config,
            host=host,
            port=port,
            data_dir=data_dir,
            database_url=database_url,
            storage_path=storage_path,
            storage=storage,
            log_level=log_level,
            log_format=log_format,
            tls_mode=tls,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_san=tls_san or None,
            insecure_http=insecure_http or None,  # absent: the file or environment decides
        )
        server_tls = configure(settings)
    except (FileNotFoundError, ValueError, TlsConfigError) as exc:
        typer.echo(f"ERROR: {exc}", err=True)
        raise typer.Exit(2) from None
    import socket

    from dockyard.server import port_in_use

    refusal = port_in_use(settings.host, settings.port)
    if refusal is not None:  # say so before the banner claims to listen
        typer.echo(f"ERROR: {refusal}", err=True)
        raise typer.Exit(1)
    address = client_address(settings.host, settings.port, socket.gethostname())
    listen = f"{url_host(settings.host)}:{settings.port}"
    database = settings.database_url.split("@")[-1] if "@" in settings.database_url else settings.database_url
    scheme = "https" if server_tls else "http"
    where = settings.storage if settings.storage and "://" in settings.storage else None
    login = login_argument(f"{scheme}://{address}")
    banner = [
        f"Dockyard {__version__} listening on {scheme}://{listen}",
        f"  database: {database}",
        f"  storage:  {where or Path(str(settings.storage_path)).resolve()}",
        f"  log in:   {cli_command()} login {login} -u {settings.admin_username}",
    ]
    if server_tls is not None:
        banner.append(describe(server_tls))
        if server_tls.ca_cert is not None:
            banner.append(trust_instructions(server_tls, address))
    # Once the database is ready (its first start prints the admin passwords), just before binding.
    run_server(
        settings,
        workers=workers,
        tls=server_tls,
        announce=lambda: write_notice("\n".join(banner), settings.log_format),
    )
