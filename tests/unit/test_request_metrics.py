"""Request metrics are tallied in memory and written in batches: a batch equals one write per request."""

from __future__ import annotations

import time

import anyio
from prometheus_client import CollectorRegistry
from starlette.routing import Route

from dockyard.observability.metrics import LATENCY_BUCKETS, MANIFEST_ROUTE, RequestMetrics

ROUTE = Route(MANIFEST_ROUTE, lambda request: None)
LABELS = {"route": "/v2/{name}/manifests/{reference}", "method": "GET"}


def scope(method: str = "GET") -> dict:
    return {"type": "http", "method": method, "path": "/v2/a/manifests/v1", "route": ROUTE}


def test_a_flushed_batch_equals_observing_each_request() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    durations = [0.0005, 0.001, 0.003, 0.003, 0.2, 59.0, 61.0, 3600.0]
    for seconds in durations:
        metrics.record(scope(), 200, 0, 500, seconds)
    metrics.record(scope("PUT"), 201, 700, 0, 0.01)
    metrics.flush()

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("dockyard_http_requests_total", **LABELS, status="200") == len(durations)
    assert sample("dockyard_http_request_duration_seconds_count", **LABELS) == len(durations)
    assert sample("dockyard_http_request_duration_seconds_sum", **LABELS) == sum(durations)
    for bound in (*LATENCY_BUCKETS, float("inf")):
        expected = sum(seconds <= bound for seconds in durations)
        le = "+Inf" if bound == float("inf") else str(bound)
        assert sample("dockyard_http_request_duration_seconds_bucket", **LABELS, le=le) == expected, le
    assert sample("dockyard_http_response_bytes_total", **LABELS) == 500 * len(durations)
    assert sample("dockyard_http_request_bytes_total", **LABELS) == 0  # GETs sent no body
    assert sample("dockyard_http_request_bytes_total", route=LABELS["route"], method="PUT") == 700
    assert sample("dockyard_manifest_pulls_total") == len(durations)
    assert sample("dockyard_manifest_pushes_total") == 1


def test_an_idle_process_writes_its_tally_without_another_request() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    metrics.FLUSH_SECONDS = 0.05

    async def main() -> float | None:
        metrics.record(scope(), 200, 0, 1, 0.001)
        assert registry.get_sample_value("dockyard_manifest_pulls_total") == 0  # tallied, not yet written
        deadline = time.monotonic() + 5
        while registry.get_sample_value("dockyard_manifest_pulls_total") == 0:
            assert time.monotonic() < deadline, "the flush timer never fired"
            await anyio.sleep(0.01)
        return registry.get_sample_value("dockyard_manifest_pulls_total")

    assert anyio.run(main) == 1
