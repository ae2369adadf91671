"""The webhooks room's registration: subscriptions, the ``webhooks`` event consumer, delivery, log upkeep."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.db import utcnow
from dockyard.events.runtime import Runtime
from dockyard.rooms import Dockyard, Kernel, Room
from dockyard.webhooks.addresses import networks
from dockyard.webhooks.jobs import DeliveryWorker
from dockyard.webhooks.routes import WebhookRoutes
from dockyard.webhooks.services import WebhookService

log = logging.getLogger(__name__)

#: How often finished deliveries past their retention are looked for.
PRUNE_DELIVERIES_SECONDS = 3600.0


def _services(kernel: Kernel, built: Mapping[str, Any]) -> WebhookService:
    settings = kernel.settings
    return WebhookService(
        kernel.db,
        registry_name=settings.registry_name,
        tiers=built["tiers"],
        retry_window_seconds=settings.webhook_retry_window_seconds,
        retry_base_seconds=settings.webhook_retry_base_seconds,
        retry_max_seconds=settings.webhook_retry_max_seconds,
        lease_seconds=settings.webhook_timeout_seconds * 3,
        allowed_networks=networks(settings.webhook_allowed_networks),
    )


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    return WebhookRoutes(
        parts.webhooks, policy, parts.access.audit, timeout_seconds=parts.settings.webhook_timeout_seconds
    ).routes()


def _work(parts: Dockyard, runtime: Runtime) -> None:
    settings, service = parts.settings, parts.webhooks
    worker = DeliveryWorker(
        service,
        concurrency=settings.webhook_concurrency,
        timeout_seconds=settings.webhook_timeout_seconds,
        poll_seconds=settings.webhook_poll_seconds,
        idle_poll_seconds=settings.job_idle_poll_seconds,
    )
    runtime.task(worker)
    runtime.consumer(
        "webhooks", service.dispatch, wants=service.wants, after_commit=worker.wake, idle=service.idle
    )

    def prune() -> None:
        pruned = service.prune(utcnow() - timedelta(days=settings.webhook_log_retention_days))
        if pruned:
            log.info("pruned %d webhook deliveries", pruned)

    runtime.schedule("webhooks.prune-deliveries", PRUNE_DELIVERIES_SECONDS, prune)


ROOM = Room("webhooks", services=_services, routes=_routes, work=_work)
