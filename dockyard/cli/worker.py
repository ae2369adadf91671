"""`dockyard worker`: the job runtime without the HTTP server, for scale-out deployments.

It runs every room's jobs, event consumers (webhook dispatch), tasks (webhook delivery) and
periodic schedules (upload expiry, pruning). `dockyard serve` runs the same runtime itself
unless it runs with ``DOCKYARD_RUN_WORKER=false``; then one or more `dockyard worker`
processes, pointed at the same database, do it. Leases, locked cursors and claimed schedule
rows keep two processes from doing the same work. Pull-event flushing stays with the process
that serves HTTP (pulls are buffered in its memory).
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
    StorageOption,
    StoragePathOption,
)
from dockyard.cli.output import fail

if TYPE_CHECKING:
    from dockyard.app import Dockyard
    from dockyard.config import Settings
    from dockyard.events.runtime import Runtime

log = logging.getLogger("dockyard.worker")

#: After SIGTERM/SIGINT, work in flight gets this long beyond one delivery attempt's timeout to finish.
DRAIN_MARGIN_SECONDS = 1.0


def worker(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    storage_path: StoragePathOption = None,
    storage: StorageOption = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Run jobs, event consumers, webhook delivery and schedules until SIGTERM or SIGINT.

    For registries whose `dockyard serve` runs with DOCKYARD_RUN_WORKER=false. Reads the same
    settings as `dockyard serve` (defaults, --config, DOCKYARD_*, then flags); the database
    must already be migrated (by `dockyard serve` or `dockyard db upgrade`).
    """
    import sqlalchemy as sa

    from dockyard.server import configure_logging, limit_malloc_arenas

    limit_malloc_arenas()

    settings = local_settings(
        config,
        data_dir=data_dir,
        database_url=database_url,
        storage_path=storage_path,
        storage=storage,
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

    settings = parts.settings
    runtime = parts.runtime
    log.info(
        "dockyard worker running jobs (%s), consumers (%s) and schedules (%s) for registry %r from %s "
        "(polling every %gs)",
        ", ".join(runtime.kinds) or "none",
        ", ".join(c.name for c in runtime.consumers) or "none",
        ", ".join(s.name for s in runtime.schedules) or "none",
        settings.registry_name,
        parts.db.engine.url.render_as_string(hide_password=True),
        settings.job_poll_seconds,
    )
    anyio.run(_until_signalled, parts, settings.webhook_timeout_seconds + DRAIN_MARGIN_SECONDS)
    log.info("dockyard worker stopped")


async def _until_signalled(parts: Dockyard, grace: float) -> None:
    """Run the runtime; a first signal lets work in flight finish (``grace`` at most), a second cuts.
    Other processes' work wakes it (``listening``: the content listener runs here too)."""

    from dockyard.app import listening

    async with listening(parts):
        await _run_until_signalled(parts.runtime, grace)


async def _run_until_signalled(runtime: Runtime, grace: float) -> None:
    import anyio

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            group.start_soon(runtime.run)
            async for signum in signals:
                log.info("%s: finishing the work in flight, claiming no more", signal.Signals(signum).name)
                break
            runtime.stop_claiming()

            async def cut_on_second_signal() -> None:
                async for signum in signals:
                    log.info("%s again: stopping now", signal.Signals(signum).name)
                    group.cancel_scope.cancel()

            group.start_soon(cut_on_second_signal)
            left = await runtime.drain(grace)
            if left:
                log.warning(
                    "%d jobs or deliveries still in flight; they run again once their leases expire", left
                )
            group.cancel_scope.cancel()
