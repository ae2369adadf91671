"""Pull phase: the large blob with curl from both registries and, as the ceiling, from nginx.

On ``--storage s3`` the ceiling is SeaweedFS itself (a presigned GET of Dockyard's object),
and with ``--redirect`` curl follows the registries' 307 to the store (``-L``).
"""

from __future__ import annotations

from harness import MB, PULL, Bench, MiB
from loadgen import curl_pull
from registry import pull_scope
from report import Target, log_figure
from servers import Server

#: How long the token curl sends must stay valid: longer than any one curl run (4 GiB at 10 MB/s).
PULL_TOKEN_SECONDS = 600.0


def blob_pull(bench: Bench) -> None:
    """One curl stream, then ``pull_streams`` at once, each fetching the blob repeatedly."""
    p = bench.profile
    size = len(bench.pull_blob)
    reference = bench.pull_reference
    targets: list[Server] = [bench.dockyard, bench.distribution, reference]
    urls = {
        bench.dockyard.name: f"{bench.dockyard.base}/v2/{PULL}/blobs/{bench.pull_digest}",
        bench.distribution.name: f"{bench.distribution.base}/v2/{PULL}/blobs/{bench.pull_digest}",
        reference.name: (
            bench.store.presigned_blob_url(bench.pull_digest) if bench.store else f"{bench.nginx.base}/blob"
        ),
    }
    follow = bench.redirect
    for server in targets:  # warm the page cache and each server's code path
        curl_pull(
            urls[server.name],
            streams=1,
            repeats=1,
            expected_size=size,
            headers=_auth(bench, server),
            follow=follow,
        )
    target = Target(reference.name, ">=", 0.9)
    for streams, repeats in ((1, p.pull_repeats_single), (p.pull_streams, p.pull_repeats_parallel)):
        plural = "stream" if streams == 1 else "streams"
        figure = bench.figure(f"pull_{streams}", f"blob pull {streams} {plural}", "MB/s", target)
        cpu = {s.name: 0.0 for s in targets}
        for rep in range(p.pull_reps):
            for server in bench.order(rep, targets):
                headers = _auth(bench, server)
                with bench.meter(server) as meter:
                    rate = curl_pull(
                        urls[server.name],
                        streams=streams,
                        repeats=repeats,
                        expected_size=size,
                        headers=headers,
                        follow=follow,
                    )
                cpu[server.name] += meter.server_cpu
                figure.add(server.name, rate / MB)
        gib = p.pull_reps * streams * repeats * size / (1024 * MiB)
        for name, seconds in cpu.items():
            figure.detail.setdefault(name, {})["server_cpu_s_per_gib"] = round(seconds / gib, 3)
        log_figure(figure)


def _auth(bench: Bench, server: Server) -> dict[str, str]:
    """Dockyard's Bearer header for curl (nginx and Distribution: none), good for one pull run."""
    return bench.bearer(server, [pull_scope(PULL)], PULL_TOKEN_SECONDS)
