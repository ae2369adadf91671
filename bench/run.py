"""Dockyard vs CNCF Distribution (and nginx for blob pulls): the same workload against each.

    .venv/bin/python bench/run.py            # full run, about 5 minutes
    .venv/bin/python bench/run.py --quick    # smoke run, under a minute

Starts `dockyard serve`, Distribution (`docker-registry serve`) and nginx side by
side, each on a free port with its own folder under one work directory, loads
one server at a time, and prints each figure with the ratio to the reference
and the target. Results also go to bench/results/<timestamp>-<profile>.json.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import gets
import listings
import memory
import pulls
import pushes
from harness import FULL, QUICK, Bench
from report import document, environment, log, report

from tests.support.postgres import private_cluster

HERE = Path(__file__).resolve().parent

#: Tags in the tag list on --storage s3.
S3_TAGS = 2_000

PHASES = ("push", "pull", "image", "get", "listing", "memory")

#: What each phase named on the command line runs, in run order: (phase, step name, step).
STEPS: tuple[tuple[str, str, Callable[[Bench], None]], ...] = (
    ("push", "blob push", pushes.blob_push),
    ("pull", "blob pull", pulls.blob_pull),
    ("image", "image push", pushes.image_push),
    ("image", "image push, parallel clients", pushes.image_push_parallel),
    ("get", "manifest and small blob GET/HEAD", gets.small_gets),
    ("listing", "populate tags and repositories", listings.populate),
    ("listing", "listings", listings.listings),
    ("memory", "peak RSS", memory.peak_rss),
)


def run(bench: Bench, phases: set[str]) -> None:
    """Start the servers, give them the base image, run the chosen phases, stop the servers."""
    with bench.servers():
        with bench.phase("setup"):
            bench.setup()
        if bench.errors:
            return
        for phase, name, step in STEPS:
            if phase in phases:
                with bench.phase(name):
                    step(bench)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, short durations")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="parent folder for the servers' data (default: system temp)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' data and logs afterwards")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="run Dockyard on a private PostgreSQL cluster (fsync on) instead of SQLite",
    )
    parser.add_argument(
        "--storage",
        choices=("filesystem", "s3"),
        default="filesystem",
        help="s3: one SeaweedFS, both registries on it (a bucket each); pulls are held to SeaweedFS",
    )
    parser.add_argument(
        "--redirect",
        action="store_true",
        help="with --storage s3: blob GETs answer 307 to a presigned URL (Dockyard's storage_redirect, "
        "Distribution's redirect)",
    )
    parser.add_argument(
        "--no-access-log", action="store_true", help="run both registries without access logs"
    )
    parser.add_argument(
        "--rate-limits",
        action="store_true",
        help="Dockyard with its request-rate limits on, at rates the bench never reaches (default: off)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="Dockyard's HTTP worker processes (`dockyard serve --workers`)"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON results file (default: bench/results/<time>-<profile>.json)"
    )
    args = parser.parse_args(argv)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if args.redirect and args.storage != "s3":
        parser.error("--redirect needs --storage s3")
    if phases - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(phases - set(PHASES)))}")
    for tool in ("wrk", "curl", "docker-registry", "nginx"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            parser.error(f"{tool} is not installed (see bench/README.md)")

    profile = QUICK if args.quick else FULL
    if args.storage == "s3":  # Distribution writes several objects per tag: 10,000 take minutes
        profile = dataclasses.replace(profile, tags=min(profile.tags, S3_TAGS))
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="dockyard-bench-", dir=args.workdir))
    stamp = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    access_log = not args.no_access_log
    with contextlib.ExitStack() as stack:
        database_url = None
        if args.postgres:
            database_url = stack.enter_context(private_cluster(fsync=True))
        bench = Bench(
            profile,
            workdir,
            access_log=access_log,
            database_url=database_url,
            s3=args.storage == "s3",
            redirect=args.redirect,
            rate_limits=args.rate_limits,
            workers=args.workers,
        )
        bench.info["environment"] = environment()
        bench.info["database"] = "postgresql" if args.postgres else "sqlite"
        bench.info["storage"] = args.storage + (" with redirect" if args.redirect else "")
        bench.info["rate_limits"] = args.rate_limits
        bench.info["workers"] = args.workers
        log(
            f"Dockyard benchmark ({profile.name}, {bench.info['database']}, {bench.info['storage']}), "
            f"work directory {workdir}"
        )
        try:
            run(bench, phases)
        finally:
            if args.keep:
                log(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    report(bench, profile, elapsed, stamp, access_log)

    out = args.out or HERE / "results" / f"{stamp:%Y%m%d-%H%M%S}-{profile.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document(bench, elapsed, stamp, access_log, phases), indent=2) + "\n")
    print(f"results: {out}")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
