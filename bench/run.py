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
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import LoadResult, build_headload, curl_pull, run_headload, run_wrk
from registry import OCI_MANIFEST, Client, image_config, image_manifest, parallel, sha256_digest
from servers import Distribution, Dockyard, Nginx, Server, machine_busy_seconds, own_cpu_seconds

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
MB = 1_000_000

APP = "bench/app"  # the image every GET workload reads
PULL = "bench/pull"  # holds the large blob for pulls
PUSH = "bench/push"  # target of the blob push workloads
IMAGES = "bench/images"  # target of the image push workload
TAGS = "bench/tags"  # the repository with many tags
REPOS = "bench/repos/r"  # prefix of the many repositories

#: Other work on the machine above this share of all CPUs makes a phase's figures suspect.
BUSY_MACHINE = 0.15
#: Measurements shorter than this (seconds) do not count towards the other-load estimate.
MIN_METERED = 0.25


@dataclass(frozen=True)
class Profile:
    """Sizes, repetitions and durations of one run."""

    name: str
    small_blob: int
    large_blob: int
    small_chunk: int
    large_chunk: int
    small_reps: int
    large_reps: int
    pull_reps: int
    pull_repeats_single: int
    pull_repeats_parallel: int
    image_push_seconds: float
    image_push_rounds: int
    load_seconds: float
    load_rounds: int
    tags: int
    repositories: int
    listing_reps: int
    populate_threads: int = 8
    load_threads: int = 2
    load_connections: int = 64
    pull_streams: int = 8


FULL = Profile(
    name="full",
    small_blob=1 * MiB,
    large_blob=256 * MiB,
    small_chunk=256 * 1024,
    large_chunk=16 * MiB,
    small_reps=25,
    large_reps=5,
    pull_reps=5,
    pull_repeats_single=4,
    pull_repeats_parallel=2,
    image_push_seconds=4.0,
    image_push_rounds=3,
    load_seconds=8.0,
    load_rounds=3,
    tags=10_000,
    repositories=2_000,
    listing_reps=5,
)

QUICK = Profile(
    name="quick",
    small_blob=1 * MiB,
    large_blob=32 * MiB,
    small_chunk=256 * 1024,
    large_chunk=8 * MiB,
    small_reps=5,
    large_reps=2,
    pull_reps=1,
    pull_repeats_single=2,
    pull_repeats_parallel=1,
    image_push_seconds=1.5,
    image_push_rounds=1,
    load_seconds=2.0,
    load_rounds=1,
    tags=1_000,
    repositories=200,
    listing_reps=2,
)

PHASES = ("push", "pull", "image", "get", "listing", "memory")


@dataclass
class Target:
    """What Dockyard should reach: ``value(dockyard) / value(reference) <op> ratio``."""

    reference: str
    op: str  # ">=" or "<="
    ratio: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.ratio if self.op == ">=" else ratio <= self.ratio

    def __str__(self) -> str:
        name = {"distribution": "Dist", "nginx": "nginx"}[self.reference]
        return f"{self.op}{self.ratio:g}x {name}"


@dataclass
class Figure:
    """One measured quantity: samples and their median per server, and the target it is held to."""

    key: str
    label: str
    unit: str
    target: Target | None = None
    values: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    detail: dict[str, dict[str, object]] = field(default_factory=dict)

    def add(self, server: str, sample: float, **detail: object) -> None:
        self.samples.setdefault(server, []).append(sample)
        self.values[server] = statistics.median(self.samples[server])
        if detail:
            self.detail.setdefault(server, {}).update(detail)

    def ratio(self, reference: str) -> float | None:
        mine, theirs = self.values.get("dockyard"), self.values.get(reference)
        if mine is None or not theirs:
            return None
        return mine / theirs

    def target_met(self) -> bool | None:
        if self.target is None:
            return None
        ratio = self.ratio(self.target.reference)
        return None if ratio is None else self.target.met(ratio)


class Meter:
    """Wall time and server CPU of one measurement, and how busy the rest of the machine was.

    ``other_load`` is the share of all CPUs used by processes that are neither the
    server under test nor this benchmark and its load generators: other work on a
    shared machine (the idle servers count too, at about nothing).
    """

    def __init__(self, server: Server, record: list[tuple[float, float]]) -> None:
        self.server = server
        self.record = record
        self.elapsed = self.server_cpu = self.other_load = 0.0

    def __enter__(self) -> Meter:
        self._cpu = self.server.tree.cpu_seconds()
        self._busy = machine_busy_seconds()
        self._own = own_cpu_seconds()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self._started
        self.server_cpu = self.server.tree.cpu_seconds() - self._cpu
        other = machine_busy_seconds() - self._busy - self.server_cpu - (own_cpu_seconds() - self._own)
        self.other_load = max(other, 0.0) / (self.elapsed * (os.cpu_count() or 1))
        if self.elapsed >= MIN_METERED:  # shorter ones are mostly CPU-tick rounding
            self.record.append((self.elapsed, self.other_load))


class Bench:
    """The servers, the workload, and the figures it produced."""

    def __init__(self, profile: Profile, workdir: Path, *, access_log: bool, phases: set[str]) -> None:
        self.profile = profile
        self.workdir = workdir
        self.phases = phases
        self.dockyard = Dockyard(workdir / "dockyard", access_log=access_log)
        self.distribution = Distribution(workdir / "distribution", access_log=access_log)
        self.nginx = Nginx(workdir / "nginx")
        self.registries: list[Server] = [self.dockyard, self.distribution]
        self.figures: dict[str, Figure] = {}
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.info: dict[str, object] = {}
        self.other_load: dict[str, list[tuple[float, float]]] = {}
        self.headload: Path | None = None
        self._phase = ""
        self._counter = 0
        # The image every registry holds: a 4 KiB layer and a config; "latest" points at it.
        self.layer = os.urandom(4096)
        self.layer_digest = sha256_digest(self.layer)
        self.config = image_config("app")
        self.manifest = image_manifest(self.config, self.layer_digest, len(self.layer))
        self.manifest_digest = sha256_digest(self.manifest)
        self.pull_blob = b""
        self.pull_digest = ""

    # -- bookkeeping ------------------------------------------------------------------------

    def figure(self, key: str, label: str, unit: str, target: Target | None = None) -> Figure:
        if key not in self.figures:
            self.figures[key] = Figure(key, label, unit, target)
        return self.figures[key]

    @staticmethod
    def order(rep: int, servers: list[Server]) -> list[Server]:
        """Alternate which server goes first, so drift in machine load hits both alike."""
        return servers if rep % 2 == 0 else list(reversed(servers))

    def meter(self, server: Server) -> Meter:
        return Meter(server, self.other_load.setdefault(self._phase, []))

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        self._phase = name
        log(f"== {name}")
        try:
            yield
        except Exception as exc:
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log(f"!! {name} failed: {exc}")
            traceback.print_exc(file=sys.stderr)
        log(f"   {name} took {time.perf_counter() - started:.1f}s")

    def other_load_by_phase(self) -> dict[str, float]:
        """Time-weighted share of the machine other processes used during each phase's measurements."""
        shares = {}
        for phase, record in self.other_load.items():
            total = sum(elapsed for elapsed, _ in record)
            if total:
                shares[phase] = sum(elapsed * load for elapsed, load in record) / total
        return shares

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> None:
        self.headload = build_headload(self.workdir)
        servers = [*self.registries, self.nginx]
        try:
            for server in servers:
                server.start()
                log(f"{server.label} on {server.base} (pid {server.tree.pid}), data in {server.folder}")
            self.info["idle_rss_kib"] = {s.name: s.tree.memory_kib("VmRSS") for s in servers}
            with self.phase("setup"):
                self.setup()
            if self.errors:
                return
            if "push" in self.phases:
                with self.phase("blob push"):
                    self.blob_push()
            if "pull" in self.phases:
                with self.phase("blob pull"):
                    self.blob_pull()
            if "image" in self.phases:
                with self.phase("image push"):
                    self.image_push()
            if "get" in self.phases:
                with self.phase("manifest and small blob GET/HEAD"):
                    self.small_gets()
            if "listing" in self.phases:
                with self.phase("populate tags and repositories"):
                    self.populate()
                with self.phase("listings"):
                    self.listings()
            if "memory" in self.phases:
                with self.phase("peak RSS"):
                    self.memory()
        finally:
            self.info["load_average_at_end"] = os.getloadavg()
            for server in servers:
                server.stop()

    def setup(self) -> None:
        """Give each registry the base image and the large blob; nginx gets the same blob as a file."""
        self.pull_blob = os.urandom(self.profile.large_blob)
        self.pull_digest = sha256_digest(self.pull_blob)
        (self.nginx.folder / "www" / "blob").write_bytes(self.pull_blob)
        for server in self.registries:
            client = Client(server.port)
            client.push_monolithic(APP, self.layer, self.layer_digest)
            client.push_monolithic(APP, self.config, sha256_digest(self.config))
            client.put_manifest(APP, "latest", self.manifest)
            reply = client.get_manifest(APP, "latest")
            if reply.body != self.manifest or reply.headers["Docker-Content-Digest"] != self.manifest_digest:
                raise RuntimeError(f"{server.label} does not return the manifest it was given")
            reply = client.get_manifest(APP, "latest", method="HEAD")
            if reply.body or reply.headers["Docker-Content-Digest"] != self.manifest_digest:
                raise RuntimeError(f"{server.label} answers HEAD on the manifest wrongly")
            if client.get_blob(APP, self.layer_digest) != self.layer:
                raise RuntimeError(f"{server.label} does not return the blob it was given")
            client.push_monolithic(PULL, self.pull_blob, self.pull_digest)
            client.close()

    def _unique(self, buffer: bytearray) -> str:
        """Make ``buffer`` a blob no registry has seen yet; its digest."""
        self._counter += 1
        buffer[:16] = f"{self._counter:016d}".encode()
        return sha256_digest(buffer)

    def blob_push(self) -> None:
        p = self.profile
        for size, chunk, reps in (
            (p.small_blob, p.small_chunk, p.small_reps),
            (p.large_blob, p.large_chunk, p.large_reps),
        ):
            buffer = bytearray(os.urandom(size))
            for kind in ("monolithic", "chunked"):
                figure = self.figure(
                    f"push_{kind}_{size // MiB}mib",
                    f"{kind} push {size // MiB} MiB",
                    "MB/s",
                    Target("distribution", ">=", 1.2),
                )
                cpu = {s.name: 0.0 for s in self.registries}
                os.sync()
                for rep in range(reps):
                    for server in self.order(rep, self.registries):
                        digest = self._unique(buffer)
                        if size >= 16 * MiB:
                            os.sync()  # start each large push with no dirty pages left by the previous one
                        client = Client(server.port)  # a new connection per push, as a new client would
                        with self.meter(server) as meter:
                            if kind == "monolithic":
                                client.push_monolithic(PUSH, buffer, digest)
                                requests = 2
                            else:
                                requests = 2 + client.push_chunked(PUSH, buffer, digest, chunk)
                        client.close()
                        cpu[server.name] += meter.server_cpu
                        figure.add(server.name, size / meter.elapsed / MB, requests_per_push=requests)
                for name, seconds in cpu.items():
                    figure.detail[name]["server_cpu_ms_per_push"] = round(seconds / reps * 1000, 1)
                log_figure(figure)

    def blob_pull(self) -> None:
        p = self.profile
        size = len(self.pull_blob)
        targets: list[Server] = [self.dockyard, self.distribution, self.nginx]
        urls = {
            self.dockyard.name: f"{self.dockyard.base}/v2/{PULL}/blobs/{self.pull_digest}",
            self.distribution.name: f"{self.distribution.base}/v2/{PULL}/blobs/{self.pull_digest}",
            self.nginx.name: f"{self.nginx.base}/blob",
        }
        for server in targets:  # warm the page cache and each server's code path
            curl_pull(urls[server.name], streams=1, repeats=1, expected_size=size)
        target = Target("nginx", ">=", 0.9)
        for streams, repeats in ((1, p.pull_repeats_single), (p.pull_streams, p.pull_repeats_parallel)):
            plural = "stream" if streams == 1 else "streams"
            figure = self.figure(f"pull_{streams}", f"blob pull {streams} {plural}", "MB/s", target)
            cpu = {s.name: 0.0 for s in targets}
            for rep in range(p.pull_reps):
                for server in self.order(rep, targets):
                    with self.meter(server) as meter:
                        rate = curl_pull(
                            urls[server.name], streams=streams, repeats=repeats, expected_size=size
                        )
                    cpu[server.name] += meter.server_cpu
                    figure.add(server.name, rate / MB)
            gib = p.pull_reps * streams * repeats * size / (1024 * MiB)
            for name, seconds in cpu.items():
                figure.detail.setdefault(name, {})["server_cpu_s_per_gib"] = round(seconds / gib, 3)
            log_figure(figure)

    def image_push(self) -> None:
        """One client pushes images one after another: a new config blob (POST, PUT) and its manifest."""
        p = self.profile
        figure = self.figure(
            "image_push", "image push (config + manifest)", "images/s", Target("distribution", ">=", 1.2)
        )
        for rep in range(p.image_push_rounds):
            for server in self.order(rep, self.registries):
                client = Client(server.port)
                if rep == 0:
                    client.mount(IMAGES, self.layer_digest, APP)
                pushed = 0
                with self.meter(server) as meter:
                    deadline = time.perf_counter() + p.image_push_seconds
                    while time.perf_counter() < deadline:
                        self._counter += 1
                        config = image_config(f"image-{self._counter}")
                        client.push_monolithic(IMAGES, config, sha256_digest(config))
                        manifest = image_manifest(config, self.layer_digest, len(self.layer))
                        client.put_manifest(IMAGES, f"v{self._counter}", manifest)
                        pushed += 1
                client.close()
                figure.add(
                    server.name,
                    pushed / meter.elapsed,
                    server_cpu_ms_per_image=round(meter.server_cpu / pushed * 1000, 2),
                )
        log_figure(figure)

    def small_gets(self) -> None:
        p = self.profile
        accept = {"Accept": OCI_MANIFEST}
        workloads: list[tuple[str, str, str, dict[str, str]]] = [
            ("manifest_get", "manifest GET by tag", f"/v2/{APP}/manifests/latest", accept),
            ("manifest_head", "manifest HEAD by tag", f"/v2/{APP}/manifests/latest", accept),
            ("blob_get_4k", "4 KiB blob GET", f"/v2/{APP}/blobs/{self.layer_digest}", {}),
        ]
        for key, label, path, headers in workloads:
            rate = self.figure(f"{key}_rps", label, "req/s", Target("distribution", ">=", 2.0))
            p99 = self.figure(f"{key}_p99", f"{label} p99 latency", "ms")
            cpu = self.figure(f"{key}_cpu", f"{label} server CPU/request", "ms")
            for rep in range(p.load_rounds):
                for server in self.order(rep, self.registries):
                    with self.meter(server) as meter:
                        result = self._load(key, server.base + path, headers)
                    if result.errors or result.non_2xx:
                        self.notes.append(
                            f"{label} on {server.label}: {result.errors} socket errors, "
                            f"{result.non_2xx} non-2xx answers"
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
            for figure in (rate, p99, cpu):
                log_figure(figure)

    def _load(self, key: str, url: str, headers: dict[str, str]) -> LoadResult:
        p = self.profile
        threads, connections, seconds = p.load_threads, p.load_connections, p.load_seconds
        if key.endswith("head"):  # wrk waits forever for the body a HEAD answer announces
            if self.headload is None:
                raise RuntimeError(
                    "no C compiler to build bench/headload.c; HEAD cannot be measured with wrk"
                )
            return run_headload(
                self.headload, url, threads=threads, connections=connections, seconds=seconds, headers=headers
            )
        return run_wrk(url, threads=threads, connections=connections, seconds=seconds, headers=headers)

    def populate(self) -> None:
        """Many tags on one manifest and many repositories sharing one blob, one registry at a time."""
        p = self.profile
        tags_rate = self.figure("populate_tags", f"populate: tag PUT, {p.populate_threads} threads", "tags/s")
        repos_rate = self.figure(
            "populate_repos", f"populate: blob mount, {p.populate_threads} threads", "repos/s"
        )
        for server in self.registries:
            setup = Client(server.port)
            setup.mount(TAGS, self.layer_digest, APP)
            setup.mount(TAGS, sha256_digest(self.config), APP)
            setup.close()

            def tag_job(name: str) -> Callable[[Client], None]:
                return lambda client: client.put_manifest(TAGS, name, self.manifest)

            def mount_job(name: str) -> Callable[[Client], None]:
                return lambda client: client.mount(name, self.layer_digest, APP)

            jobs = [tag_job(f"t{i:05d}") for i in range(p.tags)]
            with self.meter(server) as meter:
                parallel(server.port, jobs, threads=p.populate_threads)
            tags_rate.add(server.name, p.tags / meter.elapsed)
            jobs = [mount_job(f"{REPOS}{i:05d}") for i in range(p.repositories)]
            with self.meter(server) as meter:
                parallel(server.port, jobs, threads=p.populate_threads)
            repos_rate.add(server.name, p.repositories / meter.elapsed)
        log_figure(tags_rate)
        log_figure(repos_rate)

    def listings(self) -> None:
        """Fetch the whole tag list and the whole catalog, following Link pages to the end."""
        p = self.profile
        target = Target("distribution", "<=", 0.1)
        tags = self.figure("list_tags", f"tag list, {p.tags:,} tags", "ms", target)
        catalog = self.figure("list_catalog", f"catalog, {p.repositories:,}+ repos", "ms", target)
        counts: dict[str, int] = {}
        for rep in range(p.listing_reps):
            for server in self.order(rep, self.registries):
                client = Client(server.port)
                with self.meter(server) as meter:
                    names, pages = client.walk(f"/v2/{TAGS}/tags/list", "tags")
                cpu_ms = round(meter.server_cpu * 1000)
                tags.add(server.name, meter.elapsed * 1000, pages=pages, server_cpu_ms=cpu_ms)
                if len(names) != p.tags or len(set(names)) != p.tags:
                    raise RuntimeError(f"{server.label} listed {len(names)} tags, not {p.tags}")
                with self.meter(server) as meter:
                    names, pages = client.walk("/v2/_catalog", "repositories")
                cpu_ms = round(meter.server_cpu * 1000)
                catalog.add(
                    server.name,
                    meter.elapsed * 1000,
                    pages=pages,
                    repositories=len(names),
                    server_cpu_ms=cpu_ms,
                )
                client.close()
                counts[server.name] = len(names)
                ours = sum(1 for name in names if name.startswith(REPOS))
                if ours != p.repositories or len(set(names)) != len(names):
                    raise RuntimeError(
                        f"{server.label} catalog holds {ours} of the {p.repositories} repositories"
                    )
        if len(set(counts.values())) > 1:
            self.notes.append(f"catalog sizes differ: {counts}")
        log_figure(tags)
        log_figure(catalog)

    def memory(self) -> None:
        """Peak RSS (VmHWM) over the whole run, summed over each server's processes."""
        figure = self.figure(
            "peak_rss", "peak RSS, all server processes", "MiB", Target("distribution", "<=", 1.0)
        )
        for server in self.registries:
            tree = server.tree
            per_process = {pid: process_memory(pid) for pid in tree.pids()}
            figure.add(server.name, tree.memory_kib("VmHWM") / 1024, processes=per_process)
        log_figure(figure)


def process_memory(pid: int) -> dict[str, object]:
    """A process's command line, peak and current RSS and current PSS (MiB), for the JSON detail."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    with contextlib.suppress(OSError):  # PSS splits pages shared with a forked parent fairly
        status += Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    memory = {
        line.split(":")[0]: round(int(line.split()[1]) / 1024, 1)
        for line in status
        if line.startswith(("VmHWM:", "VmRSS:", "Pss:"))
    }
    return {"argv": " ".join(a.decode(errors="replace") for a in argv if a)[:200], **memory}


# -- output -----------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def log_figure(figure: Figure) -> None:
    values = ", ".join(f"{name} {fmt(value)}" for name, value in figure.values.items())
    log(f"   {figure.label}: {values} {figure.unit}")


def table(figures: list[Figure]) -> str:
    header = ("figure", "unit", "Dockyard", "Distribution", "nginx", "D/Dist", "D/nginx", "target", "met")
    rows = [header]
    for figure in figures:
        met = figure.target_met()
        to_dist, to_nginx = figure.ratio("distribution"), figure.ratio("nginx")
        rows.append(
            (
                figure.label,
                figure.unit,
                fmt(figure.values.get("dockyard")),
                fmt(figure.values.get("distribution")),
                fmt(figure.values.get("nginx")),
                "-" if to_dist is None else f"{to_dist:.2f}x",
                "-" if to_nginx is None else f"{to_nginx:.2f}x",
                str(figure.target) if figure.target else "-",
                "-" if met is None else ("yes" if met else "NO"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def environment() -> dict[str, object]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return ""

    repo = str(HERE.parent)
    # --no-optional-locks: a status check must not write the index another engineer is using.
    dirty = first_line(["git", "--no-optional-locks", "-C", repo, "status", "--porcelain", "--", "dockyard"])
    return {
        "dockyard_commit": first_line(["git", "-C", repo, "rev-parse", "--short", "HEAD"]) or "unknown",
        "dockyard_uncommitted_changes": bool(dirty),
        "distribution": first_line(["docker-registry", "--version"]),
        "nginx": first_line(["nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "curl": first_line(["curl", "--version"]),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "kernel": platform.release(),
    }


def report(bench: Bench, profile: Profile, elapsed: float, stamp: dt.datetime, access_log: bool) -> None:
    env = bench.info.get("environment", {})
    assert isinstance(env, dict)
    commit = env.get("dockyard_commit", "?") + ("+changes" if env.get("dockyard_uncommitted_changes") else "")
    print()
    print(
        f"Dockyard {commit} vs CNCF Distribution 2.8 / nginx: {profile.name} run, {elapsed:.0f} s, "
        f"{stamp:%Y-%m-%d %H:%M} UTC, access logs {'on' if access_log else 'off'}"
    )
    print("medians of repeated runs; D/Dist and D/nginx are Dockyard's figure divided by the other's")
    print()
    print(table(list(bench.figures.values())))
    print()
    shares = bench.other_load_by_phase()
    if shares:
        busy = ", ".join(f"{phase} {share:.0%}" for phase, share in shares.items())
        print(f"other load on the machine while measuring (share of all CPUs): {busy}")
        if any(share > BUSY_MACHINE for share in shares.values()):
            print(
                "  (above 15%: those throughput figures are depressed; server CPU per request is still fair)"
            )
    for note in bench.notes:
        print(f"note: {note}")
    for error in bench.errors:
        print(f"ERROR: {error}")


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
        "--no-access-log", action="store_true", help="run both registries without access logs"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON results file (default: bench/results/<time>-<profile>.json)"
    )
    args = parser.parse_args(argv)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if phases - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(phases - set(PHASES)))}")
    for tool in ("wrk", "curl", "docker-registry", "nginx"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            parser.error(f"{tool} is not installed (see bench/README.md)")

    profile = QUICK if args.quick else FULL
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="dockyard-bench-", dir=args.workdir))
    stamp = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    bench = Bench(profile, workdir, access_log=not args.no_access_log, phases=phases)
    bench.info["environment"] = environment()
    log(f"Dockyard benchmark ({profile.name}), work directory {workdir}")
    try:
        bench.run()
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    report(bench, profile, elapsed, stamp, not args.no_access_log)

    out = args.out or HERE / "results" / f"{stamp:%Y%m%d-%H%M%S}-{profile.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "started_utc": stamp.isoformat(),
        "elapsed_s": round(elapsed, 1),
        "profile": asdict(profile),
        "access_log": not args.no_access_log,
        "phases": sorted(phases),
        "info": bench.info,
        "other_load_by_phase": bench.other_load_by_phase(),
        "figures": [
            {
                "key": f.key,
                "label": f.label,
                "unit": f.unit,
                "values": f.values,
                "samples": f.samples,
                "detail": f.detail,
                "ratio_to_distribution": f.ratio("distribution"),
                "ratio_to_nginx": f.ratio("nginx"),
                "target": None if f.target is None else {**asdict(f.target), "text": str(f.target)},
                "target_met": f.target_met(),
            }
            for f in bench.figures.values()
        ],
        "notes": bench.notes,
        "errors": bench.errors,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {out}")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
