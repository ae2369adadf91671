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
