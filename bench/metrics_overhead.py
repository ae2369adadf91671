"""What the metrics add per request, in-process: the access-log middleware around a trivial app.

    .venv/bin/python bench/metrics_overhead.py            # values in this process's memory
    .venv/bin/python bench/metrics_overhead.py --multiprocess   # as `dockyard serve` runs them

Prints µs per request for: the bare app, the middleware timing only (access log off), and the
middleware recording metrics. The difference of the last two is the metrics' cost; the bare app
shows the floor. Minimum and median of seven rounds of 20,000 requests each.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

if "--multiprocess" in sys.argv:  # before prometheus_client is imported, as `dockyard serve` does
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()

import anyio
from prometheus_client import CollectorRegistry
from starlette.routing import Route

from dockyard.asgi import AccessLogMiddleware
from dockyard.observability.metrics import MANIFEST_ROUTE, RequestMetrics

ROUTE = Route(MANIFEST_ROUTE, lambda request: None)
SCOPE = {"type": "http", "method": "GET", "path": "/v2/a/manifests/v1", "headers": [], "client": ("::1", 1)}


async def app(scope, receive, send) -> None:
    scope["route"] = ROUTE
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"x" * 500})


async def receive():
    return {"type": "http.request", "body": b""}


async def send(message) -> None:
    return None


async def per_request(variant, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await variant(dict(SCOPE), receive, send)
    return (time.perf_counter() - started) / count * 1e6


async def main() -> None:
    multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
    metrics = RequestMetrics(None if multiprocess else CollectorRegistry())
    variants = {
        "bare app": app,
        "timing only": AccessLogMiddleware(app, log=False),
        "with metrics": AccessLogMiddleware(app, log=False, observer=metrics),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(7):
        for name, variant in variants.items():
            results[name].append(await per_request(variant, 20_000))
    print(f"mode: {'multiprocess' if multiprocess else 'in-memory'}")
    for name, values in results.items():
        print(f"{name:>13}: min {min(values):6.2f} µs  median {statistics.median(values):6.2f} µs")


if __name__ == "__main__":
    anyio.run(main)
