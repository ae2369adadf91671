"""Push phases: blob pushes (monolithic and chunked, small and large) and image pushes."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from harness import APP, IMAGES, MB, PUSH, Bench, Meter, MiB
from registry import Client, image_config, image_manifest, push_scope, sha256_digest
from report import Target, log_figure


def blob_push(bench: Bench) -> None:
    """Blobs no registry has seen, each on a new connection, as one PUT or as PATCH chunks."""
    p = bench.profile
    for size, chunk, reps in (
        (p.small_blob, p.small_chunk, p.small_reps),
        (p.large_blob, p.large_chunk, p.large_reps),
    ):
        buffer = bytearray(os.urandom(size))
        for kind in ("monolithic", "chunked"):
            # on S3 the figure: 256 MiB at 2x Distribution's 35 MB/s
            ratio = 2.0 if bench.store and size == p.large_blob else 1.2
            figure = bench.figure(
                f"push_{kind}_{size // MiB}mib",
                f"{kind} push {size // MiB} MiB",
                "MB/s",
                Target("distribution", ">=", ratio),
            )
            requests_figure = None
            if bench.store:  # S3 requests per blob upload; the target is for one PutObject-sized blob
                small = size == p.small_blob and kind == "monolithic"
                requests_figure = bench.figure(
                    f"s3_requests_push_{kind}_{size // MiB}mib",
                    f"S3 requests per {kind} push {size // MiB} MiB",
                    "requests",
                    Target("", "<=", 4) if small else None,
                )
            cpu = {s.name: 0.0 for s in bench.registries}
            for server in bench.registries:  # one token for the whole series, outside the timer
                bench.fetch_token(server, [push_scope(PUSH)])
            os.sync()
            for rep in range(reps):
                for server in bench.order(rep, bench.registries):
                    digest = bench.unique(buffer)
                    if size >= 16 * MiB:
                        os.sync()  # start each large push with no dirty pages left by the previous one
                    client = bench.client(server)  # a new connection per push, as a new client would
                    with bench.s3_requests(server) as count, bench.meter(server) as meter:
                        if kind == "monolithic":
                            client.push_monolithic(PUSH, buffer, digest)
                            requests = 2
                        else:
                            requests = 2 + client.push_chunked(PUSH, buffer, digest, chunk)
                    client.close()
                    if requests_figure is not None:
                        requests_figure.add(server.name, count.total, **{"by_type": dict(count.by_type)})
                    cpu[server.name] += meter.server_cpu
                    figure.add(server.name, size / meter.elapsed / MB, requests_per_push=requests)
            for name, seconds in cpu.items():
                figure.detail[name]["server_cpu_ms_per_push"] = round(seconds / reps * 1000, 1)
            log_figure(figure)
            if requests_figure is not None:
                log_figure(requests_figure)


def image_push(bench: Bench) -> None:
    """One client pushes images one after another: a new config blob (POST, PUT) and its manifest."""
    p = bench.profile
    ratio = 2.0 if bench.store else 1.2  # on S3 the figure: 2x Distribution's 18 images/s
    figure = bench.figure(
        "image_push", "image push (config + manifest)", "images/s", Target("distribution", ">=", ratio)
    )
    for rep in range(p.image_push_rounds):
        for server in bench.order(rep, bench.registries):
            client = bench.client(server)
            if rep == 0:
                client.mount(IMAGES, bench.layer_digest, APP)
            bench.fetch_token(server, [push_scope(IMAGES)])
            pushed = 0
            with bench.meter(server) as meter:
                deadline = time.perf_counter() + p.image_push_seconds
                while time.perf_counter() < deadline:
                    number = bench.next_number()
                    config = image_config(f"image-{number}")
                    client.push_monolithic(IMAGES, config, sha256_digest(config))
                    manifest = image_manifest(config, bench.layer_digest, len(bench.layer))
                    client.put_manifest(IMAGES, f"v{number}", manifest)
                    pushed += 1
            client.close()
            figure.add(server.name, pushed / meter.elapsed, **_cpu_per_image(meter, pushed))
    log_figure(figure)


def _cpu_per_image(meter: Meter, pushed: int) -> dict[str, float]:
    """The server's CPU per image pushed, its database's (PostgreSQL) when it has one, and the
    load generator's (the same clients for every server, on the same cores)."""
    figures = {
        "server_cpu_ms_per_image": round(meter.server_cpu / max(pushed, 1) * 1000, 2),
        "client_cpu_ms_per_image": round(meter.client_cpu / max(pushed, 1) * 1000, 2),
    }
    if meter.database is not None:
        figures["database_cpu_ms_per_image"] = round(meter.database_cpu / max(pushed, 1) * 1000, 2)
    return figures


def _push_images(bench: Bench, client: Client, deadline: float, lock: threading.Lock) -> int:
    """Push images (config blob POST + PUT, then the manifest under a new tag) until ``deadline``."""
    pushed = 0
    while time.perf_counter() < deadline:
        with lock:
            number = bench.next_number()
        config = image_config(f"image-{number}")
        client.push_monolithic(IMAGES, config, sha256_digest(config))
        manifest = image_manifest(config, bench.layer_digest, len(bench.layer))
        client.put_manifest(IMAGES, f"v{number}", manifest)
        pushed += 1
    return pushed


def image_push_parallel(bench: Bench) -> None:
    """Several clients push images at once, each on its own connection, as a CI fleet does."""
    p = bench.profile
    clients = p.image_push_clients
    figure = bench.figure(
        "image_push_parallel", f"image push, {clients} clients", "images/s", Target("distribution", ">=", 1.5)
    )
    lock = threading.Lock()
    for rep in range(p.image_push_rounds):
        for server in bench.order(rep, bench.registries):
            if rep == 0:
                first = bench.client(server)
                first.mount(IMAGES, bench.layer_digest, APP)
                first.close()
            bench.fetch_token(server, [push_scope(IMAGES)])
            pool = [bench.client(server) for _ in range(clients)]
            with bench.meter(server) as meter, ThreadPoolExecutor(max_workers=clients) as executor:
                deadline = time.perf_counter() + p.image_push_seconds
                futures = [executor.submit(_push_images, bench, c, deadline, lock) for c in pool]
                pushed = sum(f.result() for f in futures)
            for client in pool:
                client.close()
            figure.add(server.name, pushed / meter.elapsed, **_cpu_per_image(meter, pushed))
    log_figure(figure)
