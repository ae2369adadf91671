"""The application factory: build services from Settings and mount every room's routes."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import sqlalchemy as sa
from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Router
from starlette.types import Receive, Scope, Send

from dockyard import health
from dockyard.access import room as access_room
from dockyard.access.policy import NetworkRuleMiddleware, Policy
from dockyard.access.services import AccessServices
from dockyard.access.throttle import LoginThrottle
from dockyard.asgi import (
    AccessLogMiddleware,
    DrainBodyMiddleware,
    database_error_handler,
    disconnect_handler,
    error_response,
    registry_error_handler,
    run_sync,
    server_error_handler,
    storage_full_handler,
)
from dockyard.builds import room as builds_room
from dockyard.cache import room as cache_room
from dockyard.changes import ChangeListener
from dockyard.config import Settings
from dockyard.db import Database
from dockyard.events import room as events_room
from dockyard.events.queue import JobService
from dockyard.events.runtime import CommitWatch, Runtime, WorkNotices
from dockyard.events.services import EventService
from dockyard.imports import room as imports_room
from dockyard.lifecycle import room as lifecycle_room
from dockyard.observability.logs import BatchedLines
from dockyard.observability.metrics import Metrics, MetricsRoutes
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.ratelimits import room as ratelimits_room
from dockyard.registry import room as registry_room
from dockyard.rooms import Dockyard, Kernel, Room
from dockyard.storage import StorageFull
from dockyard.storage.factory import create_blob_store
from dockyard.tiers import room as tiers_room
from dockyard.webhooks import room as webhooks_room

__all__ = ["ROOMS", "Dockyard", "build", "create_app"]

log = logging.getLogger(__name__)

#: Every room, in the order their services are built and their routes are tried (routes are
#: matched by first path segment, so `/v2/…` catch-alls shadow nothing). Adding a room is one line here.
ROOMS: tuple[Room, ...] = (
    tiers_room.ROOM,
    access_room.ROOM,
    health.ROOM,
    webhooks_room.ROOM,
    events_room.ROOM,
    registry_room.ROOM,
    lifecycle_room.ROOM,
    ratelimits_room.ROOM,
    imports_room.ROOM,
    cache_room.ROOM,
    builds_room.ROOM,
)


def build(settings: Settings, rooms: tuple[Room, ...] = ROOMS) -> Dockyard:
    """Create the database engine, blob store, every room's services and the job runtime for ``settings``."""
    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    events = EventService(db)
    jobs = JobService(db)
    kernel = Kernel(settings=settings, db=db, store=create_blob_store(settings), events=events, jobs=jobs)
    services: dict[str, Any] = {}
    for room in rooms:
        if room.services is not None:
            services[room.name] = room.services(kernel, services)
    runtime = Runtime(
        db,
        jobs,
        events,
        poll_seconds=settings.job_poll_seconds,
        idle_poll_seconds=settings.job_idle_poll_seconds,
        concurrency=settings.job_concurrency,
    )
    parts = Dockyard(
        settings=settings,
        db=db,
        store=kernel.store,
        events=events,
        jobs=jobs,
        runtime=runtime,
        services=services,
    )
    for room in rooms:
        room.work(parts, runtime)
    return parts


@contextlib.asynccontextmanager
async def listening(parts: Dockyard) -> AsyncIterator[None]:
    """On the event loop's thread, for as long as the process serves or works: lookups on the loop's
    own connection, the content listener keeping caches true, and other processes' work waking
    the job runtime (``wake_on_work``)."""
    parts.db.serve_lookups_inline()
    listener = parts.registry.listener
    if listener is not None:
        listener.start()
    wake_on_work(parts)
    try:
        yield
    finally:
        if listener is not None:
            await run_sync(listener.stop)


def wake_on_work(parts: Dockyard) -> None:
    """Let other processes' work end this process's job runtime's idle wait (within a poll): on
    SQLite a commit seen in ``PRAGMA data_version`` (call on the event loop's thread, after
    ``serve_lookups_inline``); on PostgreSQL a ``dockyard_work`` notice, through the content listener."""
    runtime, listener = parts.runtime, parts.registry.listener
    if parts.db.is_sqlite:
        runtime.changed = CommitWatch(parts.db)
    elif isinstance(listener, ChangeListener) and not isinstance(runtime.changed, WorkNotices):
        notices = WorkNotices()
        listener.on_work.append(notices.set)
        runtime.changed = notices


def build_policy(settings: Settings, access: AccessServices) -> Policy:
    """The policy chain every route is guarded by."""
    return Policy(
        access.authenticator,
        access.settings,
        access.audit,
        service=settings.registry_name,
        throttle=LoginThrottle(
            per_client=settings.login_failures_per_client,
            per_user=settings.login_failures_per_user,
            refill_seconds=settings.login_failure_refill_seconds,
            clock=time.monotonic,
        ),
        trusted_proxies=tuple(settings.trusted_proxies),
        private_networks=tuple(settings.private_networks),
    )


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """404/405 from routing, in the registry's JSON error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        error = RegistryError(
            ErrorCode.UNSUPPORTED, f"{request.method} is not supported on {request.url.path}"
        )
    elif exc.status_code == 404:
        error = RegistryError(
            ErrorCode.NAME_UNKNOWN, f"no such endpoint {request.url.path[:200]}", status=404
        )
    else:
        error = RegistryError(ErrorCode.UNSUPPORTED, exc.detail, status=exc.status_code)
    return error_response(error, head=request.method == "HEAD")


class SegmentRouter(Router):
    """Starlette's router, but it only tries the routes that can match the path's first segment.

    Starlette matches every route's regex in turn; with the management API in front of the
    registry that was a few dozen regexes before a manifest GET found its route. Routes are
    indexed by their literal first path segment (a route whose first segment is a parameter is
    tried for every path); order among the candidates is kept, so matching is unchanged.
    Anything that matches nothing (404, 405, slash redirects) goes through Starlette's own path.
    """

    def __init__(self, routes: list[BaseRoute], **kwargs: Any) -> None:
        super().__init__(routes, **kwargs)
        self._by_segment: dict[str, list[BaseRoute]] = {}
        for segment in {_first_segment(route) for route in routes} - {None}:
            assert segment is not None
            self._by_segment[segment] = [r for r in routes if _first_segment(r) in (segment, None)]
        self._unindexed = [r for r in routes if _first_segment(r) is None]

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().app(scope, receive, send)
            return
        path = get_route_path(scope)
        segment = path[1:].partition("/")[0]
        for route in self._by_segment.get(segment, self._unindexed):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope.setdefault("router", self)
                scope["route"] = route
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
            if match is Match.PARTIAL:
                break  # a 405: Starlette's own loop finds the first partial match and answers it
        await super().app(scope, receive, send)


def _first_segment(route: BaseRoute) -> str | None:
    """The literal first segment of a route's path, or None if it is a parameter (or not a path)."""
    path = getattr(route, "path", None)
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    segment = path[1:].partition("/")[0]
    return None if "{" in segment else segment


async def _every(interval: float, job: Callable[[], Any]) -> None:
    while True:
        await anyio.sleep(interval)
        try:
            await run_sync(job)
        except Exception:
            log.exception("background job %s failed", getattr(job, "__name__", job))


def create_app(
    settings: Settings,
    dockyard: Dockyard | None = None,
    *,
    background_jobs: bool = True,
    rooms: tuple[Room, ...] = ROOMS,
) -> Starlette:
    """The ASGI application for ``settings`` (the schema must already be migrated).

    ``background_jobs`` runs this process's memory flushes and, unless ``run_worker`` is off,
    the job runtime (every room's jobs, event consumers, schedules and tasks).
    """
    parts = dockyard or build(settings, rooms)
    runtime = parts.runtime
    access_lines = BatchedLines(sys.stderr)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with listening(parts), anyio.create_task_group() as group:
                if background_jobs:
                    for flush in runtime.flushes:
                        group.start_soon(_every, flush.every_seconds, flush.run)
                    if settings.run_worker:
                        group.start_soon(runtime.run)
                try:
                    yield
                finally:
                    group.cancel_scope.cancel()
        finally:
            try:
                for flush in runtime.flushes:
                    await run_sync(flush.run)
                parts.db.dispose()
            finally:
                access_lines.flush()

    policy = build_policy(settings, parts.access)
    metrics = None
    if settings.metrics_enabled:
        metrics = Metrics(
            parts.db,
            settings.metrics_dir,
            job_stats=parts.jobs.stats,
            state_seconds=settings.metrics_state_seconds,
        )
    observer = metrics.requests if metrics else None
    policy.metrics = metrics
    if metrics is not None and "cache" in parts.services:
        cache_counter = metrics.requests.cache
        parts.service("cache").pull.observer = lambda outcome: cache_counter.labels(outcome).inc()
    middleware = []
    if settings.access_log or observer:
        log_options = {"log": settings.access_log, "log_format": settings.log_format}
        middleware.append(Middleware(AccessLogMiddleware, access_lines, observer=observer, **log_options))
    middleware.append(Middleware(DrainBodyMiddleware))
    middleware.append(Middleware(NetworkRuleMiddleware, policy=policy))
    routes = [
        *(MetricsRoutes(metrics, policy, settings.metrics_networks).routes() if metrics else []),
        *(route for room in rooms for route in room.routes(parts, policy)),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            RegistryError: registry_error_handler,
            ClientDisconnect: disconnect_handler,
            sa.exc.DBAPIError: database_error_handler,
            StorageFull: storage_full_handler,
            HTTPException: http_error_handler,
            Exception: server_error_handler,
        },
        lifespan=lifespan,
    )
    app.router = SegmentRouter(routes, lifespan=lifespan)
    app.state.dockyard = parts
    return app
