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


class RecentBlobs:
    """The bytes of the last small blobs this process stored (image configs, mostly), by digest.

    A manifest push reads its config blob for the platform; the config was usually pushed to
    this process a moment before, so it is here and the store need not be read. Content is
    addressed by digest, so an entry can never be stale.
    """

    def __init__(self, entries: int = 128, max_bytes: int = 16 * 1024) -> None:
        self._entries = entries
        self.max_bytes = max_bytes
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, digest: str, data: bytes) -> None:
        """Remember ``data`` (verified to have ``digest``) if it is small enough."""
        if len(data) > self.max_bytes or not self._entries:
            return
        with self._lock:
            self._blobs[digest] = data
            self._blobs.move_to_end(digest)
            while len(self._blobs) > self._entries:
                self._blobs.popitem(last=False)

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            return self._blobs.get(digest)
