"""Listing phases: populate many tags and repositories, then time the tag list and the catalog."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from harness import APP, REPOS, TAGS, Bench
from registry import (
    CATALOG_SCOPE,
    Client,
    listing_items,
    mount_scopes,
    parallel,
    pull_scope,
    push_scope,
    sha256_digest,
)
from report import Figure, Target, log_figure


def populate(bench: Bench) -> None:
    """Many tags on one manifest and many repositories sharing one blob, one registry at a time.

    With auth (Dockyard), the tag PUTs share one push token on the tags repository, and
    each mount needs its own token (push on the new repository, pull on bench/app), as
    docker would ask for; those tokens are fetched before the mount timer starts, on
    the same number of threads, and their rate is a row of its own.
    """
    p = bench.profile
    tags_rate = bench.figure("populate_tags", f"populate: tag PUT, {p.populate_threads} threads", "tags/s")
    repos_rate = bench.figure(
        "populate_repos", f"populate: blob mount, {p.populate_threads} threads", "repos/s"
    )
    for server in bench.registries:
        setup = bench.client(server)
        setup.mount(TAGS, bench.layer_digest, APP)
        setup.mount(TAGS, sha256_digest(bench.config), APP)
        setup.close()
        bench.fetch_token(server, [push_scope(TAGS)])

        def tag_job(name: str) -> Callable[[Client], None]:
            return lambda client: client.put_manifest(TAGS, name, bench.manifest)

        def mount_job(name: str) -> Callable[[Client], None]:
            return lambda client: client.mount(name, bench.layer_digest, APP)

        jobs = [tag_job(f"t{i:05d}") for i in range(p.tags)]
        with bench.meter(server) as meter:
            parallel(server.port, jobs, threads=p.populate_threads, auth=server.auth)
        tags_rate.add(server.name, p.tags / meter.elapsed)
        names = [f"{REPOS}{i:05d}" for i in range(p.repositories)]
        auth = server.auth
        if auth is not None:
            fetched, started = auth.fetched, time.perf_counter()
            with ThreadPoolExecutor(max_workers=p.populate_threads) as pool:
                list(pool.map(auth.token, [mount_scopes(name, APP) for name in names]))
            elapsed = time.perf_counter() - started
            tokens = bench.figure(
                "token_issue", f"token issue (GET /oauth2/token), {p.populate_threads} threads", "tokens/s"
            )
            tokens.add(server.name, (auth.fetched - fetched) / elapsed, tokens=auth.fetched - fetched)
            log_figure(tokens)
        jobs = [mount_job(name) for name in names]
        with bench.meter(server) as meter:
            parallel(server.port, jobs, threads=p.populate_threads, auth=server.auth)
        repos_rate.add(server.name, p.repositories / meter.elapsed)
    log_figure(tags_rate)
    log_figure(repos_rate)


def listings(bench: Bench) -> None:
    """Fetch the whole tag list and the whole catalog, following Link pages to the end.

    The timer covers the HTTP exchanges only; the pages are decoded and checked after
    it stops, so the client's JSON decoding (the same for both registries) is not in
    the figure. Server CPU per listing is its own row: the mean over the repetitions,
    since the kernel counts CPU time in 10 ms ticks and one listing takes a few.
    """
    p = bench.profile
    target = Target("distribution", "<=", 0.1)
    tags = bench.figure("list_tags", f"tag list, {p.tags:,} tags", "ms", target)
    # on S3 the figure: the catalog walk 100x faster than Distribution's LIST-per-folder walk
    catalog_target = Target("distribution", "<=", 0.01) if bench.store else target
    catalog_requests = (
        bench.figure("s3_requests_catalog", "S3 requests per catalog walk", "requests")
        if bench.store
        else None
    )
    tags_cpu = bench.figure("list_tags_cpu", "tag list server CPU/listing (mean)", "ms", mean=True)
    catalog = bench.figure("list_catalog", f"catalog, {p.repositories:,}+ repos", "ms", catalog_target)
    catalog_cpu = bench.figure("list_catalog_cpu", "catalog server CPU/listing (mean)", "ms", mean=True)
    counts: dict[str, int] = {}
    for rep in range(p.listing_reps):
        for server in bench.order(rep, bench.registries):
            client = bench.client(server)
            bench.fetch_token(server, [pull_scope(TAGS)])
            bench.fetch_token(server, [CATALOG_SCOPE])
            with bench.meter(server) as meter:
                pages = client.pages(f"/v2/{TAGS}/tags/list", [pull_scope(TAGS)])
            names = listing_items(pages, "tags")
            cpu_ms = round(meter.server_cpu * 1000)
            tags.add(server.name, meter.elapsed * 1000, pages=len(pages), server_cpu_ms=cpu_ms)
            tags_cpu.add(server.name, round(meter.server_cpu * 1000, 3))
            if len(names) != p.tags or len(set(names)) != p.tags:
                raise RuntimeError(f"{server.label} listed {len(names)} tags, not {p.tags}")
            with bench.s3_requests(server) as count, bench.meter(server) as meter:
                pages = client.pages("/v2/_catalog", [CATALOG_SCOPE])
            if catalog_requests is not None:
                catalog_requests.add(server.name, count.total, by_type=dict(count.by_type))
            names = listing_items(pages, "repositories")
            cpu_ms = round(meter.server_cpu * 1000)
            catalog.add(
                server.name,
                meter.elapsed * 1000,
                pages=len(pages),
                repositories=len(names),
                server_cpu_ms=cpu_ms,
            )
            catalog_cpu.add(server.name, round(meter.server_cpu * 1000, 3))
            client.close()
            counts[server.name] = len(names)
            ours = sum(1 for name in names if name.startswith(REPOS))
            if ours != p.repositories or len(set(names)) != len(names):
                raise RuntimeError(
                    f"{server.label} catalog holds {ours} of the {p.repositories} repositories"
                )
    if len(set(counts.values())) > 1:
        bench.notes.append(f"catalog sizes differ: {counts}")
    for figure in (tags, tags_cpu, catalog, catalog_cpu, *([catalog_requests] if catalog_requests else [])):
        log_figure(figure)
    log_figure(first_request(bench))


#: Seconds each server sits idle before ``first_request`` times a request, the same for every server.
IDLE_PAUSE = 0.2


def first_request(bench: Bench) -> Figure:
    """``GET /v2/`` on a new connection after ``IDLE_PAUSE``: the floor under the listings above.

    Each listing is the first request a server gets after the other server's work, and on a
    virtual machine whose idle vCPUs halt, waking the server's threads costs about a
    millisecond whatever the server does. This figure shows that cost for each server
    (a 2-byte or 401-sized answer), so a listing's time can be read against it.
    Measured after the listings, so it cannot warm them up.
    """
    p = bench.profile
    figure = bench.figure("first_request", "first request after a pause (GET /v2/)", "ms")
    for rep in range(p.listing_reps):
        for server in bench.order(rep, bench.registries):
            client = bench.client(server)
            bench.fetch_token(server, [])
            time.sleep(IDLE_PAUSE)  # the measured condition: an idle server, not synchronisation
            with bench.meter(server) as meter:
                client.request("GET", "/v2/")
            client.close()
            figure.add(server.name, meter.elapsed * 1000)
    return figure
