"""Run the ASGI app under granian: a small supervisor process and worker processes serving HTTP.

The supervisor never imports the application (SQLAlchemy, Starlette, the services): workers
load it after the fork, and migrations run in a short-lived child, so the supervisor stays
small.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import sys
from typing import TYPE_CHECKING

from dockyard.config import Settings

if TYPE_CHECKING:
    from dockyard.tls import ServerTls

log = logging.getLogger("dockyard")


def configure_logging(settings: Settings) -> None:
    """Log to stderr at the configured level, one line per record."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def load_app(settings_json: str, _target: str) -> object:
    """Granian's target loader, run inside each worker process."""
    from dockyard.app import create_app

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings)
    return create_app(settings)


def _prepare_database(settings_json: str) -> None:
    """Migrate the schema and, on a new registry, create the admin user (showing its passwords once)."""
    from dockyard.access.services import bootstrap, build_access_services
    from dockyard.db import Database
    from dockyard.migrations import upgrade

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings)
    db = Database(settings.database_url, pool_size=1)
    try:
        if settings.migrate_on_start:
            upgrade(db)
        access = build_access_services(settings, db)
        created = bootstrap(settings, access)
        admin = access.identities.admin()
    finally:
        db.dispose()
    if created:
        lines = [
            "",
            "Admin user created; its passwords are shown only now:",
            f"  username:  {settings.admin_username}",
            *(f"  {c.name + ':':<10} {c.value}" for c in created),
            "Log in with: dockyard login / docker login / podman login / skopeo --creds",
            "",
        ]
        sys.stderr.write("\n".join(lines) + "\n")
    if admin is not None and not admin.enabled:
        log.warning(
            "the admin user %r is disabled; set DOCKYARD_ADMIN_PASSWORD at first start, or run "
            "`dockyard admin enable` where the database is reachable",
            admin.name,
        )


def prepare(settings: Settings) -> None:
    """Create the data folder, migrate the schema and bootstrap access (in a child process)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    child = multiprocessing.get_context("fork").Process(
        target=_prepare_database, args=(settings.model_dump_json(),)
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"preparing the database failed (exit code {child.exitcode}); see the log above")


def serve(settings: Settings, *, workers: int = 1, tls: ServerTls | None = None) -> None:
    """Serve the registry until interrupted: HTTPS with ``tls`` (from `dockyard.tls.configure`), else HTTP."""
    from granian.constants import Interfaces, Loops, SSLProtocols
    from granian.server import Server

    configure_logging(settings)
    prepare(settings)
    ssl_options = {}
    if tls is not None:
        # TLS 1.2 as the floor: every registry client speaks it, and some older ones no more.
        ssl_options = {"ssl_cert": tls.cert, "ssl_key": tls.key, "ssl_protocol_min": SSLProtocols.tls12}
    server = Server(
        "dockyard",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.auto,
        log_level=settings.log_level.value,
        log_access=False,
        websockets=False,
        workers_kill_timeout=settings.shutdown_timeout_seconds,
        **ssl_options,
    )
    server.serve(target_loader=functools.partial(load_app, settings.model_dump_json()))
