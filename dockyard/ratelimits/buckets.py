"""The token-bucket and lease arithmetic, pure (no clock of its own, no I/O).

A shared bucket (one ``rate_buckets`` row per key) holds up to ``capacity`` tokens (one minute's
worth of requests) and refills continuously at ``per_second``. A process never spends the shared
row per request: it *leases* a batch of tokens (one row update), spends them in memory, and lets
what it did not spend lapse after ``LEASE_SECONDS`` (handing the remainder back on its next lease
of that key, if there is one). Every admitted request spent a token taken from the row, so the
registry-wide admitted count never exceeds what the bucket allows, give or take the tokens a
process leased up to ``LEASE_SECONDS`` before it spent them (see docs/rate-limits.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: How long leased tokens may be spent; afterwards they lapse (or go back with the next lease).
LEASE_SECONDS = 1.0
#: A lease takes at most this share of a bucket's capacity (and at least one token).
LEASE_SHARE = 50


def per_second(per_minute: int) -> float:
    """The refill rate of a bucket of ``per_minute`` requests."""
    return per_minute / 60.0


def batch_size(capacity: int) -> int:
    """How many tokens one lease asks for: 2% of the bucket, at least one."""
    return max(1, capacity // LEASE_SHARE)


def refilled(tokens: float, updated_at: float, now: float, capacity: int, rate: float) -> float:
    """A bucket's tokens at ``now``: ``tokens`` at ``updated_at`` plus the refill, capped at ``capacity``.

    A clock behind the row's (another process's clock, or a step back) adds nothing.
    """
    return min(float(capacity), tokens + max(0.0, now - updated_at) * rate)


def seconds_until_token(tokens: float, rate: float) -> float:
    """How long until a bucket holding ``tokens`` (< 1) has a whole token again."""
    return max(0.0, (1.0 - tokens) / rate)


def retry_after(seconds: float) -> int:
    """``Retry-After`` in whole seconds, never 0 (a client told 0 would retry at once)."""
    return max(1, math.ceil(seconds - 1e-9))


@dataclass(frozen=True)
class Grant:
    """What a lease got from the shared bucket: tokens granted, and when to try again if none."""

    tokens: int
    tokens_left: float
    wait_seconds: float = 0.0


def take_lease(available: float, want: int, rate: float) -> Grant:
    """Take up to ``want`` whole tokens from a bucket holding ``available`` (already refilled)."""
    granted = min(want, math.floor(available))
    if granted >= 1:
        return Grant(granted, available - granted)
    return Grant(0, available, seconds_until_token(available, rate))


class LocalLease:
    """One process's leased tokens for one key, spent in memory (on the event loop only)."""

    __slots__ = ("blocked_until", "expires", "pending", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.expires = 0.0
        self.blocked_until = 0.0
        self.pending: object | None = None  # the event a lease in flight sets

    def take(self, now: float) -> bool:
        """Spend one leased token if one is held and the lease is still good."""
        if self.tokens > 0 and now < self.expires:
            self.tokens -= 1
            return True
        return False

    def refund(self, now: float) -> None:
        """Give back a token ``take`` spent for a request that another bucket then refused."""
        if now < self.expires:
            self.tokens += 1

    def leftover(self) -> int:
        """Unspent tokens of an expired lease, to hand back to the shared bucket (then forgotten)."""
        left = self.tokens
        self.tokens = 0
        return left

    def granted(self, grant: Grant, now: float) -> None:
        """Hold what a lease got: its tokens for ``LEASE_SECONDS``, or a block until a token is due."""
        self.tokens = grant.tokens
        self.expires = now + LEASE_SECONDS
        self.blocked_until = now + grant.wait_seconds if grant.tokens == 0 else 0.0
