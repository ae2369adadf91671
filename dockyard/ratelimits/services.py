"""Request-rate limits: the policy check, the in-memory leases and the shared buckets they lease from.

The hot path (``check``) is a few dictionary look-ups on the event loop. Only when a process has no
leased tokens left for a key does it lease more: one short write transaction in a worker thread
(``_lease``), at most one in flight per key. A database error fails open: the request is admitted,
a warning is logged and ``dockyard_rate_limit_errors_total`` counts it, and the process admits up to
a bucket's capacity from an assumed lease until the next attempt (``LEASE_SECONDS`` later), so a
broken database costs one attempt per key per second rather than one per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import sqlalchemy as sa
from starlette.requests import Request
from starlette.types import Scope

from dockyard.access.permissions import Need
from dockyard.access.policy import Caller
from dockyard.access.throttle import TokenBuckets, client_bucket
from dockyard.asgi import run_sync
from dockyard.db import Database
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.ratelimits.buckets import (
    Grant,
    LocalLease,
    batch_size,
    per_second,
    refilled,
    retry_after,
    take_lease,
)
from dockyard.ratelimits.models import rate_buckets
from dockyard.tiers.services import CACHE_SECONDS
from dockyard.tiers.table import UNLIMITED, RateCategory, Tier

if TYPE_CHECKING:
    from dockyard.observability.metrics import Metrics

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WRITE_METHODS = frozenset({"PUT", "PATCH", "POST"})
DATA_PLANE = ("/v2/", "/acr/")
#: Where the token service (``/oauth2/token``, ``/oauth2/exchange``) lives: ``oauth`` requests.
OAUTH_PATH = "/oauth2/"
#: ``identity_key`` of every anonymous caller.
ANONYMOUS = "anonymous"
REFERRERS_ROUTE = "/v2/{name:path}/referrers/{digest}"
#: Rows untouched this long are full again (capacity is one minute's refill) and are deleted.
PRUNE_AFTER_SECONDS = 600.0
#: Local leases kept before expired ones are swept.
SWEEP_AT = 4096
#: One client address may use at most 1/CLIENT_SHARE of the registry's token-request rate.
CLIENT_SHARE = 2


@dataclass(frozen=True)
class Bucket:
    """One bucket a request draws from: its shared row's key and its size."""

    key: str
    category: RateCategory
    capacity: int


class RateLimiter:
    """Admits or throttles requests against the current tier's rates (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        tier: Callable[[], Tier],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self._tier_source = tier
        #: Wall-clock seconds: the shared rows' timestamps are compared across processes.
        self.clock = clock
        self._tier: Tier | None = None
        self._tier_until = 0.0
        self._leases: dict[str, LocalLease] = {}
        #: (categories, identity key) -> (the tier they were worked out for, the buckets)
        self._buckets: dict[tuple[tuple[RateCategory, ...], str | None], tuple[Tier, list[Bucket]]] = {}
        self.throttled: Any = None  # Counter by category, once metrics are attached
        self.errors: Any = None
        self.leases_taken = 0  # database leases this process made (tests, benchmarks)
        #: The caller's address (the policy's, X-Forwarded-For through trusted proxies; set by the room).
        self.client_ip: Callable[[Scope], str | None] = _peer
        #: Token requests per client address, in this process's memory: (capacity, buckets).
        self._clients: tuple[int, TokenBuckets] | None = None

    def attach_metrics(self, metrics: Metrics) -> None:
        """Count throttled requests and fail-open database errors in the app's Prometheus series."""
        self.throttled = metrics.counter(
            "dockyard_rate_limited_requests",
            "Requests refused with 429 TOOMANYREQUESTS by the request-rate limits, by category.",
            ("category",),
        )
        self.errors = metrics.counter(
            "dockyard_rate_limit_errors",
            "Leases the rate limiter could not take from the database (requests admitted: fail open).",
        )

    # -- the policy check ---------------------------------------------------------------------

    async def check(self, request: Request, caller: Caller | None, need: Need | None) -> None:
        """Admit the request or raise 429 TOOMANYREQUESTS with Retry-After.

        Identity buckets are charged first; the registry's only once the identity is admitted.
        A refused request gives back the tokens it took from the other buckets. A token request
        is checked twice: before sign-in (``caller`` None) against its address's share only, in
        memory; once signed in (or admitted as anonymous) against the identity's share and the
        registry's bucket, so strangers' requests, refused with 401, never draw from them.
        """
        if need is not None and need.control is not None:
            return  # the management API is not rate limited (nor is anything outside the data plane)
        tier = await self._current_tier()
        if tier is None:
            return
        if caller is None:
            self._client_share(request.scope, tier)
            return
        buckets = self.buckets(request, caller, tier)
        if not buckets:
            return
        taken: list[LocalLease] = []
        for bucket in buckets:
            lease, wait = await self._take(bucket)
            if lease is None:
                now = self.clock()
                for held in taken:
                    held.refund(now)
                self._refuse(bucket, wait)
            taken.append(lease)

    def buckets(self, request: Request, caller: Caller | None, tier: Tier) -> list[Bucket]:
        """The buckets ``request`` draws from, identity buckets first."""
        path = request.scope["path"]
        categories = (RateCategory.oauth,) if path.startswith(OAUTH_PATH) else categories_of(request.scope)
        if not categories:
            return []
        identity = identity_key(caller) if caller is not None else None
        cached = self._buckets.get((categories, identity))
        if cached is not None and cached[0] is tier:
            return cached[1]
        if len(self._buckets) >= SWEEP_AT:
            self._buckets.clear()
        mine: list[Bucket] = []
        registry: list[Bucket] = []
        for category in categories:
            rate = tier.rates.get(category)
            if rate is None:
                continue
            if identity is not None and rate.identity not in (None, UNLIMITED):
                mine.append(Bucket(f"{category}:identity:{identity}", category, rate.identity))
            elif identity is not None and category == RateCategory.oauth and rate.registry != UNLIMITED:
                # one identity's token requests (all anonymous callers' together): a share of the
                # registry's, so one signed-in flood, or anonymous pullers, leave the rest to others
                share = max(1, rate.registry // CLIENT_SHARE)
                mine.append(Bucket(f"{category}:identity:{identity}", category, share))
            if rate.registry != UNLIMITED:
                registry.append(Bucket(f"{category}:registry", category, rate.registry))
        found = self._buckets[categories, identity] = (tier, mine + registry)
        return found[1]

    def _client_share(self, scope: Scope, tier: Tier) -> None:
        """Token requests: one client address may use at most a share of the registry's rate.

        Counted before anyone is signed in, in this process's memory (no database write for a
        caller nobody knows; N processes allow N shares): a flood from one address, signed in or
        not, is cut here before it costs a password check.
        """
        rate = tier.rates.get(RateCategory.oauth)
        if rate is None or rate.registry == UNLIMITED:
            return
        capacity = max(1, rate.registry // CLIENT_SHARE)
        if self._clients is None or self._clients[0] != capacity:
            self._clients = (capacity, TokenBuckets(capacity, 60.0 / capacity))
        clients = self._clients[1]
        key = client_bucket(self.client_ip(scope))
        now = self.clock()
        wait = clients.wait(key, now)
        if wait > 0:
            bucket = Bucket(f"oauth:client:{key}", RateCategory.oauth, capacity)
            self._refuse(bucket, wait)
        clients.take(key, now)

    def _refuse(self, bucket: Bucket, wait: float) -> None:
        if self.throttled is not None:
            self.throttled.labels(bucket.category.value).inc()
        seconds = retry_after(wait)
        whose = (
            "this identity"
            if ":identity:" in bucket.key
            else "this client"
            if ":client:" in bucket.key
            else "the registry"
        )
        raise RegistryError(
            ErrorCode.TOOMANYREQUESTS,
            f"too many {bucket.category.value} requests for {whose} "
            f"(limit {bucket.capacity} per minute); retry in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )

    async def _current_tier(self) -> Tier | None:
        """The tier's rates, re-read (in a worker thread) every few seconds; the last one held if
        the database cannot be read (None before the first read succeeded)."""
        if self._tier is None or self.clock() >= self._tier_until:
            self._tier_until = self.clock() + CACHE_SECONDS  # meanwhile others use the one held
            try:
                self._tier = await run_sync(self._tier_source)
            except (sa.exc.SQLAlchemyError, OSError) as exc:  # fail open: no tier yet, no limits
                log.warning("rate limits: cannot read the tier (fail open): %s", str(exc).splitlines()[0])
                if self.errors is not None:
                    self.errors.inc()
        return self._tier

    # -- local leases -------------------------------------------------------------------------

    async def _take(self, bucket: Bucket) -> tuple[LocalLease | None, float]:
        """Spend a token of ``bucket`` (leasing more if needed): the lease, or None and the wait."""
        while True:
            lease = self._leases.get(bucket.key)
            if lease is None:
                if len(self._leases) >= SWEEP_AT:
                    self._sweep()
                lease = self._leases[bucket.key] = LocalLease()
            now = self.clock()
            if lease.take(now):
                return lease, 0.0
            if now < lease.blocked_until:
                return None, lease.blocked_until - now
            if lease.pending is not None:  # another request is leasing this key: wait for it
                assert isinstance(lease.pending, anyio.Event)
                await lease.pending.wait()
                continue
            done = lease.pending = anyio.Event()
            try:
                give_back = lease.leftover()
                try:
                    grant = await run_sync(self._lease, bucket, give_back)
                except (sa.exc.SQLAlchemyError, OSError) as exc:
                    grant = self._failed_open(bucket, exc)
                lease.granted(grant, self.clock())
            finally:
                lease.pending = None
                done.set()

    def _failed_open(self, bucket: Bucket, exc: Exception) -> Grant:
        log.warning(
            "rate limits: cannot lease %s from the database, admitting (fail open): %s",
            bucket.key,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        if self.errors is not None:
            self.errors.inc()
        return Grant(bucket.capacity, 0.0)  # for LEASE_SECONDS: one attempt per key per second

    def _sweep(self) -> None:
        now = self.clock()
        for key, lease in list(self._leases.items()):
            if lease.pending is None and now >= lease.expires and now >= lease.blocked_until:
                del self._leases[key]

    # -- the shared buckets (worker threads) ----------------------------------------------------

    def _lease(self, bucket: Bucket, give_back: int) -> Grant:
        """Take a batch of tokens from the shared row (one write transaction), handing back leftovers."""
        self.leases_taken += 1
        rate = per_second(bucket.capacity)
        want = batch_size(bucket.capacity)

        def work(conn: sa.Connection) -> Grant:
            now = self.clock()
            row = self._locked_row(conn, bucket.key)
            if row is None:
                conn.execute(
                    self.db.insert(rate_buckets)
                    .values(key=bucket.key, tokens=float(bucket.capacity), updated_at=now)
                    .on_conflict_do_nothing()
                )
                row = self._locked_row(conn, bucket.key)
                assert row is not None
            tokens, updated_at = row
            available = refilled(tokens, updated_at, now, bucket.capacity, rate)
            available = min(float(bucket.capacity), available + give_back)
            grant = take_lease(available, want, rate)
            if grant.tokens or give_back:
                conn.execute(
                    rate_buckets.update()
                    .where(rate_buckets.c.key == bucket.key)
                    .values(tokens=grant.tokens_left, updated_at=max(now, updated_at))
                )
            return grant

        return self.db.run_write(work, durable=False)

    @staticmethod
    def _locked_row(conn: sa.Connection, key: str) -> tuple[float, float] | None:
        query = sa.select(rate_buckets.c.tokens, rate_buckets.c.updated_at).where(rate_buckets.c.key == key)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        return None if row is None else (float(row[0]), float(row[1]))

    def prune(self) -> int:
        """Delete rows idle long enough to be full again (a missing row is a full bucket)."""
        cutoff = self.clock() - PRUNE_AFTER_SECONDS
        with self.db.write() as conn:
            return conn.execute(rate_buckets.delete().where(rate_buckets.c.updated_at < cutoff)).rowcount


def categories_of(scope: Scope) -> tuple[RateCategory, ...]:
    """What a data-plane request (``/v2/…``, ``/acr/…``) counts against, by its method (and route:
    referrers are reads too). Anything else (the management API) counts against nothing."""
    if not scope["path"].startswith(DATA_PLANE):
        return ()
    method = scope["method"]
    if method in READ_METHODS:
        if getattr(scope.get("route"), "path", None) == REFERRERS_ROUTE:
            return (RateCategory.read, RateCategory.referrers)
        return (RateCategory.read,)
    if method in WRITE_METHODS:
        return (RateCategory.write,)
    if method == "DELETE":
        return (RateCategory.delete,)
    return ()


def _peer(scope: Scope) -> str | None:
    peer = scope.get("client")
    return peer[0] if peer else None


def identity_key(caller: Caller) -> str:
    """Whose bucket a caller draws from: the identity's row id (every credential of the admin user
    shares it), ``anonymous`` for every anonymous caller, else the name."""
    if caller.token is not None:
        claims = caller.token.claims
        if caller.token.kind == "anonymous":
            return ANONYMOUS
        identity_id = claims.get("iid")
        return f"id:{identity_id}" if identity_id is not None else f"name:{caller.token.name}"
    principal = caller.principal
    if principal is None or principal.is_anonymous:
        return ANONYMOUS
    if principal.identity_id is not None:
        return f"id:{principal.identity_id}"
    return f"name:{principal.name}"
