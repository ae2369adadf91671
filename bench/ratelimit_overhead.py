"""What the request-rate limits add per request, in-process: ``RateLimiter.check`` on its hot path.

    .venv/bin/python bench/ratelimit_overhead.py

A manifest GET by an identity draws from two buckets (the identity's reads, the registry's reads),
a referrers GET from four. The limiter runs on a throw-away SQLite database with rates the loop
never reaches, so after the first lease per bucket every check is the in-memory path. Prints µs
per check: minimum and median of seven rounds of 50,000 checks each.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.routing import Route

from dockyard.access.permissions import PULL, Principal
from dockyard.access.policy import Caller
from dockyard.db import Database
from dockyard.migrations import upgrade
from dockyard.ratelimits.services import REFERRERS_ROUTE, RateLimiter
from dockyard.tiers.table import Sku, tier_table

ROUNDS = 7
CHECKS = 50_000
RATES = {"read": {"registry": 600_000_000, "identity": 300_000_000}}
RATES["referrers"] = RATES["read"]


def request(path: str, route: Route) -> Request:
    return Request({"type": "http", "method": "GET", "path": path, "headers": [], "route": route})


async def measure(limiter: RateLimiter, incoming: Request, caller: Caller) -> list[float]:
    await limiter.check(incoming, caller, PULL)  # the first lease of each bucket
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(CHECKS):
            await limiter.check(incoming, caller, PULL)
        rounds.append((time.perf_counter() - started) / CHECKS * 1e6)
    return rounds


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        db = Database(f"sqlite:///{Path(folder) / 'bench.db'}", pool_size=2)
        upgrade(db)
        tier = tier_table({"Premium": {"rates": RATES}})[Sku.Premium]
        limiter = RateLimiter(db, lambda: tier)
        caller = Caller(principal=Principal("alice", "user", identity_id=7))
        manifest = request("/v2/app/manifests/v1", Route("/v2/{name:path}/manifests/{reference}", None))
        referrers = request("/v2/app/referrers/sha256:0", Route(REFERRERS_ROUTE, None))
        cases = (("manifest GET (2 buckets)", manifest), ("referrers GET (4 buckets)", referrers))
        for label, incoming in cases:
            rounds = anyio.run(measure, limiter, incoming, caller)
            print(f"{label}: min {min(rounds):.2f} µs, median {statistics.median(rounds):.2f} µs per check")
        print(f"database leases: {limiter.leases_taken}")
        db.dispose()


if __name__ == "__main__":
    main()
