"""Repository policies in the management API: the write-once tag policy (/api/v1/repositories/…)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import MANAGE_READ, MANAGE_WRITE
from dockyard.access.policy import Policy
from dockyard.access.routes.common import field, invalid, json_body
from dockyard.asgi import run_sync
from dockyard.registry.routes.headers import repository_name
from dockyard.registry.services import RegistryServices


class PolicyRoutes:
    """GET (Reader) and PUT (Owner/Contributor) of a repository's tag immutability."""

    def __init__(self, services: RegistryServices, policy: Policy) -> None:
        self.locks = services.locks
        self.policy = policy

    def routes(self) -> list[BaseRoute]:
        needs = {"GET": MANAGE_READ, "PUT": MANAGE_WRITE}
        return [
            Route(
                "/api/v1/repositories/{name:path}/immutability",
                self.policy.guard(self.immutability, needs),
                methods=["GET", "PUT"],
            )
        ]

    async def immutability(self, request: Request) -> Response:
        name = repository_name(request)
        if request.method == "GET":
            return JSONResponse((await run_sync(self.locks.immutability, name)).as_json())
        body = await json_body(request)
        if "enabled" not in body:
            raise invalid("enabled is required (true, false, or null for the registry default)")
        enabled = field(body, "enabled", bool)
        exemptions = field(body, "exemptions", list)
        result = await run_sync(self.locks.set_immutability, name, enabled, exemptions)
        return JSONResponse(result.as_json())
