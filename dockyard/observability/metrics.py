"""Prometheus metrics: per-request counters recorded by the access-log middleware, state read at scrape.

Request metrics are labelled by route *template* (``/v2/{name}/manifests/{reference}``), method
and status, never by raw path, so the number of series stays bounded whatever clients send.

`dockyard serve` runs several granian worker processes; each counts its own requests. With
``Settings.metrics_dir`` set (`dockyard serve` sets it to a fresh ``/dev/shm/dockyard-metrics-<pid>-<random>``
and exports ``PROMETHEUS_MULTIPROC_DIR`` before the workers start), prometheus_client's
multiprocess mode keeps every worker's values in memory-mapped files there, and a scrape —
answered by whichever worker gets it — sums them. Without it (tests, embedded use) values live
in this app's own registry.

State metrics (storage used, webhook backlog, the job queue) are read from the database when
scraped, so every process reports the same registry-wide values: aggregate them with ``max``.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from dockyard.access.network import parse_address
from dockyard.access.permissions import MANAGE_READ
from dockyard.access.policy import Policy
from dockyard.asgi import run_sync
from dockyard.db import Database, as_utc, utcnow
from dockyard.registry.models import blobs
from dockyard.webhooks.models import deliveries

#: The manifest route: a 201 to PUT is a push, a 200 to GET a pull.
MANIFEST_ROUTE = "/v2/{name:path}/manifests/{reference}"
#: Seconds; from a cached manifest GET (about a millisecond) to a large blob upload.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Methods counted by name; anything else a client invents is counted as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The route label of a request no route matched (404s, mostly).
UNMATCHED = "unmatched"
#: Delivery states that are not finished; each is reported as a gauge.
OPEN_DELIVERY_STATES = ("pending", "delivering", "dead")

log = logging.getLogger(__name__)
_CONVERTER = re.compile(r"\{(\w+):\w+\}")


class JobQueueStats(Protocol):
    """What the job runtime's ``JobService.stats()`` is expected to return (see ``StateCollector``)."""

    queue_depth: int
    oldest_due_age_seconds: float | None


def route_label(route: BaseRoute | None) -> str:
    """The template of a matched route, converters dropped (``{name:path}`` → ``{name}``)."""
    path = getattr(route, "path", None)
    return _CONVERTER.sub(r"{\1}", path) if isinstance(path, str) else UNMATCHED


class _Tally:
    """What one (route, method, status) added since the last flush, and the series it goes to."""

    __slots__ = (
        "buckets",
        "count",
        "kind",
        "latency",
        "received",
        "received_bytes",
        "requests",
        "seconds",
        "sent",
        "sent_bytes",
    )

    def __init__(
        self, requests: Counter, latency: Histogram, received: Counter, sent: Counter, kind: Counter | None
    ) -> None:
        self.requests, self.latency, self.received, self.sent, self.kind = (
            requests,
            latency,
            received,
            sent,
            kind,
        )
        self.count = 0
        self.seconds = 0.0
        self.received_bytes = 0
        self.sent_bytes = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def flush(self) -> None:
        self.requests.inc(self.count)
        if self.kind is not None:
            self.kind.inc(self.count)
        if self.received_bytes:
            self.received.inc(self.received_bytes)
        if self.sent_bytes:
            self.sent.inc(self.sent_bytes)
        # Histogram.observe writes the sum and a bucket per observation; a batch adds to them once.
        # _sum and _buckets are prometheus_client's value objects (the API tests read them back).
        self.latency._sum.inc(self.seconds)
        for bucket, count in zip(self.latency._buckets, self.buckets, strict=True):
            if count:
                bucket.inc(count)


class RequestMetrics:
    """The per-request series; ``record`` is called once per request by ``AccessLogMiddleware``.

    ``record`` only adds to in-memory tallies (a dict lookup and a few additions); they are written
    to the Prometheus series at most FLUSH_SECONDS later — by a timer on the event loop, by the next
    request once that time has passed, and before every scrape. In multiprocess mode each write is
    a locked write to a memory-mapped file: written per request, that cost about 7 µs; tallied,
    0.7 µs (bench/metrics_overhead.py). A worker that dies loses at most its last FLUSH_SECONDS
    of counts.
    """

    FLUSH_SECONDS = 1.0

    def __init__(self, registry: CollectorRegistry | None) -> None:
        labels = ("route", "method")
        self.requests = Counter(
            "dockyard_http_requests",
            "HTTP requests answered, by route template, method and status.",
            (*labels, "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "dockyard_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.received = Counter(
            "dockyard_http_request_bytes", "Request body bytes received.", labels, registry=registry
        )
        self.sent = Counter(
            "dockyard_http_response_bytes", "Response body bytes sent.", labels, registry=registry
        )
        self.pushes = Counter(
            "dockyard_manifest_pushes", "Manifests pushed (PUT answered 201).", registry=registry
        )
        self.pulls = Counter(
            "dockyard_manifest_pulls", "Manifests pulled (GET answered 200).", registry=registry
        )
        self.cache = Counter(
            "dockyard_cache_upstream",
            "Pull-through cache outcomes: manifests_fetched, blobs_fetched, checks, stale_served, "
            "upstream_errors.",
            ("outcome",),
            registry=registry,
        )
        self._bounds = LATENCY_BUCKETS
        # (id(route), method, status) -> the labelled series; labels() takes a lock and builds a key.
        self._series: dict[tuple[int, str, int], tuple[Counter, Histogram, Counter, Counter, Counter | None]]
        self._series = {}
        self._pending: dict[tuple[int, str, int], _Tally] = {}
        self._flush_at = 0.0

    def record(self, scope: Scope, status: int, received: int, sent: int, seconds: float) -> None:
        """Count one answered request."""
        route = scope.get("route")
        key = (id(route), scope["method"], status)  # routes are unhashable; each lives as long as the app
        tally = self._pending.get(key)
        if tally is None:
            if not self._pending:
                self._start_window()
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = self._labelled(route, scope["method"], status)
            tally = self._pending[key] = _Tally(*series)
        tally.count += 1
        tally.seconds += seconds
        tally.received_bytes += received
        tally.sent_bytes += sent
        tally.buckets[bisect.bisect_left(self._bounds, seconds)] += 1
        if time.monotonic() >= self._flush_at:
            self.flush()

    def _start_window(self) -> None:
        self._flush_at = time.monotonic() + self.FLUSH_SECONDS
        try:
            asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)
        except RuntimeError:  # no event loop here: the next request or scrape flushes
            return

    def flush(self) -> None:
        """Write the tallies to the Prometheus series (on the thread that records)."""
        pending, self._pending = self._pending, {}
        for tally in pending.values():
            tally.flush()

    def _labelled(
        self, route: BaseRoute | None, method: str, status: int
    ) -> tuple[Counter, Histogram, Counter, Counter, Counter | None]:
        label = route_label(route)
        method_label = method if method in KNOWN_METHODS else "other"
        kind = None
        if getattr(route, "path", None) == MANIFEST_ROUTE:
            if method == "PUT" and status == 201:
                kind = self.pushes
            elif method == "GET" and status == 200:
                kind = self.pulls
        return (
            self.requests.labels(label, method_label, str(status)),
            self.latency.labels(label, method_label),
            self.received.labels(label, method_label),
            self.sent.labels(label, method_label),
            kind,
        )


class StateCollector(Collector):
    """Registry-wide state read from the database (a few aggregate queries), at most once per
    ``reuse_seconds``: a scrape flood costs the database one read per window, not one per scrape.

    ``job_stats`` is the hook for the job runtime: pass ``JobService.stats`` (returning a
    ``JobQueueStats``) and the queue depth and oldest due job's age are reported too.
    """

    def __init__(
        self,
        db: Database,
        job_stats: Callable[[], JobQueueStats] | None = None,
        *,
        reuse_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.job_stats = job_stats
        self.reuse_seconds = reuse_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self._clock()
            if self._last is None or now - self._last[0] >= self.reuse_seconds:
                self._last = (now, list(self._collect()))
            return iter(self._last[1])

    def _collect(self) -> Iterator[Metric]:
        try:
            state = list(self._read())
        except (sa.exc.SQLAlchemyError, OSError) as exc:  # the request series are still worth a scrape
            log.warning("metrics: cannot read the registry's state: %s", str(exc).splitlines()[0])
            state = []
        yield _gauge(
            "dockyard_state_up", "1 if the database answered this scrape's state queries.", bool(state)
        )
        yield from state
        if self.job_stats is not None and state:
            try:
                stats = self.job_stats()
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                log.warning("metrics: cannot read the job queue: %s", str(exc).splitlines()[0])
                return
            yield _gauge("dockyard_jobs_queue_depth", "Background jobs waiting to run.", stats.queue_depth)
            yield _gauge(
                "dockyard_jobs_oldest_due_seconds",
                "How long the oldest due job has waited (0 when none is due).",
                stats.oldest_due_age_seconds or 0.0,
            )

    def _read(self) -> Iterator[Metric]:
        now = utcnow()
        with self.db.read() as conn:
            count, used = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(blobs.c.size), 0)).where(
                    blobs.c.state == "live"  # not what garbage collection is deleting or deleted
                )
            ).one()
            by_state = dict(
                conn.execute(
                    sa.select(deliveries.c.status, sa.func.count())
                    .where(deliveries.c.status.in_(OPEN_DELIVERY_STATES))
                    .group_by(deliveries.c.status)
                ).all()
            )
            oldest: datetime | None = conn.execute(
                sa.select(sa.func.min(deliveries.c.created_at)).where(
                    deliveries.c.status.in_(("pending", "delivering"))
                )
            ).scalar_one()
        yield _gauge("dockyard_storage_blobs", "Blobs stored (each digest once).", count)
        yield _gauge("dockyard_storage_used_bytes", "Sum of the sizes of the stored blobs.", used)
        states = GaugeMetricFamily(
            "dockyard_webhook_deliveries",
            "Unfinished webhook deliveries by state (dead: retries exhausted, i.e. failed).",
            labels=["state"],
        )
        for state in OPEN_DELIVERY_STATES:
            states.add_metric([state], by_state.get(state, 0))
        yield states
        age = (now - as_utc(oldest)).total_seconds() if oldest is not None else 0.0
        yield _gauge(
            "dockyard_webhook_oldest_pending_seconds",
            "Age of the oldest delivery not yet delivered (0 when none waits).",
            max(age, 0.0),
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class Metrics:
    """The request series and the scrape: one per app, built from Settings by the app factory."""

    def __init__(
        self,
        db: Database,
        multiprocess_dir: Path | None = None,
        *,
        job_stats: Callable[[], JobQueueStats] | None = None,
        state_seconds: float = 5.0,
    ) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.state = StateCollector(db, job_stats, reuse_seconds=state_seconds)
        if multiprocess_dir is not None:
            if not getattr(values.ValueClass, "_multiprocess", False):
                raise RuntimeError(
                    "metrics_dir is set but prometheus_client is not in multiprocess mode: "
                    "PROMETHEUS_MULTIPROC_DIR must be set before the process imports it"
                )
            self._own = None
        else:
            self._own = CollectorRegistry(auto_describe=True)
        self.requests = RequestMetrics(self._own)

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        """A counter of a room's own (e.g. throttled requests), scraped with the rest."""
        return Counter(name, documentation, labels, registry=self._own)

    def render(self) -> bytes:
        """The Prometheus text exposition of every series (reads the database)."""
        registry = CollectorRegistry(auto_describe=False)
        if self._own is not None:
            registry.register(_Forward(self._own))
        else:
            MultiProcessCollector(registry, str(self.multiprocess_dir))
        registry.register(self.state)
        return generate_latest(registry)


class _Forward(Collector):
    """Another registry's samples, so the app's own registry and the state share one scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return self.registry.collect()


class MetricsRoutes:
    """``GET /metrics``: without credentials from ``metrics_networks``, else for registry readers."""

    def __init__(self, metrics: Metrics, policy: Policy, networks: list[str]) -> None:
        self.metrics = metrics
        self.policy = policy
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def routes(self) -> list[BaseRoute]:
        return [Route("/metrics", self.scrape, methods=["GET"])]

    def allowed_without_credentials(self, scope: Scope) -> bool:
        """Whether the client (behind trusted proxies: the forwarded address) is in metrics_networks."""
        client = self.policy.client_ip(scope)
        address = parse_address(client) if client else None
        return address is not None and any(
            address in net for net in self.networks if net.version == address.version
        )

    async def scrape(self, request: Request) -> Response:
        if not self.allowed_without_credentials(request.scope):
            await self.policy.authorize(request, MANAGE_READ, None)
        self.metrics.requests.flush()  # this process's latest (others flush within a second)
        body = await run_sync(self.metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
