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
from typing import TYPE_CHECKING

from dockyard.cli.local import DataDirOption, local_settings, open_database, require_current_schema
from dockyard.cli.options import (
    ConfigOption,
    DatabaseUrlOption,
    LogFormatOption,
    LogLevelOption,
    StoragePathOption,
)
from dockyard.cli.output import fail

if TYPE_CHECKING:
    from dockyard.app import Dockyard
    from dockyard.config import Settings
    from dockyard.webhooks.jobs import DeliveryWorker

log = logging.getLogger("dockyard.worker")

#: After SIGTERM/SIGINT, deliveries in flight get this long beyond one attempt's timeout to finish.
DRAIN_MARGIN_SECONDS = 1.0


def worker(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    storage_path: StoragePathOption = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Deliver webhooks (and do nothing else) until SIGTERM or SIGINT.

    For registries whose `dockyard serve` runs with DOCKYARD_RUN_WORKER=false. Reads the same
    settings as `dockyard serve` (defaults, --config, DOCKYARD_*, then flags); the database
    must already be migrated (by `dockyard serve` or `dockyard db upgrade`).
    """
    import sqlalchemy as sa

    from dockyard.server import configure_logging

    settings = local_settings(
        config,
        data_dir=data_dir,
        database_url=database_url,
        storage_path=storage_path,
        log_level=log_level,
        log_format=log_format,
    )
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
    with open_database(settings) as db:
        require_current_schema(db, hint="run `dockyard db upgrade` (or start `dockyard serve`) first")


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
