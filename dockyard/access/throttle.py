"""Throttling failed sign-ins: token buckets per client address and per user name, in memory.

Pure code (a clock is passed in). Each failed sign-in takes a token from the client's bucket
and from the user name's; an empty bucket makes further sign-ins by that client, or against
that user name, wait (``429`` with ``Retry-After``) — right passwords included, so guessing
cannot go faster than the refill rate. Buckets are per process.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Buckets kept per kind; the least recently used are forgotten beyond this (a full bucket again).
MAX_KEYS = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Buckets of ``burst`` tokens, refilled by one every ``refill_seconds``."""

    def __init__(self, burst: int, refill_seconds: float, *, max_keys: int = MAX_KEYS) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _current(self, key: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) / self.refill_seconds)
        bucket.updated = now
        self._buckets.move_to_end(key)
        return bucket

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0 when it may now)."""
        bucket = self._current(key, now)
        if bucket is None or bucket.tokens >= 1:
            return 0.0
        return (1 - bucket.tokens) * self.refill_seconds

    def take(self, key: str, now: float) -> None:
        """Spend one token of ``key``'s bucket (it may go down to zero, not below)."""
        bucket = self._current(key, now)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        bucket.tokens = max(0.0, bucket.tokens - 1)


class LoginThrottle:
    """Failed sign-ins per client address and per user name."""

    def __init__(
        self,
        *,
        per_client: int,
        per_user: int,
        refill_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._clients = TokenBuckets(per_client, refill_seconds)
        self._users = TokenBuckets(per_user, refill_seconds * 2)
        self._clock = clock
        self._lock = threading.Lock()

    def retry_after(self, username: str, client: str | None) -> int:
        """Whole seconds to wait before this sign-in may be checked; 0 if it may be now."""
        now = self._clock()
        with self._lock:
            wait = max(self._clients.wait(client or "-", now), self._users.wait(_user_key(username), now))
        return math.ceil(wait)

    def failed(self, username: str, client: str | None) -> None:
        """Count one failed sign-in."""
        now = self._clock()
        with self._lock:
            self._clients.take(client or "-", now)
            if username:
                self._users.take(_user_key(username), now)


def _user_key(username: str) -> str:
    return username.lower()[:256]
