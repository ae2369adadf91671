"""ACR's metadata API (/acr/v1/…): what `az acr repository` and the azure-containerregistry SDK call."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import CATALOG, DELETE, READ_METADATA, UNTAG, WRITE_METADATA
from dockyard.access.policy import Policy
from dockyard.access.routes.common import json_body
from dockyard.asgi import run_sync
from dockyard.oci.digest import parse_digest
from dockyard.registry.routes.headers import next_link, origin, page_size, repository_name
from dockyard.registry.services import RegistryServices
from dockyard.registry.services.locks import parse_attributes
from dockyard.registry.services.repositories import ManifestInfo, RepositoryInfo, TagInfo


def acr_time(value: datetime) -> str:
    """ACR's timestamp format: UTC with a trailing Z."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def repository_json(info: RepositoryInfo, registry: str) -> dict[str, Any]:
    return {
        "registry": registry,
        "imageName": info.name,
        "createdTime": acr_time(info.created_at),
        "lastUpdateTime": acr_time(info.updated_at),
        "manifestCount": info.manifest_count,
        "tagCount": info.tag_count,
        "changeableAttributes": info.attributes.as_json(),
        # Dockyard's own: the write-once tag policy (the SDK ignores unknown keys).
        "tagImmutability": info.immutability.as_json(),
    }


def tag_json(tag: TagInfo) -> dict[str, Any]:
    return {
        "name": tag.name,
        "digest": tag.digest,
        "createdTime": acr_time(tag.created_at),
        "lastUpdateTime": acr_time(tag.updated_at),
        "signed": False,
        "changeableAttributes": tag.attributes.as_json(),
    }


def manifest_json(manifest: ManifestInfo) -> dict[str, Any]:
    item: dict[str, Any] = {
        "digest": manifest.digest,
        "imageSize": manifest.total_size,
        "createdTime": acr_time(manifest.created_at),
        "lastUpdateTime": acr_time(manifest.created_at),
        "mediaType": manifest.media_type,
        "tags": manifest.tags,
        "changeableAttributes": manifest.attributes.as_json(),
    }
    optional = {
        "architecture": manifest.architecture,
        "os": manifest.os,
        "configMediaType": manifest.config_media_type,
        "artifactType": manifest.artifact_type,
        "subject": manifest.subject,
    }
    item.update({key: value for key, value in optional.items() if value})
    if manifest.references:
        item["references"] = [
            {"digest": ref.digest, "architecture": ref.architecture, "os": ref.os}
            for ref in manifest.references
        ]
    return item


def _next_page(path: str, n: int | None, last: str | None, orderby: str | None) -> dict[str, str]:
    """A Link header to the page after ``last``, or none on the last page."""
    return {"Link": next_link(path, n, last, orderby=orderby or "")} if last else {}


def _registry(request: Request) -> str:
    return request.headers.get("host", "localhost")


class AcrRoutes:
    """Handlers for /acr/v1/…"""

    def __init__(self, services: RegistryServices, policy: Policy) -> None:
        self.repositories = services.repositories
        self.manifests = services.manifests
        self.locks = services.locks
        self.policy = policy

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        read_or_delete = {"GET": READ_METADATA, "DELETE": DELETE, "PATCH": WRITE_METADATA}
        return [
            Route("/acr/v1/_catalog", guard(self.catalog, {"GET": CATALOG}), methods=["GET"]),
            Route(
                "/acr/v1/{name:path}/_tags/{tag}",
                guard(self.tag, {"GET": READ_METADATA, "DELETE": UNTAG, "PATCH": WRITE_METADATA}),
                methods=["GET", "DELETE", "PATCH"],
            ),
            Route("/acr/v1/{name:path}/_tags", guard(self.tags, {"GET": READ_METADATA}), methods=["GET"]),
            Route(
                "/acr/v1/{name:path}/_manifests/{digest}",
                guard(self.manifest, read_or_delete),
                methods=["GET", "DELETE", "PATCH"],
            ),
            Route(
                "/acr/v1/{name:path}/_manifests",
                guard(self.manifest_list, {"GET": READ_METADATA}),
                methods=["GET"],
            ),
            Route(
                "/acr/v1/{name:path}",
                guard(self.repository, read_or_delete),
                methods=["GET", "DELETE", "PATCH"],
            ),
        ]

    async def catalog(self, request: Request) -> Response:
        n = page_size(request)
        page = await run_sync(self.repositories.catalog, n, request.query_params.get("last") or None)
        headers = {"Link": next_link("/acr/v1/_catalog", n, page.items[-1])} if page.more else {}
        return JSONResponse({"repositories": page.items}, headers=headers)

    async def repository(self, request: Request) -> Response:
        name = repository_name(request)
        if request.method == "DELETE":
            deleted = await run_sync(self.repositories.delete, name, origin(request, self.policy))
            return JSONResponse(
                {"manifestsDeleted": deleted.manifests, "tagsDeleted": deleted.tags}, status_code=202
            )
        if request.method == "PATCH":
            changes = parse_attributes(await json_body(request))
            await run_sync(self.locks.update_repository, name, changes)
        info = await run_sync(self.repositories.info, name)
        return JSONResponse(repository_json(info, _registry(request)))

    async def tags(self, request: Request) -> Response:
        name = repository_name(request)
        n = page_size(request)
        query = request.query_params
        orderby = query.get("orderby") or None
        found, more = await run_sync(
            self.repositories.tag_details,
            name,
            n,
            query.get("last") or None,
            orderby,
            query.get("digest") or None,
        )
        headers = _next_page(f"/acr/v1/{name}/_tags", n, found[-1].name if more else None, orderby)
        body = {"registry": _registry(request), "imageName": name, "tags": [tag_json(t) for t in found]}
        return JSONResponse(body, headers=headers)

    async def tag(self, request: Request) -> Response:
        name = repository_name(request)
        tag = request.path_params["tag"]
        if request.method == "DELETE":
            await run_sync(self.manifests.delete, name, tag, origin(request, self.policy))
            return Response(status_code=202)
        if request.method == "PATCH":
            changes = parse_attributes(await json_body(request))
            await run_sync(self.locks.update_tag, name, tag, changes)
        found = await run_sync(self.repositories.tag_detail, name, tag)
        return JSONResponse({"registry": _registry(request), "imageName": name, "tag": tag_json(found)})

    async def manifest_list(self, request: Request) -> Response:
        name = repository_name(request)
        n = page_size(request)
        query = request.query_params
        orderby = query.get("orderby") or None
        found, more = await run_sync(
            self.repositories.manifest_details, name, n, query.get("last") or None, orderby
        )
        headers = _next_page(f"/acr/v1/{name}/_manifests", n, found[-1].digest if more else None, orderby)
        body = {
            "registry": _registry(request),
            "imageName": name,
            "manifests": [manifest_json(m) for m in found],
        }
        return JSONResponse(body, headers=headers)

    async def manifest(self, request: Request) -> Response:
        name = repository_name(request)
        digest = request.path_params["digest"]
        parse_digest(digest)
        if request.method == "DELETE":
            await run_sync(self.manifests.delete, name, digest, origin(request, self.policy))
            return Response(status_code=202)
        if request.method == "PATCH":
            changes = parse_attributes(await json_body(request))
            await run_sync(self.locks.update_manifest, name, digest, changes)
        found = await run_sync(self.repositories.manifest_detail, name, digest)
        return JSONResponse(
            {"registry": _registry(request), "imageName": name, "manifest": manifest_json(found)}
        )
