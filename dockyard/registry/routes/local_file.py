"""Sending a blob that the store keeps in a local file (the filesystem driver).

A file the page cache holds is read on the event loop, a chunk at a time: a read is then a memory
copy, and handing each one to a thread (as the server's own file sending does, in 128 KiB reads)
cost a quarter of the throughput of 8 concurrent pulls in thread wake-ups alone. A chunk that is
not cached is read in a worker thread. A whole file that is not cached at all goes to the server's
own file sending (``http.response.pathsend``): granian reports no disconnect to the app while it
streams, so a client that goes away costs the rest of a cached file's reading, never its disk I/O.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dockyard.asgi import run_sync
from dockyard.oci.errors import ErrorCode, RegistryError

#: Bytes per body message: large enough that per-chunk costs vanish, small enough that a slow
#: client holds little memory (the server takes the next chunk once the last one is written).
SEND_CHUNK = 1024 * 1024

#: ``preadv`` flag that fails instead of waiting on the disk (Linux); absent elsewhere.
NO_WAIT = getattr(os, "RWF_NOWAIT", None)


def read_if_cached(fd: int, offset: int, size: int) -> bytes | None:
    """``size`` bytes at ``offset`` if reading them will not wait on the disk, else None.

    The probe reads the chunk's last byte without waiting: readahead fills the page cache in
    order, so a cached last page means the pages before it are cached too (and if one is not,
    the read waits for one chunk at most).
    """
    return os.pread(fd, size, offset) if is_cached(fd, offset + size - 1) else None


def is_cached(fd: int, offset: int) -> bool:
    """Whether the page cache holds the byte at ``offset`` (False where that cannot be asked)."""
    if NO_WAIT is None:
        return False
    try:
        os.preadv(fd, [bytearray(1)], offset, NO_WAIT)
    except OSError:  # BlockingIOError: not cached; EOPNOTSUPP: a file system without the flag
        return False
    return True


class LocalFileResponse(Response):
    """``length`` bytes of the file at ``path`` from ``start``, with the given status and headers."""

    def __init__(
        self,
        path: str,
        start: int,
        length: int,
        *,
        status_code: int = 200,
        headers: Mapping[str, str],
        whole: bool = False,
    ) -> None:
        headers = {**headers, "content-length": str(length)}
        super().__init__(status_code=status_code, headers=headers, media_type="application/octet-stream")
        self.path = path
        self.start = start
        self.length = length
        self.whole = whole  # the whole file: the server may send it itself

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:  # removed by garbage collection since the route found it
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, "blob data is missing from storage") from None
        try:
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            if self.length > SEND_CHUNK and self._server_sends(scope, fd):
                await send({"type": "http.response.pathsend", "path": self.path})
                return
            if self.length <= SEND_CHUNK:
                body = await self._read(fd, self.start, self.length) if self.length else b""
                await send({"type": "http.response.body", "body": body})
                return
            try:
                async with anyio.create_task_group() as group:

                    async def watch() -> None:  # for servers that report a disconnect while streaming
                        await _until_disconnected(receive)
                        group.cancel_scope.cancel()

                    group.start_soon(watch)
                    await self._send_chunks(fd, send)
                    group.cancel_scope.cancel()
            except BaseExceptionGroup as failed:  # the sending's own error, as the caller expects
                if len(failed.exceptions) == 1:
                    raise failed.exceptions[0] from None
                raise
        finally:
            os.close(fd)

    def _server_sends(self, scope: Scope, fd: int) -> bool:
        """Whether to leave a whole file that is not cached (its last byte is not) to the server."""
        extensions = scope.get("extensions") or {}
        return self.whole and "http.response.pathsend" in extensions and not is_cached(fd, self.length - 1)

    async def _send_chunks(self, fd: int, send: Send) -> None:
        offset, end = self.start, self.start + self.length
        while offset < end:
            size = min(SEND_CHUNK, end - offset)
            body = await self._read(fd, offset, size)
            offset += size
            await send({"type": "http.response.body", "body": body, "more_body": offset < end})

    @staticmethod
    async def _read(fd: int, offset: int, size: int) -> bytes:
        body = read_if_cached(fd, offset, size)
        if body is None:
            body = await run_sync(os.pread, fd, size, offset)
        if len(body) != size:  # a stored blob is immutable: a short read means it was cut
            raise OSError(f"blob file ended {size - len(body)} bytes early at offset {offset}")
        return body


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
