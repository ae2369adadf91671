"""Throttling failed sign-ins: token buckets per client address and per user name, in memory.

Pure code (a clock is passed in). Every sign-in attempt takes a token from the client's bucket
and from the user name's *before* its password is checked, and a successful one gives them
back: so a wave of concurrent guesses cannot all pass the check before any has failed. An
empty bucket makes further sign-ins by that client, or against that user name, wait (``429``
with ``Retry-After``) — right passwords included, so guessing cannot go faster than the
refill rate. IPv6 clients are counted by their /64 (one home connection holds 2^64 addresses).

A user name and password that signed in successfully are remembered with the client (address or
/64) they came from (``SignedInCredentials``, a keyed hash, for ``REMEMBER_SECONDS`` after their
last sign-in): from that client they take no token and skip the user name's bucket, so guesses
against a name do not lock out its owner's running clients (OWASP's "device cookie", kept by the
server); they still wait while that client's own bucket is empty. From any other client they are
throttled as any sign-in, so a right password there cannot be told from a wrong one while the
name's bucket is empty. A sign-in the name's bucket refuses still costs its client a token.
Only the throttle is skipped: the password is still checked. Buckets and remembered credentials
are per process.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Buckets kept per kind; the least recently used are forgotten beyond this (a full bucket again).
MAX_KEYS = 100_000
#: How long a credential that signed in stays exempt from its user name's bucket.
REMEMBER_SECONDS = 24 * 3600
#: Remembered sign-ins kept per user name (its clients, and passwords while one is renewed).
REMEMBERED_PER_USER = 1_000


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

    def give_back(self, key: str, now: float) -> None:
        """Return one token taken by ``take`` (the attempt succeeded)."""
        bucket = self._current(key, now)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + 1)


class SignedInCredentials:
    """(client, user name, password) that signed in within ``remember_seconds``, as HMACs under a key
    made for this process (never the passwords). The least recently used beyond ``per_user`` of one
    user name are forgotten first (one account signing in from many addresses cannot push other
    users' sign-ins out), then beyond ``max_entries`` in all. The client is counted as the buckets
    count it (IPv6 by /64)."""

    def __init__(
        self,
        remember_seconds: float,
        clock: Callable[[], float],
        *,
        max_entries: int = MAX_KEYS,
        per_user: int = REMEMBERED_PER_USER,
    ) -> None:
        self.remember_seconds = remember_seconds
        self.max_entries = max_entries
        self.per_user = per_user
        self._clock = clock
        self._key = secrets.token_bytes(32)
        #: Every entry's user key, least recently used first; and each user's entries with their times.
        self._signed_in: OrderedDict[bytes, str] = OrderedDict()
        self._by_user: dict[str, OrderedDict[bytes, float]] = {}
        self._lock = threading.Lock()

    def _digest(self, client: str | None, username: str, password: str) -> bytes:
        parts = [client_bucket(client).encode(), username.encode()]
        message = b"".join(len(part).to_bytes(4, "big") + part for part in parts) + password.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def remember(self, client: str | None, username: str, password: str) -> None:
        """These credentials signed in just now from ``client``."""
        digest, now, user = self._digest(client, username, password), self._clock(), _user_key(username)
        with self._lock:
            entries = self._by_user.setdefault(user, OrderedDict())
            entries[digest] = now
            entries.move_to_end(digest)
            self._signed_in[digest] = user
            self._signed_in.move_to_end(digest)
            while len(entries) > self.per_user:
                self._drop(next(iter(entries)))
            while len(self._signed_in) > self.max_entries:
                self._drop(next(iter(self._signed_in)))

    def recalls(self, client: str | None, username: str, password: str) -> bool:
        """Whether these credentials signed in from ``client`` within the last ``remember_seconds``."""
        digest, now = self._digest(client, username, password), self._clock()
        with self._lock:
            user = self._signed_in.get(digest)
            if user is None:
                return False
            entries = self._by_user[user]
            if now - entries[digest] > self.remember_seconds:
                self._drop(digest)
                return False
            entries.move_to_end(digest)
            self._signed_in.move_to_end(digest)
            return True

    def forget(self, client: str | None, username: str, password: str) -> None:
        """These credentials no longer sign in (the password was renewed, the identity disabled)."""
        digest = self._digest(client, username, password)
        with self._lock:
            if digest in self._signed_in:
                self._drop(digest)

    def _drop(self, digest: bytes) -> None:
        user = self._signed_in.pop(digest)
        entries = self._by_user[user]
        del entries[digest]
        if not entries:
            del self._by_user[user]


class LoginThrottle:
    """Failed sign-ins per client address and per user name, and the credentials that signed in."""

    def __init__(
        self,
        *,
        per_client: int,
        per_user: int,
        refill_seconds: float,
        clock: Callable[[], float],
        remember_seconds: float = REMEMBER_SECONDS,
    ) -> None:
        self._clients = TokenBuckets(per_client, refill_seconds)
        self._users = TokenBuckets(per_user, refill_seconds * 2)
        self._clock = clock
        self._lock = threading.Lock()
        #: Credentials that signed in recently: they skip the user name's bucket (see the module doc).
        self.signed_in = SignedInCredentials(remember_seconds, clock)

    def attempt(self, username: str, client: str | None, *, signed_in_before: bool = False) -> int:
        """Start a sign-in: 0 and one token taken from each bucket, or the whole seconds to wait.

        ``signed_in_before`` (``signed_in.recalls`` said so for this client) takes no token from
        either bucket, but still waits while the client's bucket is empty: a neighbour behind the
        same address who guessed it empty cannot tell a right password from a wrong one either.
        A sign-in the user name's bucket refuses keeps its client's token spent: guessing against
        an emptied name still costs the guesser.
        """
        now = self._clock()
        client_key, user_key = client_bucket(client), _user_key(username)
        with self._lock:
            wait = self._clients.wait(client_key, now)
            if wait or signed_in_before:
                return math.ceil(wait)
            self._clients.take(client_key, now)
            if username:
                wait = self._users.wait(user_key, now)
                if wait:
                    return math.ceil(wait)
                self._users.take(user_key, now)
        return 0

    def succeeded(self, username: str, client: str | None, *, signed_in_before: bool = False) -> None:
        """The sign-in ``attempt`` started was right: give its tokens back (as ``attempt`` took them)."""
        if signed_in_before:
            return
        now = self._clock()
        with self._lock:
            self._clients.give_back(client_bucket(client), now)
            if username:
                self._users.give_back(_user_key(username), now)


def client_bucket(client: str | None) -> str:
    """The key a client address is counted under: IPv4 addresses alone, IPv6 ones by /64."""
    if not client:
        return "-"
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _user_key(username: str) -> str:
    return username.lower()[:256]
