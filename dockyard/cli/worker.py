"""`dockyard worker`: webhook delivery without the HTTP server, for scale-out deployments.

`dockyard serve` delivers webhooks itself unless it runs with ``DOCKYARD_RUN_WORKER=false``;
then one or more `dockyard worker` processes, pointed at the same database, do it. Leases in
the database keep two workers (or a worker and a server) from sending one delivery at once.
The worker does nothing else: no upload expiry, no pull-event flushing (those belong to the
process that serves HTTP).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dockyard.cli.options import ConfigOption, DatabaseUrlOption, LogLevelOption, StoragePathOption
from dockyard.cli.output import fail
from dockyard.config import Settings, load_settings

if TYPE_CHECKING:
    from dockyard.app import Dockyard
    from dockyard.webhooks.jobs import DeliveryWorker

log = logging.getLogger("dockyard.worker")

#: After SIGTERM/SIGINT, deliveries in flight get this long beyond one attempt's timeout to finish.
DRAIN_MARGIN_SECONDS = 1.0


def worker(
    config: ConfigOption = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="The data folder of the SQLite registry to work for [default: ./dockyard-data]."),
    ] = None,
    database_url: DatabaseUrlOption = None,
    storage_path: StoragePathOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Deliver webhooks (and do nothing else) until SIGTERM or SIGINT.

    For registries whose `dockyard serve` runs with DOCKYARD_RUN_WORKER=false. Reads the same
    settings as `dockyard serve` (defaults, --config, DOCKYARD_*, then flags); the database
    must already be migrated (by `dockyard serve` or `dockyard db upgrade`).
    """
    import sqlalchemy as sa

    from dockyard.server import configure_logging

    try:
        settings = load_settings(
            config,
            data_dir=data_dir,
            database_url=database_url,
            storage_path=storage_path,
            log_level=log_level,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc), 2) from None
    _require_database(settings)
    configure_logging(settings)
    from dockyard.app import build

    try:
        parts = build(settings)
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        raise fail(f"cannot start: {exc}") from None
    try:
        _run(parts)
    finally:
        parts.db.dispose()


def _require_database(settings: Settings) -> None:
    """Fail unless the database exists and its schema is current (a worker never migrates)."""
    import sqlalchemy as sa

    from dockyard.db import Database
    from dockyard.migrations import current_revision, head_revision

    url = sa.engine.make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        raise fail(
            f"no database at {url.database}: start `dockyard serve` with this data folder first, "
            "or give --data-dir / --database-url"
        )
    db = Database(settings.database_url, pool_size=1)
    try:
        current, head = current_revision(db), head_revision(db)
    except sa.exc.SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {exc}") from None
    finally:
        db.dispose()
    if current != head:
        raise fail(
            f"the database is at revision {current}, not {head}: "
            "run `dockyard db upgrade` (or start `dockyard serve`) first"
        )


def _run(parts: Dockyard) -> None:
    import anyio

    from dockyard.app import delivery_worker

    settings = parts.settings
    deliveries = delivery_worker(parts)
    log.info(
        "dockyard worker delivering webhooks for registry %r from %s "
        "(%d in flight at most, polling every %gs)",
        settings.registry_name,
        parts.db.engine.url.render_as_string(hide_password=True),
        settings.webhook_concurrency,
        settings.webhook_poll_seconds,
    )
    anyio.run(_until_signalled, deliveries, settings.webhook_timeout_seconds + DRAIN_MARGIN_SECONDS)
    log.info("dockyard worker stopped")


async def _until_signalled(deliveries: DeliveryWorker, grace: float) -> None:
    """Run the worker; a first signal lets attempts in flight finish (``grace`` at most), a second cuts."""
    import anyio

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            group.start_soon(deliveries.run)
            async for signum in signals:
                log.info(
                    "%s: finishing the deliveries in flight, claiming no more", signal.Signals(signum).name
                )
                break
            deliveries.stop_claiming()

            async def cut_on_second_signal() -> None:
                async for signum in signals:
                    log.info("%s again: stopping now", signal.Signals(signum).name)
                    group.cancel_scope.cancel()

            group.start_soon(cut_on_second_signal)
            left = await deliveries.drain(grace)
            if left:
                log.warning(
                    "%d deliveries still in flight; they are sent again once their leases expire", left
                )
            group.cancel_scope.cancel()
