"""Sending a blob that the store keeps in a local file (the filesystem driver).

What the page cache holds of a chunk is read on the event loop (``preadv`` with ``RWF_NOWAIT``
stops at the first page that is not cached, never waiting on the disk): a read is then a memory
copy, and handing each one to a thread (as the server's own file sending does, in 128 KiB reads)
cost a quarter of the throughput of 8 concurrent pulls in thread wake-ups alone. The rest of the
chunk is read in a worker thread. One buffer per response serves all its chunks: the server copies
a body when it is sent (granian does, before ``send`` returns; an e2e test holds it to that), and a
new zeroed buffer per 1 MiB chunk cost 5 to 10% of the throughput of 8 concurrent pulls.

The server keeps several body messages of a slow client in its buffers (about 8 MiB per client
with 1 MiB chunks), so only ``FastStreams.limit`` responses per process send 1 MiB chunks at
once; the others send 128 KiB chunks, or leave a whole file to the server's own file sending
(``http.response.pathsend``, about 0.6 MiB per slow client), as does a whole file that is not
cached at all. A client that goes away is noticed between two chunks (granian reports the
disconnect, and drops what is sent after it): the reading stops there. A file shorter than the
answer is an error before the answer starts."""

from __future__ import annotations

import os
from collections.abc import Mapping

import anyio
import anyio.lowlevel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dockyard.asgi import run_sync
from dockyard.oci.errors import ErrorCode, RegistryError

#: Bytes per body message of a fast stream: large enough that per-chunk costs vanish.
SEND_CHUNK = 1024 * 1024
#: Bytes per body message of any other stream, and the largest file sent as one message without
#: a fast stream's slot.
SLOW_CHUNK = 128 * 1024
#: Responses per process that may send 1 MiB chunks at once.
FAST_STREAMS = 8

#: ``preadv`` flag that fails instead of waiting on the disk (Linux); absent elsewhere.
NO_WAIT = getattr(os, "RWF_NOWAIT", None)


def read_cached(fd: int, offset: int, size: int, buffer: bytearray | None = None) -> tuple[bytearray, int]:
    """A buffer for ``size`` bytes at ``offset`` (``buffer`` if given, of that size), and how many
    of them the page cache supplied.

    The read never waits on the disk: it stops at the first page that is not cached (0 bytes where
    the flag is missing or the file system refuses it).
    """
    if buffer is None:
        buffer = bytearray(size)
    if NO_WAIT is None:
        return buffer, 0
    try:
        return buffer, os.preadv(fd, [buffer], offset, NO_WAIT)
    except OSError:  # BlockingIOError: the first page is not cached; EOPNOTSUPP: no such flag here
        return buffer, 0


def read_rest(fd: int, buffer: bytearray, filled: int, offset: int) -> int:
    """Fill ``buffer`` from its byte ``filled`` on (the file's byte ``offset + filled``), waiting on
    the disk (call it in a thread); the bytes it then holds, fewer only at the end of the file."""
    view = memoryview(buffer)
    while filled < len(buffer):
        got = os.preadv(fd, [view[filled:]], offset + filled)
        if got == 0:
            break
        filled += got
    return filled


def is_cached(fd: int, offset: int) -> bool:
    """Whether the page cache holds the byte at ``offset`` (False where that cannot be asked)."""
    if NO_WAIT is None:
        return False
    try:
        os.preadv(fd, [bytearray(1)], offset, NO_WAIT)
    except OSError:  # BlockingIOError: not cached; EOPNOTSUPP: a file system without the flag
        return False
    return True


class FastStreams:
    """The slots for 1 MiB-chunk streams of one app (taken and given back on its event loop)."""

    def __init__(self, limit: int = FAST_STREAMS) -> None:
        self.limit = limit
        self.active = 0

    def take(self) -> bool:
        """Take a slot if one is free."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def give(self) -> None:
        """Give a slot back."""
        self.active -= 1


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
        streams: FastStreams | None = None,
    ) -> None:
        headers = {**headers, "content-length": str(length)}
        super().__init__(status_code=status_code, headers=headers, media_type="application/octet-stream")
        self.path = path
        self.start = start
        self.length = length
        self.whole = whole  # the whole file: the server may send it itself
        self.streams = streams if streams is not None else FastStreams()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fd = self._open()
        fast = self.length > SLOW_CHUNK and self.streams.take()
        try:
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            chunk = SEND_CHUNK if fast else SLOW_CHUNK
            if self.length > chunk and self._server_sends(scope, fd, fast):
                await send({"type": "http.response.pathsend", "path": self.path})
                return
            if self.length <= chunk:
                body = await self._read(fd, self.start, self.length) if self.length else b""
                await send({"type": "http.response.body", "body": body})
                return
            try:
                async with anyio.create_task_group() as group:

                    async def watch() -> None:  # for servers that report a disconnect while streaming
                        await _until_disconnected(receive)
                        group.cancel_scope.cancel()

                    group.start_soon(watch)
                    await self._send_chunks(fd, send, chunk)
                    group.cancel_scope.cancel()
            except BaseExceptionGroup as failed:  # the sending's own error, as the caller expects
                if len(failed.exceptions) == 1:
                    raise failed.exceptions[0] from None
                raise
        finally:
            if fast:
                self.streams.give()
            os.close(fd)

    def _open(self) -> int:
        """The file, open. BLOB_UNKNOWN if it is gone; OSError, before the answer starts, if it is
        shorter than the answer (a 500 rather than a 200 that breaks off)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:  # removed by garbage collection since the route found it
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, "blob data is missing from storage") from None
        try:
            stored, needed = os.fstat(fd).st_size, self.start + self.length
            if stored < needed:
                raise OSError(f"blob file {self.path} holds {stored} bytes, {needed} expected")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _server_sends(self, scope: Scope, fd: int, fast: bool) -> bool:
        """Whether to leave a whole file to the server: without a fast slot, or not cached at all
        (its last byte is not)."""
        if not self.whole or "http.response.pathsend" not in (scope.get("extensions") or {}):
            return False
        return not fast or not is_cached(fd, self.length - 1)

    async def _send_chunks(self, fd: int, send: Send, chunk: int) -> None:
        offset, end = self.start, self.start + self.length
        buffer = bytearray(chunk)  # refilled for each whole chunk: the server copied the last one
        while offset < end:
            size = min(chunk, end - offset)
            body = await self._read(fd, offset, size, buffer if size == chunk else None)
            offset += size
            await send({"type": "http.response.body", "body": body, "more_body": offset < end})
            # A send to a client that left returns at once: without a pause here the disconnect
            # watcher never runs, and the rest of the range would be read for nothing.
            await anyio.lowlevel.checkpoint()

    @staticmethod
    async def _read(fd: int, offset: int, size: int, buffer: bytearray | None = None) -> bytearray:
        body, filled = read_cached(fd, offset, size, buffer)
        if filled < size:
            filled = await run_sync(read_rest, fd, body, filled, offset)
        if filled != size:  # a stored blob is immutable: a short read means it was cut
            raise OSError(f"blob file ended {size - filled} bytes early at offset {offset + filled}")
        return body


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
