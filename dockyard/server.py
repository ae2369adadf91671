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

from dockyard.config import Settings

log = logging.getLogger("dockyard")


def configure_logging(settings: Settings) -> None:
    """Log to stderr at the configured level, one line per record."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
        force=True,
    )


def load_app(settings_json: str, _target: str) -> object:
    """Granian's target loader, run inside each worker process."""
    from dockyard.app import create_app

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings)
    return create_app(settings)


def _migrate(settings_json: str) -> None:
    from dockyard.db import Database
    from dockyard.migrations import upgrade

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings)
    db = Database(settings.database_url, pool_size=1)
    try:
        upgrade(db)
    finally:
        db.dispose()


def prepare(settings: Settings) -> None:
    """Create the data folder and bring the database schema up to date (in a child process)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.migrate_on_start:
        child = multiprocessing.get_context("fork").Process(
            target=_migrate, args=(settings.model_dump_json(),)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"database migration failed (exit code {child.exitcode}); see the log above")


def serve(settings: Settings, *, workers: int = 1) -> None:
    """Serve the registry until interrupted."""
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    configure_logging(settings)
    prepare(settings)
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
    )
    server.serve(target_loader=functools.partial(load_app, settings.model_dump_json()))
