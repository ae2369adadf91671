"""/v2/, the catalog and tag lists."""

from __future__ import annotations

import json
from collections import OrderedDict

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import CATALOG, LIST_TAGS
from dockyard.access.policy import Policy
from dockyard.asgi import run_sync
from dockyard.registry.routes.headers import API_VERSION, next_link, page_size, repository_name
from dockyard.registry.services import RegistryServices

WHOLE_LISTS_CACHED = 64


class ListingRoutes:
    """Version check and content discovery."""

    def __init__(self, services: RegistryServices, policy: Policy) -> None:
        self.repositories = services.repositories
        self.policy = policy
        #: Encoded whole tag lists by repository, with the version they were built from.
        self._whole_lists: OrderedDict[str, tuple[object, bytes]] = OrderedDict()

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        return [
            Route("/v2/", guard(self.version_check, {"GET": None}), methods=["GET"]),
            Route("/v2/_catalog", guard(self.catalog, {"GET": CATALOG}), methods=["GET"]),
            Route("/v2/{name:path}/tags/list", guard(self.tag_list, {"GET": LIST_TAGS}), methods=["GET"]),
        ]

    async def version_check(self, request: Request) -> Response:
        return JSONResponse({}, headers=API_VERSION)

    async def catalog(self, request: Request) -> Response:
        n = page_size(request)
        last = request.query_params.get("last") or None
        if n == 0:
            return JSONResponse({"repositories": []}, headers=API_VERSION)
        page = await run_sync(self.repositories.catalog, n, last)
        headers = dict(API_VERSION)
        if page.more:
            headers["Link"] = next_link("/v2/_catalog", n, page.items[-1])
        return JSONResponse({"repositories": page.items}, headers=headers)

    async def tag_list(self, request: Request) -> Response:
        name = repository_name(request)
        n = page_size(request)
        last = request.query_params.get("last") or None
        page = self.repositories.cached_tag_names(name, n, last)
        if page is None:
            page = await run_sync(self.repositories.tag_names, name, n, last)
        headers = dict(API_VERSION)
        if page.more and page.items:
            headers["Link"] = next_link(f"/v2/{name}/tags/list", n, page.items[-1])
        if n is not None or last is not None:
            return JSONResponse({"name": name, "tags": page.items}, headers=headers)
        body = self._whole_lists.get(name)
        if body is None or body[0] != page.version:
            body = (
                page.version,
                json.dumps({"name": name, "tags": page.items}, separators=(",", ":")).encode(),
            )
            self._whole_lists[name] = body
            self._whole_lists.move_to_end(name)
            while len(self._whole_lists) > WHOLE_LISTS_CACHED:
                self._whole_lists.popitem(last=False)
        return Response(body[1], headers=headers, media_type="application/json")
