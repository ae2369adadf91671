"""The repository event log over HTTP: /api/v1/events (ACR's repository event logs)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import MANAGE_READ
from dockyard.access.policy import Policy
from dockyard.access.routes.common import invalid, iso, query_int, query_time
from dockyard.asgi import run_sync
from dockyard.events.services import ACTIONS, EventService


class EventRoutes:
    def __init__(self, events: EventService, policy: Policy) -> None:
        self.events = events
        self.policy = policy

    def routes(self) -> list[BaseRoute]:
        return [Route("/api/v1/events", self.policy.guard(self.list, {"GET": MANAGE_READ}), methods=["GET"])]

    async def list(self, request: Request) -> Response:
        query = request.query_params
        action = query.get("action") or None
        if action is not None and action not in ACTIONS:
            raise invalid(f"action must be one of {', '.join(ACTIONS)}")
        since = query_time(request)
        limit = query_int(request, "limit", 100)
        await run_sync(self.events.flush_pulls)
        found = await run_sync(
            lambda: self.events.list(
                repository=query.get("repository") or None, action=action, since=since, limit=limit
            )
        )
        return JSONResponse(
            {
                "value": [
                    {
                        "id": e.uid,
                        "time": iso(e.time),
                        "action": e.action,
                        "repository": e.repository,
                        "tag": e.tag,
                        "digest": e.digest,
                        "mediaType": e.media_type,
                        "size": e.size,
                        "count": e.count,
                        "actor": e.origin.actor,
                        "clientIp": e.origin.client_ip,
                        "userAgent": e.origin.user_agent,
                    }
                    for e in found
                ]
            }
        )
