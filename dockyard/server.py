"""Run the ASGI app under granian: one process serving HTTP, workers loading the app from Settings."""

from __future__ import annotations

import functools
import logging
import sys

from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.db import Database
from dockyard.migrations import upgrade

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
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings)
    return create_app(settings)


def prepare(settings: Settings) -> None:
    """Create the data folder and bring the database schema up to date."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.migrate_on_start:
        db = Database(settings.database_url, pool_size=1)
        try:
            upgrade(db)
        finally:
            db.dispose()


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
