"""Writes of one upload request to S3: buffered into whole parts, full parts sent in the background."""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING

from dockyard.storage.interfaces import StorageError
from dockyard.storage.s3_errors import translate_errors
from dockyard.storage.s3_layout import MAX_PARTS, MIN_PART, UploadState, located_key, part_size

if TYPE_CHECKING:
    from dockyard.storage.s3 import S3BlobStore

#: Full parts one upload sends in the background while its request's next bytes arrive: three
#: took a 256 MiB push on SeaweedFS from 91 to 105 MB/s (one: the store waited for each part).
PARTS_IN_FLIGHT = 3


class S3UploadWriter:
    """Buffers one request's bytes into whole parts of a multipart upload."""

    def __init__(
        self, store: S3BlobStore, upload_id: str, state: UploadState, digest: str | None, *, fresh: bool
    ) -> None:
        self._store = store
        self._upload_id = upload_id
        self._recorded = state
        self._key = state.key
        self._mpu = state.mpu
        self._parts = list(state.parts)
        self._tail_pending = state.tail is not None
        self._stale = list(state.stale)
        self._buffer = bytearray()
        self._digest = digest
        self._hasher = hashlib.new(digest.partition(":")[0]) if digest and fresh else None
        self._wrote = False
        self._closed = False
        #: Parts being sent in the background, oldest first: (number, size, the future of its ETag).
        self._pending: deque[tuple[int, int, Future[str]]] = deque()

    def write(self, data: bytes) -> None:
        """Buffer ``data``; upload every part that fills."""
        if self._closed:
            raise StorageError("write after close")
        if not data:
            return
        if self._recorded.sealed:
            raise StorageError(f"upload {self._upload_id} is complete; no more data can follow")
        self._wrote = True
        if self._tail_pending:
            self._take_tail()
        self._buffer += data
        if self._hasher is not None:
            self._hasher.update(data)
        while len(self._buffer) >= self._next_part_size():
            size = self._next_part_size()
            self._send_part(bytes(self._buffer[:size]))
            del self._buffer[:size]

    def _next_number(self) -> int:
        if self._pending:
            return self._pending[-1][0] + 1
        return self._parts[-1][0] + 1 if self._parts else 1

    def _next_part_size(self) -> int:
        return part_size(self._next_number(), self._store.part_size)

    def _take_tail(self) -> None:
        """Read the last part's bytes back so that they go out again with the new ones."""
        assert self._recorded.tail is not None
        data = self._store._get(self._recorded.tail)
        number, _, size = self._parts[-1]
        if len(data) != size:
            raise StorageError(f"upload {self._upload_id}: tail of part {number} is damaged")
        self._parts.pop()
        self._buffer[:0] = data
        self._stale.append(self._recorded.tail)
        self._tail_pending = False

    def _send_part(self, data: bytes) -> None:
        """Start uploading the next part in the background, with at most ``PARTS_IN_FLIGHT``
        travelling at once (the oldest is waited for first).

        So the request's next parts arrive (and are hashed) while earlier ones travel to S3:
        at most ``PARTS_IN_FLIGHT + 1`` parts of memory per writer.
        """
        while len(self._pending) >= PARTS_IN_FLIGHT:
            self._settle_oldest()
        number = self._claim_number()
        slots = self._store._part_slots
        slots.acquire()  # freed when any upload's part in flight finishes, whatever this one does
        try:
            future = self._store._part_sender.submit(self._put_part, number, data)
        except BaseException:
            slots.release()
            raise
        future.add_done_callback(lambda _done: slots.release())
        self._pending.append((number, len(data), future))

    def _settle(self) -> None:
        """Wait for every part in flight and record them, in order."""
        while self._pending:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        number, size, future = self._pending.popleft()
        try:
            with translate_errors(f"upload part {number} of {self._upload_id}"):
                etag = future.result()
        except BaseException:
            self._cancel_pending()
            raise
        self._parts.append((number, etag, size))

    def _cancel_pending(self) -> None:
        """Forget the parts still in flight: any that finishes is in no recorded state."""
        for _, _, future in self._pending:
            future.cancel()
        self._pending.clear()

    def _claim_number(self) -> int:
        """The next part's number, with the multipart upload started for it."""
        number = self._next_number()
        if number > MAX_PARTS:
            raise StorageError(f"upload {self._upload_id} exceeds {MAX_PARTS} parts")
        self._start_multipart()
        return number

    def _start_multipart(self) -> None:
        if self._mpu is None:
            store = self._store
            with translate_errors(f"start the multipart upload of {self._upload_id}"):
                answer = store.client.create_multipart_upload(Bucket=store.bucket, Key=store._key(self._key))
            self._mpu = answer["UploadId"]

    def _put_part(self, number: int, data: bytes) -> str:
        assert self._mpu is not None
        return self._store._upload_part(self._key, self._mpu, number, data)

    def _upload_part(self, data: bytes) -> None:
        """Upload the next part now (the last one of a request)."""
        self._settle()
        number = self._claim_number()
        with translate_errors(f"upload part {number} of {self._upload_id}"):
            etag = self._put_part(number, data)
        self._parts.append((number, etag, len(data)))

    def close(self) -> str:
        """Upload what is buffered and return the new state (see ``s3_layout``)."""
        if self._closed:
            raise StorageError("close after close")
        self._closed = True
        if not self._wrote:
            return self._recorded.dump()
        self._settle()
        rest = bytes(self._buffer)
        self._buffer.clear()
        complete = self._hasher is not None and self._hasher.hexdigest() == self._digest.partition(":")[2]
        tail = None
        if complete and self._mpu is None:  # the whole blob, small and verified: put it in place
            self._store.put(self._digest, rest)
            return UploadState(key=self._key, sealed=True, sealed_size=len(rest)).dump()
        if self._hasher is not None and not complete and self._mpu is None:
            self._key = located_key(self._upload_id)  # not the promised blob: keep it aside
        if rest:
            self._upload_part(rest)
            if len(rest) < MIN_PART and not complete:
                tail = f"uploads/{self._upload_id}/{self._parts[-1][0]}-{secrets.token_hex(8)}"
                with translate_errors(f"store the tail of {self._upload_id}"):
                    self._store.client.put_object(
                        Bucket=self._store.bucket,
                        Key=self._store._key(tail),
                        Body=rest,
                        ContentLength=len(rest),
                    )
        stale = self._stale
        if len(stale) > 64:  # the recorded state is recorded: its stale tails can go now
            self._store._delete_many(self._recorded.stale)
            stale = stale[len(self._recorded.stale) :]
        return UploadState(
            key=self._key, mpu=self._mpu, parts=self._parts, tail=tail, stale=stale, sealed=complete
        ).dump()

    def abort(self) -> None:
        """Forget the buffer; parts already sent (or in flight) are not in any recorded state."""
        self._closed = True
        self._buffer.clear()
        self._cancel_pending()  # parts already travelling finish unrecorded, like any sent part
