"""The run's shared state: profiles, the servers, the base image, metering and bookkeeping.

Each group of phases (pushes.py, pulls.py, gets.py, listings.py, memory.py) is a
set of functions taking the ``Bench``; run.py decides which of them run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loadgen import build_headload
from registry import TOKEN_MARGIN, Client, discover_auth, image_config, image_manifest, sha256_digest
from report import Figure, Target, log
from s3 import RequestCount, SeaweedFS
from servers import (
    Distribution,
    Dockyard,
    Nginx,
    ProcessTree,
    Server,
    machine_busy_seconds,
    own_cpu_seconds,
    postgres_tree,
)

MiB = 1024 * 1024
MB = 1_000_000

APP = "bench/app"  # the image every GET workload reads
PULL = "bench/pull"  # holds the large blob for pulls
PUSH = "bench/push"  # target of the blob push workloads
IMAGES = "bench/images"  # target of the image push workload
TAGS = "bench/tags"  # the repository with many tags
REPOS = "bench/repos/r"  # prefix of the many repositories

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
    image_push_clients: int = 8
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


class Meter:
    """Wall time and server CPU of one measurement, and how busy the rest of the machine was.

    ``other_load`` is the share of all CPUs used by processes that are neither the
    server under test (nor its object store or database) nor this benchmark and its load
    generators: other work on a shared machine (the idle servers count too, at about nothing).
    """

    def __init__(
        self,
        server: Server,
        record: list[tuple[float, float]],
        store: Server | None = None,
        database: ProcessTree | None = None,
    ) -> None:
        self.server = server
        self.record = record
        self.store = store  # the object store behind the server: its CPU is not "other load"
        self.database = database  # Dockyard's PostgreSQL (with --postgres): nor is its CPU
        self.elapsed = self.server_cpu = self.other_load = self.store_cpu = self.database_cpu = 0.0
        self.client_cpu = 0.0  # this benchmark's own CPU: the load generators' share of the machine

    def __enter__(self) -> Meter:
        self._store_cpu = self.store.tree.cpu_seconds() if self.store else 0.0
        self._database_cpu = self.database.cpu_seconds() if self.database else 0.0
        self._cpu = self.server.tree.cpu_seconds()
        self._busy = machine_busy_seconds()
        self._own = own_cpu_seconds()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self._started
        self.server_cpu = self.server.tree.cpu_seconds() - self._cpu
        if self.store is not None:
            self.store_cpu = self.store.tree.cpu_seconds() - self._store_cpu
        if self.database is not None:
            self.database_cpu = self.database.cpu_seconds() - self._database_cpu
        self.client_cpu = own_cpu_seconds() - self._own
        mine = self.server_cpu + self.store_cpu + self.database_cpu + self.client_cpu
        other = machine_busy_seconds() - self._busy - mine
        self.other_load = max(other, 0.0) / (self.elapsed * (os.cpu_count() or 1))
        if self.elapsed >= MIN_METERED:  # shorter ones are mostly CPU-tick rounding
            self.record.append((self.elapsed, self.other_load))


class Bench:
    """The servers, the workload, and the figures it produced."""

    def __init__(
        self,
        profile: Profile,
        workdir: Path,
        *,
        access_log: bool,
        database_url: str | None = None,
        s3: bool = False,
        redirect: bool = False,
        rate_limits: bool = False,
        workers: int = 1,
    ) -> None:
        self.profile = profile
        self.workdir = workdir
        self.redirect = redirect
        #: With ``s3``: one SeaweedFS, both registries on it (a bucket each), and it is the pull
        #: reference (presigned GETs) instead of nginx.
        self.store = SeaweedFS(workdir / "seaweedfs") if s3 else None
        store_env = self.store.dockyard_env(redirect=redirect) if self.store else None
        self.dockyard = Dockyard(
            workdir / "dockyard",
            access_log=access_log,
            database_url=database_url,
            storage_env=store_env,
            rate_limits=rate_limits,
            workers=workers,
        )
        self.distribution = Distribution(
            workdir / "distribution",
            access_log=access_log,
            storage=self.store.distribution_storage(redirect=redirect) if self.store else None,
        )
        self.nginx = Nginx(workdir / "nginx")
        #: Dockyard's PostgreSQL, when it runs here (its CPU is reported beside Dockyard's).
        self.database = postgres_tree(database_url) if database_url else None
        self.registries: list[Server] = [self.dockyard, self.distribution]
        #: What blob pulls are held to: nginx on the filesystem, SeaweedFS's own GET on S3.
        self.pull_reference: Server = self.store or self.nginx
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

    def figure(
        self, key: str, label: str, unit: str, target: Target | None = None, *, mean: bool = False
    ) -> Figure:
        if key not in self.figures:
            self.figures[key] = Figure(key, label, unit, target, mean=mean)
        return self.figures[key]

    @staticmethod
    def order(rep: int, servers: list[Server]) -> list[Server]:
        """Alternate which server goes first, so drift in machine load hits both alike."""
        return servers if rep % 2 == 0 else list(reversed(servers))

    def meter(self, server: Server) -> Meter:
        store = self.store if server is not self.store else None
        database = self.database if server is self.dockyard else None
        return Meter(server, self.other_load.setdefault(self._phase, []), store, database)

    def s3_requests(self, server: Server) -> RequestCount:
        """Counts ``server``'s S3 requests during a ``with`` block (nothing without ``--storage s3``)."""
        return RequestCount(self.store, server)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Log a phase's start and duration; a failure is recorded and the run goes on."""
        started = time.perf_counter()
        self._phase = name
        log(f"== {name}")
        try:
            yield
        except Exception as exc:
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log(f"!! {name} failed: {exc}")
            traceback.print_exc(file=sys.stderr)
            for server in [*self.registries, self.pull_reference]:
                if server.process is not None and server.process.poll() is not None:
                    tail = server.log_tail(40)
                    self.errors.append(f"{server.label} exited with {server.process.returncode}:\n{tail}")
                    log(f"!! {server.label} exited with {server.process.returncode}:\n{tail}")
        log(f"   {name} took {time.perf_counter() - started:.1f}s")

    def other_load_by_phase(self) -> dict[str, float]:
        """Time-weighted share of the machine other processes used during each phase's measurements."""
        shares = {}
        for phase, record in self.other_load.items():
            total = sum(elapsed for elapsed, _ in record)
            if total:
                shares[phase] = sum(elapsed * load for elapsed, load in record) / total
        return shares

    # -- clients and tokens -----------------------------------------------------------------

    @staticmethod
    def client(server: Server) -> Client:
        """A new keep-alive client for ``server``, with Bearer tokens if it wants them."""
        return Client(server.port, auth=server.auth)

    @staticmethod
    def fetch_token(server: Server, scopes: list[str]) -> None:
        """Get (or renew) the token for ``scopes`` now, so that a timed loop does not pay for it.

        A real client does the same: docker asks for one token per repository and
        push or pull, not one per request.
        """
        if server.auth is not None:
            server.auth.token(scopes)

    @staticmethod
    def bearer(server: Server, scopes: list[str], valid_for: float) -> dict[str, str]:
        """The Authorization header for an external load generator (wrk, headload, curl).

        The token must outlive the run: ``valid_for`` seconds. Empty for a server without auth.
        """
        return {} if server.auth is None else server.auth.header(scopes, valid_for + TOKEN_MARGIN)

    def next_number(self) -> int:
        """A number no earlier call returned: for blobs, configs and tags no registry has seen."""
        self._counter += 1
        return self._counter

    def unique(self, buffer: bytearray) -> str:
        """Make ``buffer`` a blob no registry has seen yet; its digest."""
        buffer[:16] = f"{self.next_number():016d}".encode()
        return sha256_digest(buffer)

    # -- servers and the base image ---------------------------------------------------------

    @contextlib.contextmanager
    def servers(self) -> Iterator[None]:
        """Build headload, start the three servers, and stop them however the run ends."""
        self.headload = build_headload(self.workdir)
        # the store first (the registries need it), and it is the pull reference too on S3
        servers = [self.store, *self.registries] if self.store else [*self.registries, self.nginx]
        try:
            for server in servers:
                server.start()
                log(f"{server.label} on {server.base} (pid {server.tree.pid}), data in {server.folder}")
            for server in self.registries:  # as docker does: ping /v2/, follow a Bearer challenge
                server.auth = discover_auth(server.port, server.credentials)
                scheme = f"Bearer tokens from {server.auth.realm}" if server.auth else "no auth"
                log(f"{server.label}: {scheme}")
            self.info["auth"] = {
                s.name: (
                    {"scheme": "Bearer", "realm": s.auth.realm, "service": s.auth.service}
                    if s.auth
                    else {"scheme": None}
                )
                for s in self.registries
            }
            self.info["idle_rss_kib"] = {s.name: s.tree.memory_kib("VmRSS") for s in servers}
            yield
        finally:
            self.info["load_average_at_end"] = os.getloadavg()
            for server in self.registries:
                if server.auth is not None:
                    self.info.setdefault("token_requests", {})[server.name] = {
                        "count": server.auth.fetched,
                        "seconds": round(server.auth.fetch_seconds, 3),
                    }
            for server in reversed(servers):
                server.stop()

    def setup(self) -> None:
        """Give each registry the base image and the large blob; nginx gets the same blob as a file."""
        self.pull_blob = os.urandom(self.profile.large_blob)
        self.pull_digest = sha256_digest(self.pull_blob)
        if self.store is None:
            (self.nginx.folder / "www" / "blob").write_bytes(self.pull_blob)
        for server in self.registries:
            client = self.client(server)
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
