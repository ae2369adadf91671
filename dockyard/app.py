"""The application factory: build services from Settings and mount every room's routes."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
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

from dockyard.access.policy import NetworkRuleMiddleware, Policy
from dockyard.access.routes.identities import IdentityRoutes
from dockyard.access.routes.management import ManagementRoutes
from dockyard.access.routes.oauth import OAuthRoutes
from dockyard.access.routes.openapi import OpenApiRoutes
from dockyard.access.services import AccessServices, build_access_services
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
from dockyard.config import Settings
from dockyard.db import Database, utcnow
from dockyard.events.routes import EventRoutes
from dockyard.events.services import EventService
from dockyard.health import HealthRoutes
from dockyard.observability.metrics import Metrics, MetricsRoutes
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry import jobs as registry_jobs
from dockyard.registry.routes import build_routes
from dockyard.registry.services import RegistryServices, build_registry_services
from dockyard.storage import BlobStore, StorageFull
from dockyard.storage.factory import create_blob_store
from dockyard.webhooks.addresses import networks
from dockyard.webhooks.jobs import DeliveryWorker
from dockyard.webhooks.routes import WebhookRoutes
from dockyard.webhooks.services import WebhookService

log = logging.getLogger(__name__)

#: Pull events are written in batches this often.
PULL_FLUSH_SECONDS = 1.0
#: How often old events and finished deliveries are deleted.
PRUNE_LOGS_SECONDS = 3600.0


@dataclass(frozen=True)
class Dockyard:
    """Everything one running registry is made of."""

    settings: Settings
    db: Database
    store: BlobStore
    registry: RegistryServices
    access: AccessServices
    events: EventService
    webhooks: WebhookService


def build(settings: Settings) -> Dockyard:
    """Create the database engine, blob store and services for ``settings``."""
    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    store = create_blob_store(settings)
    events = EventService(db)
    webhooks = build_webhook_service(settings, db)
    events.subscribe(webhooks.wants)
    return Dockyard(
        settings=settings,
        db=db,
        store=store,
        registry=build_registry_services(settings, db, store, events),
        access=build_access_services(settings, db),
        events=events,
        webhooks=webhooks,
    )


def build_webhook_service(settings: Settings, db: Database) -> WebhookService:
    return WebhookService(
        db,
        registry_name=settings.registry_name,
        limit=settings.webhook_limit,
        retry_window_seconds=settings.webhook_retry_window_seconds,
        retry_base_seconds=settings.webhook_retry_base_seconds,
        retry_max_seconds=settings.webhook_retry_max_seconds,
        lease_seconds=settings.webhook_timeout_seconds * 3,
        allowed_networks=networks(settings.webhook_allowed_networks),
    )


def prune_logs(parts: Dockyard) -> None:
    """Delete events and finished deliveries past their retention."""
    now = utcnow()
    events = parts.events.prune(now - timedelta(days=parts.settings.event_retention_days))
    deliveries = parts.webhooks.prune(now - timedelta(days=parts.settings.webhook_log_retention_days))
    audits = parts.access.audit.prune(now - timedelta(days=parts.settings.audit_retention_days))
    if events or deliveries or audits:
        log.info("pruned %d events, %d webhook deliveries and %d audit records", events, deliveries, audits)


def delivery_worker(parts: Dockyard) -> DeliveryWorker:
    settings = parts.settings
    return DeliveryWorker(
        parts.webhooks,
        parts.events,
        concurrency=settings.webhook_concurrency,
        timeout_seconds=settings.webhook_timeout_seconds,
        poll_seconds=settings.webhook_poll_seconds,
    )


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


async def _every(interval: float, job: Callable[[], None]) -> None:
    while True:
        await anyio.sleep(interval)
        try:
            await run_sync(job)
        except Exception:
            log.exception("background job %s failed", getattr(job, "__name__", job))


def create_app(
    settings: Settings, dockyard: Dockyard | None = None, *, background_jobs: bool = True
) -> Starlette:
    """The ASGI application for ``settings`` (the schema must already be migrated)."""
    parts = dockyard or build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        parts.db.serve_lookups_inline()
        async with anyio.create_task_group() as group:
            if background_jobs:
                group.start_soon(
                    _every,
                    registry_jobs.EXPIRE_UPLOADS_EVERY,
                    lambda: registry_jobs.expire_uploads(parts.registry),
                )
                group.start_soon(_every, PULL_FLUSH_SECONDS, parts.events.flush_pulls)
                group.start_soon(_every, settings.audit_window_seconds, parts.access.audit.flush)
                group.start_soon(_every, PRUNE_LOGS_SECONDS, lambda: prune_logs(parts))
                if settings.run_worker:
                    group.start_soon(delivery_worker(parts).run)
            try:
                yield
            finally:
                group.cancel_scope.cancel()
        await run_sync(parts.events.flush_pulls)
        await run_sync(parts.access.audit.flush)
        parts.db.dispose()

    policy = build_policy(settings, parts.access)
    # The job runtime plugs in here: Metrics(..., job_stats=<JobService>.stats).
    metrics = Metrics(parts.db, settings.metrics_dir) if settings.metrics_enabled else None
    observer = metrics.requests if metrics else None
    middleware = []
    if settings.access_log or observer:
        log_options = {"log": settings.access_log, "log_format": settings.log_format}
        middleware.append(Middleware(AccessLogMiddleware, observer=observer, **log_options))
    middleware.append(Middleware(DrainBodyMiddleware))
    middleware.append(Middleware(NetworkRuleMiddleware, policy=policy))
    routes = [
        *OAuthRoutes(parts.access, policy).routes(),
        *ManagementRoutes(parts.access, policy, settings.registry_name).routes(),
        *IdentityRoutes(parts.access, policy).routes(),
        *OpenApiRoutes().routes(),
        *HealthRoutes(parts.db, parts.store).routes(),
        *(MetricsRoutes(metrics, policy, settings.metrics_networks).routes() if metrics else []),
        *WebhookRoutes(
            parts.webhooks, policy, parts.access.audit, timeout_seconds=settings.webhook_timeout_seconds
        ).routes(),
        *EventRoutes(parts.events, policy).routes(),
        *build_routes(parts.registry, policy),
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
