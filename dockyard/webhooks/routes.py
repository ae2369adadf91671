"""The management API for webhooks: /api/v1/webhooks (as `az acr webhook`).

Listing and showing webhooks needs registry read (Reader); what may hold secrets — the
service URI and custom headers (/config) and the delivery log, which echoes both and the
receivers' answers (/events) — needs registry write (Contributor, Owner), as in ACR.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import MANAGE_READ, MANAGE_WRITE
from dockyard.access.policy import Policy
from dockyard.access.routes.common import (
    field,
    iso,
    json_body,
    query_int,
    record_change,
    status_flag,
    whole_number,
)
from dockyard.access.services.audit import AuditService
from dockyard.asgi import run_sync
from dockyard.webhooks.delivery import attempt, new_client
from dockyard.webhooks.services import DeliveryInfo, WebhookInfo, WebhookService

#: Webhook creates and updates (each resolves a host name) handled at once per process.
RESOLVING_AT_ONCE = 4
READ_WRITE = {"GET": MANAGE_READ, "POST": MANAGE_WRITE, "PATCH": MANAGE_WRITE, "DELETE": MANAGE_WRITE}
#: Reading these shows custom header values, service URIs and receivers' answers.
SECRETS = {"GET": MANAGE_WRITE, "POST": MANAGE_WRITE}
#: The fields PATCH takes; the audit log names those given, never their values.
CHANGEABLE = ("actions", "customHeaders", "payloadFormat", "scope", "secret", "serviceUri", "status")


def webhook_json(hook: WebhookInfo) -> dict[str, Any]:
    return {
        "name": hook.name,
        "actions": hook.actions,
        "scope": hook.scope,
        "status": "enabled" if hook.enabled else "disabled",
        "payloadFormat": hook.payload_format,
        "hasSecret": hook.has_secret,
        "creationTime": iso(hook.created_at),
    }


def delivery_json(delivery: DeliveryInfo) -> dict[str, Any]:
    last = delivery.attempt_log[-1] if delivery.attempt_log else None
    shown: dict[str, Any] = {
        "id": delivery.id,
        "eventId": delivery.event_id,
        "action": delivery.action,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "createdTime": iso(delivery.created_at),
        "nextAttemptTime": iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "retryUntil": iso(delivery.retry_until),
        "eventRequestMessage": {
            "method": "POST",
            "requestUri": last.request_uri if last else None,
            "headers": last.request_headers if last else None,
            "content": delivery.body,
        },
        "eventResponseMessage": None,
        "attemptLog": [
            {
                "time": iso(a.started_at),
                "durationMs": a.duration_ms,
                "statusCode": a.response_status,
                "error": a.error,
            }
            for a in delivery.attempt_log
        ],
    }
    if last is not None:
        shown["eventResponseMessage"] = {
            "statusCode": last.response_status,
            "headers": last.response_headers,
            "content": last.response_body,
            "error": last.error,
        }
    return shown


class WebhookRoutes:
    """Handlers for /api/v1/webhooks/…"""

    def __init__(
        self, service: WebhookService, policy: Policy, audit: AuditService, *, timeout_seconds: float
    ) -> None:
        self.service = service
        self.policy = policy
        self.audit = audit
        self.timeout = timeout_seconds
        #: Creates and updates resolve the service URI's host: a slow name server must not take
        #: more than a few of the threads every request is served by.
        self._resolving = anyio.Semaphore(RESOLVING_AT_ONCE)

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        return [
            Route("/api/v1/webhooks", guard(self.collection, READ_WRITE), methods=["GET", "POST"]),
            Route("/api/v1/webhooks/{id}", guard(self.item, READ_WRITE), methods=["GET", "PATCH", "DELETE"]),
            Route("/api/v1/webhooks/{id}/config", guard(self.config, SECRETS), methods=["GET"]),
            Route("/api/v1/webhooks/{id}/ping", guard(self.ping, SECRETS), methods=["POST"]),
            Route("/api/v1/webhooks/{id}/events", guard(self.events, SECRETS), methods=["GET"]),
            Route(
                "/api/v1/webhooks/{id}/events/{delivery}/redeliver",
                guard(self.redeliver, SECRETS),
                methods=["POST"],
            ),
        ]

    async def _audit(self, request: Request, action: str, detail: dict[str, Any]) -> None:
        """Record a change; ``detail`` names things, never header values, URIs or secrets."""
        await record_change(self.audit, self.policy, request, action, detail)

    async def collection(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"value": [webhook_json(h) for h in await run_sync(self.service.list)]})
        body = await json_body(request)
        enabled = status_flag(body)
        async with self._resolving:
            created = await run_sync(
                lambda: self.service.create(
                    field(body, "name", str, required=True),
                    field(body, "serviceUri", str, required=True),
                    field(body, "actions", list, required=True),
                    scope=field(body, "scope", str),
                    headers=field(body, "customHeaders", dict),
                    enabled=True if enabled is None else enabled,
                    secret=field(body, "secret", str),
                    payload_format=field(body, "payloadFormat", str) or "acr",
                )
            )
        await self._audit(
            request,
            "webhook.create",
            {"webhook": created.name, "actions": created.actions, "scope": created.scope},
        )
        return JSONResponse(webhook_json(created), status_code=201)

    async def item(self, request: Request) -> Response:
        name = request.path_params["id"]
        if request.method == "DELETE":
            await run_sync(self.service.delete, name)
            await self._audit(request, "webhook.delete", {"webhook": name})
            return Response(status_code=204)
        if request.method == "PATCH":
            body = await json_body(request)
            changes: dict[str, Any] = {
                "uri": field(body, "serviceUri", str),
                "actions": field(body, "actions", list),
                "headers": field(body, "customHeaders", dict),
                "payload_format": field(body, "payloadFormat", str),
            }
            for key in ("scope", "secret"):
                if key in body:
                    changes[key] = field(body, key, str)
            async with self._resolving:
                updated = await run_sync(
                    lambda: self.service.update(name, enabled=status_flag(body), **changes)
                )
            changed = [key for key in CHANGEABLE if key in body]
            await self._audit(request, "webhook.update", {"webhook": name, "changed": changed})
            return JSONResponse(webhook_json(updated))
        return JSONResponse(webhook_json(await run_sync(self.service.show, name)))

    async def config(self, request: Request) -> Response:
        hook = await run_sync(self.service.show, request.path_params["id"])
        return JSONResponse({"serviceUri": hook.uri, "customHeaders": hook.headers})

    async def ping(self, request: Request) -> Response:
        """Send a ping now and answer with what the receiver said (it is also in the delivery log)."""
        name = request.path_params["id"]
        job = await run_sync(self.service.ping, name)
        await self._audit(request, "webhook.ping", {"webhook": name, "delivery": job.id})
        async with new_client(self.timeout, self.service.allowed_networks) as client:
            result = await attempt(client, job, self.timeout)
        await run_sync(self.service.record, job, result)
        return JSONResponse(
            {
                "id": job.id,
                "statusCode": result.status,
                "error": result.error,
                "durationMs": result.duration_ms,
            }
        )

    async def events(self, request: Request) -> Response:
        limit = query_int(request, "limit", 50)
        found = await run_sync(
            lambda: self.service.deliveries(
                request.path_params["id"], limit=limit, status=request.query_params.get("status") or None
            )
        )
        return JSONResponse({"value": [delivery_json(d) for d in found]})

    async def redeliver(self, request: Request) -> Response:
        delivery = whole_number(request.path_params["delivery"], "the delivery id")
        await run_sync(self.service.redeliver, request.path_params["id"], delivery)
        detail = {"webhook": request.path_params["id"], "delivery": delivery}
        await self._audit(request, "webhook.redeliver", detail)
        return Response(status_code=202)
