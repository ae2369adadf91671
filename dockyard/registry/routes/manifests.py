"""Manifests (GET, HEAD, PUT, DELETE) and the referrers API."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import DELETE, PULL, PUSH, UNTAG, Need
from dockyard.access.policy import Policy
from dockyard.asgi import read_body, run_local, run_soon, run_sync
from dockyard.oci import mediatypes as mt
from dockyard.oci.digest import is_digest
from dockyard.oci.manifests import MAX_MANIFEST_SIZE
from dockyard.registry.routes.headers import API_VERSION, accept_list, origin, repository_name
from dockyard.registry.routes.pullthrough import ORIGIN_HEADER, cache_for, refuse_cache_push
from dockyard.registry.services import RegistryServices

#: A manifest up to this size (an image manifest is 1-2 KiB, an index of a dozen platforms about
#: 5 KiB) is parsed and stored on the event loop; a larger one in a worker thread.
INLINE_MANIFEST_BYTES = 16 * 1024


def _delete_need(request: Request) -> Need:
    """Deleting by digest deletes content; deleting by tag only untags."""
    return DELETE if is_digest(request.path_params["reference"]) else UNTAG


class ManifestRoutes:
    """Handlers for /v2/<name>/manifests/… and /v2/<name>/referrers/…"""

    def __init__(self, services: RegistryServices, policy: Policy) -> None:
        self.manifests = services.manifests
        self.events = services.events
        self.hooks = services.hooks
        self.policy = policy

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        needs = {"GET": PULL, "PUT": PUSH, "DELETE": _delete_need}
        return [
            Route(
                "/v2/{name:path}/manifests/{reference}",
                guard(self.manifest, needs),
                methods=["GET", "HEAD", "PUT", "DELETE"],
            ),
            Route(
                "/v2/{name:path}/referrers/{digest}", guard(self.referrers, {"GET": PULL}), methods=["GET"]
            ),
        ]

    async def manifest(self, request: Request) -> Response:
        name = repository_name(request)
        reference = request.path_params["reference"]
        method = request.method
        if method == "PUT":
            await refuse_cache_push(self.hooks, name)
            payload = await read_body(request, MAX_MANIFEST_SIZE)
            content_type = request.headers.get("content-type", "")
            args = (name, reference, payload, content_type, origin(request, self.policy))
            if len(payload) <= INLINE_MANIFEST_BYTES:  # parsed and stored on the loop unless that would wait
                pushed = await run_soon(self.manifests.db, self.manifests.put, *args)
            else:  # a large one's parsing and reference rows would hold up every other request
                pushed = await run_sync(self.manifests.put, *args)
            headers = {
                **API_VERSION,
                "Docker-Content-Digest": pushed.digest,
                "Location": f"/v2/{name}/manifests/{pushed.digest}",
            }
            if pushed.subject:
                headers["OCI-Subject"] = pushed.subject
            return Response(status_code=201, headers=headers)
        if method == "DELETE":
            await run_sync(self.manifests.delete, name, reference, origin(request, self.policy))
            return Response(status_code=202, headers=API_VERSION)
        accept = accept_list(request)
        fetched = False
        pull = await cache_for(self.hooks, name)
        if pull is not None:
            fetched = await run_sync(pull.manifest, name, reference, accept)
        record = self.manifests.cached(name, reference, accept)
        if record is None:
            record = await run_local(self.manifests.reads_inline, self.manifests.get, name, reference, accept)
        headers = {
            **API_VERSION,
            "Docker-Content-Digest": record.digest,
            "ETag": f'"{record.digest}"',
        }
        if fetched:
            headers[ORIGIN_HEADER] = "upstream"
        if method == "HEAD":
            headers["content-length"] = str(len(record.payload))
            return Response(b"", headers=headers, media_type=record.media_type)
        tag = None if is_digest(reference) else reference
        self.events.note_pull(
            name, tag, record.digest, record.media_type, len(record.payload), origin(request, self.policy)
        )
        return Response(record.payload, headers=headers, media_type=record.media_type)

    async def referrers(self, request: Request) -> Response:
        name = repository_name(request)
        artifact_type = request.query_params.get("artifactType") or None
        descriptors = await run_sync(
            self.manifests.referrers, name, request.path_params["digest"], artifact_type
        )
        headers = dict(API_VERSION)
        if artifact_type is not None:
            headers["OCI-Filters-Applied"] = "artifactType"
        return JSONResponse(
            {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors},
            headers=headers,
            media_type=mt.OCI_INDEX,
        )
