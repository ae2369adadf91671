"""This process's running digests of the uploads it wrote last: the fast path before the database's."""

from __future__ import annotations

import threading
from collections import OrderedDict

from dockyard.oci.resumable import ResumableHash


class HasherCache:
    """An LRU of (size, running hash) by upload id; every hash handed out is a private copy."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._hashers: OrderedDict[str, tuple[int, ResumableHash]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, upload_id: str) -> tuple[int, ResumableHash] | None:
        """A copy of the cached (size, hash) for the upload, if any."""
        with self._lock:
            cached = self._hashers.get(upload_id)
        return None if cached is None else (cached[0], cached[1].copy())

    def keep(self, upload_id: str, size: int, hasher: ResumableHash) -> None:
        """Remember ``hasher`` as the digest of the upload's first ``size`` bytes (owned from now on)."""
        with self._lock:
            self._hashers[upload_id] = (size, hasher)
            self._hashers.move_to_end(upload_id)
            while len(self._hashers) > self._size:
                self._hashers.popitem(last=False)

    def forget(self, upload_id: str) -> None:
        with self._lock:
            self._hashers.pop(upload_id, None)


#: What an entry costs besides its bytes (the bytes object, its digest string, the dict's node),
#: so that many tiny blobs cannot hold far more memory than the budget says.
ENTRY_OVERHEAD = 256


class RecentBlobs:
    """The bytes of small blobs (image configs, mostly) by digest, within a memory budget (LRU).

    Filled by pushes (a manifest push reads its config for the platform a moment after the
    config was pushed to this process) and by pulls from a store that streams (S3, Azure Blob),
    so a hot config costs no store request. Every entry was verified against its digest and
    content is addressed by digest, so an entry can never be stale; whether a repository holds
    the blob is still asked of the database on every request.
    """

    def __init__(self, budget: int = 8 * 1024 * 1024, max_bytes: int = 64 * 1024) -> None:
        self.budget = budget
        self.max_bytes = min(max_bytes, budget)
        self._used = 0
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, digest: str, data: bytes) -> None:
        """Remember ``data`` (verified to have ``digest``) if it is small enough."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._blobs.pop(digest, None)
            if old is not None:
                self._used -= len(old) + ENTRY_OVERHEAD
            self._blobs[digest] = data
            self._used += len(data) + ENTRY_OVERHEAD
            while self._used > self.budget:
                _, dropped = self._blobs.popitem(last=False)
                self._used -= len(dropped) + ENTRY_OVERHEAD

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._blobs.get(digest)
            if data is not None:
                self._blobs.move_to_end(digest)
            return data
