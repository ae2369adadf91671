"""Blob reads and deletes, and the upload protocol (POST, PATCH, PUT, GET status, DELETE)."""

from __future__ import annotations

import logging
import os

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import DELETE, PULL, PUSH
from dockyard.access.policy import Policy
from dockyard.asgi import (
    content_length,
    error_response,
    read_body,
    run_local,
    run_soon,
    run_sync,
    run_with_body,
)
from dockyard.oci.digest import parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.names import validate_name
from dockyard.registry.routes.headers import API_VERSION, byte_range, content_range, repository_name
from dockyard.registry.routes.local_file import FastStreams, LocalFileResponse
from dockyard.registry.routes.pullthrough import ORIGIN_HEADER, cache_for, refuse_cache_push
from dockyard.registry.services import RegistryServices
from dockyard.registry.services.common import BlobInfo, UploadState
from dockyard.registry.services.upload_sessions import SMALL_CHUNK, range_header
from dockyard.storage import BlobSource, LocalFile, Redirect

log = logging.getLogger(__name__)


def _blob_headers(name: str, blob: BlobInfo) -> dict[str, str]:
    return {
        **API_VERSION,
        "Docker-Content-Digest": blob.digest,
        "Location": f"/v2/{name}/blobs/{blob.digest}",
    }


def _present(source: BlobSource, blob: BlobInfo) -> None:
    """BLOB_UNKNOWN (and an error in the log) if ``source`` is a local file that is gone."""
    if isinstance(source, LocalFile) and not os.path.exists(source.path):
        log.error("blob %s is recorded but missing from storage", blob.digest)
        raise RegistryError(ErrorCode.BLOB_UNKNOWN, "blob data is missing from storage")


def _upload_headers(state: UploadState) -> dict[str, str]:
    return {
        **API_VERSION,
        "Location": f"/v2/{state.repository}/blobs/uploads/{state.id}",
        "Range": range_header(state.size),
        "Docker-Upload-UUID": state.id,
    }


class BlobRoutes:
    """Handlers for /v2/<name>/blobs/…"""

    def __init__(self, services: RegistryServices, policy: Policy) -> None:
        self.blobs = services.blobs
        self.uploads = services.uploads
        self.hooks = services.hooks
        self.policy = policy
        self.fast_streams = FastStreams()  # 1 MiB-chunk blob sends at once (see local_file)

    def routes(self) -> list[BaseRoute]:
        guard = self.policy.guard
        upload_needs = {method: PUSH for method in ("GET", "PATCH", "PUT", "DELETE")}
        return [
            Route(
                "/v2/{name:path}/blobs/uploads/", guard(self.start_upload, {"POST": PUSH}), methods=["POST"]
            ),
            Route(
                "/v2/{name:path}/blobs/uploads/{upload_id}",
                guard(self.upload, upload_needs),
                methods=["GET", "PATCH", "PUT", "DELETE"],
            ),
            Route(
                "/v2/{name:path}/blobs/{digest}",
                guard(self.blob, {"GET": PULL, "DELETE": DELETE}),
                methods=["GET", "HEAD", "DELETE"],
            ),
        ]

    # -- reading and deleting ---------------------------------------------------------------

    async def blob(self, request: Request) -> Response:
        name = repository_name(request)
        digest = request.path_params["digest"]
        if request.method == "DELETE":
            await run_sync(self.blobs.delete, name, digest)
            return Response(status_code=202, headers=API_VERSION)
        fetched = False
        blob = self.blobs.cached(name, digest)
        if blob is None:
            try:
                blob = await run_local(self.blobs.reads_inline, self.blobs.stat, name, digest)
            except RegistryError as exc:
                if exc.code is not ErrorCode.BLOB_UNKNOWN:
                    raise
                pull = await cache_for(self.hooks, name)
                got = None if pull is None else await run_sync(pull.blob, name, digest)
                if got is None:
                    raise
                fetched = got
                blob = await run_sync(self.blobs.stat, name, digest)
        headers = {
            **API_VERSION,
            "Docker-Content-Digest": blob.digest,
            "Accept-Ranges": "bytes",
            "ETag": f'"{blob.digest}"',
            "Cache-Control": "max-age=31536000",
        }
        if fetched:
            headers[ORIGIN_HEADER] = "upstream"
        if request.method == "HEAD":
            if self.blobs.local:  # a file store answers as GET would when the file is gone
                _present(self.blobs.source(blob), blob)
            headers["content-length"] = str(blob.size)
            return Response(b"", headers=headers, media_type="application/octet-stream")
        return await self._send(request, blob, headers)

    async def _send(self, request: Request, blob: BlobInfo, headers: dict[str, str]) -> Response:
        """A blob GET's answer: a redirect, the file, the bytes kept in memory, or a stream."""
        span = byte_range(request, blob.size)
        source = self.blobs.recent_source(blob) or await run_local(self.blobs.local, self.blobs.source, blob)
        if isinstance(source, Redirect):
            # The URL expires and carries a grant: no cache may replay it (the bytes are immutable,
            # the way to them is not).
            headers["Cache-Control"] = "no-store"
            return Response(status_code=307, headers={**headers, "Location": source.url})
        start, end = span if span is not None else (0, blob.size - 1)
        length = end - start + 1 if blob.size else 0
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        if isinstance(source, LocalFile):
            _present(source, blob)
            return LocalFileResponse(
                str(source.path),
                start,
                length,
                status_code=status,
                headers=headers,
                whole=span is None,
                streams=self.fast_streams,
            )
        headers["content-length"] = str(length)
        if self.blobs.kept_in_memory(blob):  # an image config, mostly: no store request once read
            data = self.blobs.remembered(blob)
            if data is None:
                data = await run_sync(self.blobs.read_small, blob)
            body = data[start : end + 1]  # an empty blob: [0:0]
            return Response(body, status_code=status, headers=headers, media_type="application/octet-stream")
        chunks = await run_sync(self.blobs.open, blob, start, length)
        return StreamingResponse(
            chunks, status_code=status, headers=headers, media_type="application/octet-stream"
        )

    # -- uploading --------------------------------------------------------------------------

    async def start_upload(self, request: Request) -> Response:
        name = repository_name(request)
        await refuse_cache_push(self.hooks, name)
        query = request.query_params
        mount = query.get("mount")
        if mount:
            source = query.get("from") or None
            if source is not None:
                validate_name(source)
            caller = await self.policy.caller(request)
            mounted = await run_sync(
                self.blobs.mount, name, mount, source, lambda repo: caller.allows(PULL, repo)
            )
            if mounted is not None:
                return Response(status_code=201, headers=_blob_headers(name, mounted))
        digest = query.get("digest")
        if digest:
            parse_digest(digest)
            blob = await run_with_body(
                request, self.uploads.upload_whole, name, digest, content_length=content_length(request)
            )
            return Response(status_code=201, headers=_blob_headers(name, blob))
        # Writes nothing; reads only when this process does not know the repository is writable.
        state = self.uploads.start_known(name) or await run_local(
            self.uploads.reads_inline, self.uploads.start, name
        )
        return Response(status_code=202, headers=_upload_headers(state))

    async def upload(self, request: Request) -> Response:
        name = repository_name(request)
        upload_id = request.path_params["upload_id"]
        try:
            return await self._upload(request, name, upload_id)
        except RegistryError as exc:
            if exc.status != 416:
                raise
            return error_response(
                exc,
                headers={
                    "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
                    "Docker-Upload-UUID": upload_id,
                },
            )

    async def _close_whole(
        self, name: str, upload_id: str, digest: str, data: bytes, chunk_range: tuple[int, int] | None
    ) -> BlobInfo | None:
        """A closing PUT that carries the whole blob (the usual monolithic push): the bytes are
        stored in a worker thread, the session is closed on the event loop if it can be (else in the
        same thread). None: the body alone is not the blob, or the session holds bytes already (the
        general path decides)."""
        if self.uploads.db.writes_inline:
            stored = await run_sync(self.uploads.store_closing, digest, data, chunk_range)
            if stored is None:
                return None
            closed = await run_soon(self.uploads.db, self.uploads.close_stored, name, upload_id, stored)
        else:
            closed = await run_sync(self.uploads.store_and_close, name, upload_id, digest, data, chunk_range)
        if closed is None:
            return None
        if closed.leftover is not None:
            await run_sync(self.uploads.discard, upload_id, closed.leftover)
        return closed.blob

    async def _upload(self, request: Request, name: str, upload_id: str) -> Response:
        method = request.method
        if method == "GET":
            state = await run_sync(self.uploads.status, name, upload_id)
            return Response(status_code=204, headers=_upload_headers(state))
        if method == "DELETE":
            await run_sync(self.uploads.cancel, name, upload_id)
            return Response(status_code=204, headers=API_VERSION)
        chunk_range = content_range(request)
        length = content_length(request)
        if method == "PATCH":
            state = await run_with_body(
                request,
                self.uploads.append,
                name,
                upload_id,
                content_range=chunk_range,
                content_length=length,
            )
            return Response(status_code=202, headers=_upload_headers(state))
        digest = request.query_params.get("digest")
        if not digest:
            raise RegistryError(ErrorCode.DIGEST_INVALID, "the closing PUT needs a digest query parameter")
        parse_digest(digest)
        if length is not None and length <= SMALL_CHUNK:
            # A small body (a config blob, a small layer) is read here, not streamed to a thread.
            data = await read_body(request, length)
            whole = bool(data) and (chunk_range is None or chunk_range[0] == 0)
            if whole:
                closed = await self._close_whole(name, upload_id, digest, data, chunk_range)
                if closed is not None:
                    return Response(status_code=201, headers=_blob_headers(name, closed))
            blob = await run_sync(
                self.uploads.complete,
                name,
                upload_id,
                digest,
                (data,),
                content_range=chunk_range,
                content_length=length,
                whole_tried=whole,
            )
            return Response(status_code=201, headers=_blob_headers(name, blob))
        blob = await run_with_body(
            request,
            self.uploads.complete,
            name,
            upload_id,
            digest,
            content_range=chunk_range,
            content_length=length,
        )
        return Response(status_code=201, headers=_blob_headers(name, blob))
