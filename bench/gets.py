"""GET/HEAD load phase: manifest GET and HEAD by tag and a 4 KiB blob GET under closed-loop load.

Against Dockyard every request carries ``Authorization: Bearer <token>`` (a pull
token on bench/app, fetched before each run), so each one pays for the token
check; Distribution runs without auth and checks nothing.
"""

from __future__ import annotations

from harness import APP, Bench
from loadgen import LoadResult, run_headload, run_wrk
from registry import OCI_MANIFEST, pull_scope
from report import Target, log_figure


def small_gets(bench: Bench) -> None:
    """wrk (headload for HEAD) per workload and registry: req/s, p99 latency, server CPU/request."""
    p = bench.profile
    accept = {"Accept": OCI_MANIFEST}
    blob_path = f"/v2/{APP}/blobs/{bench.layer_digest}"
    workloads: list[tuple[str, str, str, dict[str, str]]] = [
        ("manifest_get", "manifest GET by tag", f"/v2/{APP}/manifests/latest", accept),
        ("manifest_head", "manifest HEAD by tag", f"/v2/{APP}/manifests/latest", accept),
        # with --redirect both registries answer 307 (wrk does not follow): the registry's share
        ("blob_get_4k", "4 KiB blob GET" + (" (307)" if bench.redirect else ""), blob_path, {}),
    ]
    for key, label, path, headers in workloads:
        rate = bench.figure(f"{key}_rps", label, "req/s", Target("distribution", ">=", 4.0))
        p99 = bench.figure(f"{key}_p99", f"{label} p99 latency", "ms")
        # 5x Distribution's CPU efficiency: a fifth of its server CPU per request, or less
        cpu = bench.figure(
            f"{key}_cpu", f"{label} server CPU/request", "ms", Target("distribution", "<=", 0.2)
        )
        store_requests = None
        if bench.store:  # a manifest GET should cost the store nothing (target 0)
            store_requests = bench.figure(
                f"s3_requests_{key}",
                f"S3 requests per {label}",
                "requests",
                Target("", "<=", 0) if key == "manifest_get" else None,
            )
        for rep in range(p.load_rounds):
            for server in bench.order(rep, bench.registries):
                auth = bench.bearer(server, [pull_scope(APP)], p.load_seconds)
                with bench.s3_requests(server) as count, bench.meter(server) as meter:
                    result = _load(bench, key, server.base + path, {**headers, **auth})
                if store_requests is not None:
                    store_requests.add(
                        server.name, count.total / max(result.requests, 1), by_type=dict(count.by_type)
                    )
                if result.errors or result.non_2xx:
                    bench.notes.append(
                        f"{label} on {server.label}: {result.errors} socket errors, "
                        f"{result.non_2xx} non-2xx answers"
                    )
                if result.non_2xx > result.requests / 100:  # 401s, say: fast refusals pass for a high rate
                    raise RuntimeError(
                        f"{label} on {server.label}: {result.non_2xx} of {result.requests} answers "
                        "were not 2xx (a refused token?)"
                    )
                rate.add(
                    server.name,
                    result.requests_per_s,
                    requests=result.requests,
                    errors=result.errors,
                    non_2xx=result.non_2xx,
                    p50_ms=result.p50_ms,
                )
                p99.add(server.name, result.p99_ms)
                cpu.add(server.name, meter.server_cpu / max(result.requests, 1) * 1000)
        for figure in (rate, p99, cpu, *([store_requests] if store_requests else [])):
            log_figure(figure)


def _load(bench: Bench, key: str, url: str, headers: dict[str, str]) -> LoadResult:
    p = bench.profile
    threads, connections, seconds = p.load_threads, p.load_connections, p.load_seconds
    if key.endswith("head"):  # wrk waits forever for the body a HEAD answer announces
        if bench.headload is None:
            raise RuntimeError("no C compiler to build bench/headload.c; HEAD cannot be measured with wrk")
        return run_headload(
            bench.headload, url, threads=threads, connections=connections, seconds=seconds, headers=headers
        )
    return run_wrk(url, threads=threads, connections=connections, seconds=seconds, headers=headers)
