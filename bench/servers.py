"""Start, watch and stop the servers under test: Dockyard, CNCF Distribution and nginx.

Each server gets its own free port on 127.0.0.1 and its own folder under one
work directory (so all of them write to the same disk), runs in its own process
group, and logs to a file in its folder. ``ProcessTree`` reads CPU time and peak
RSS of a server process and all its descendants from /proc.

Dockyard requires authentication: it starts with a fresh admin password
(``DOCKYARD_ADMIN_PASSWORD``) and one-hour access tokens, and the bench holds the
credentials in ``Server.credentials``. Distribution and nginx run without auth.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from registry import TokenAuth

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


@dataclass
class ProcessTree:
    """A server's main process and everything it spawned (granian's workers, nginx's workers)."""

    pid: int

    def pids(self) -> list[int]:
        children = _children_map()
        found, queue = [], [self.pid]
        while queue:
            pid = queue.pop()
            found.append(pid)
            queue.extend(children.get(pid, []))
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time of the live processes in the tree."""
        ticks = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / CLOCK_TICKS

    def memory_kib(self, key: str = "VmHWM") -> int:
        """Sum of one /proc/<pid>/status memory figure (kB) over the tree: VmHWM is peak RSS."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total


@dataclass
class Server:
    """One HTTP server process under test."""

    name: str
    label: str
    folder: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    #: (user, password) the bench authenticates with; None: the server runs without auth.
    credentials: tuple[str, str] | None = None
    #: The Bearer tokens of a server that wants them (set once it is up, see harness.Bench.servers).
    auth: TokenAuth | None = None

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / "server.log"
        if not self.port:
            self.port = free_port()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tree(self) -> ProcessTree:
        assert self.process is not None
        return ProcessTree(self.process.pid)

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    ready_path = "/v2/"
    #: Answers to ``GET ready_path`` that mean the server is up (401: up, and wants credentials).
    ready_statuses: ClassVar[tuple[int, ...]] = (200,)

    def start(self, timeout: float = 60.0) -> None:
        argv, extra_env = self.command()
        env = {k: v for k, v in {**os.environ, **extra_env}.items() if k not in extra_env or v}  # "": unset
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", self.ready_path)
                status = conn.getresponse().status
                conn.close()
                if status in self.ready_statuses:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.label} did not answer on port {self.port}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no log at {self.log_path})"

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


#: Dockyard's admin user (its registry name) and the access token lifetime the bench asks for.
DOCKYARD_ADMIN = "dockyard"
DOCKYARD_TOKEN_SECONDS = 3600
#: With --rate-limits: per-minute rates the bench never reaches, so every request pays for the check
#: (a lease takes 2% of a bucket: one per key for the whole run) without being throttled.
BENCH_RATES = {
    category: {"registry": 60_000_000, **({} if category == "oauth" else {"identity": 30_000_000})}
    for category in ("read", "write", "delete", "referrers", "oauth")
}


class Dockyard(Server):
    """``dockyard serve`` with its token auth on: a new admin password per run, one-hour tokens."""

    ready_statuses = (200, 401)

    def __init__(
        self,
        folder: Path,
        *,
        access_log: bool = True,
        database_url: str | None = None,
        storage_env: dict[str, str] | None = None,
        rate_limits: bool = False,
        workers: int = 1,
    ) -> None:
        super().__init__("dockyard", "Dockyard", folder)
        self.workers = workers
        self.access_log = access_log
        #: Off by default (the bench floods far past any tier's rates); on: at rates it never reaches.
        self.rate_limits = rate_limits
        self.database_url = database_url
        #: DOCKYARD_STORAGE and the AWS_* variables for an S3 store (bench/s3.py); None: filesystem.
        self.storage_env = storage_env or {}
        self.credentials = (DOCKYARD_ADMIN, secrets.token_urlsafe(24))

    def command(self) -> tuple[list[str], dict[str, str]]:
        executable = Path(sys.executable).with_name("dockyard")
        if not executable.exists():
            found = shutil.which("dockyard") or str(REPO_ROOT / ".venv" / "bin" / "dockyard")
            executable = Path(found)
        assert self.credentials is not None
        env = {
            "DOCKYARD_ACCESS_LOG": "true" if self.access_log else "false",
            "DOCKYARD_ADMIN_USERNAME": self.credentials[0],
            "DOCKYARD_ADMIN_PASSWORD": self.credentials[1],
            "DOCKYARD_ACCESS_TOKEN_SECONDS": str(DOCKYARD_TOKEN_SECONDS),
            "DOCKYARD_RATE_LIMITS_ENABLED": "true" if self.rate_limits else "false",
        }
        if self.rate_limits:
            env["DOCKYARD_TIERS"] = json.dumps({"Premium": {"rates": BENCH_RATES}})
        if self.database_url:
            env["DOCKYARD_DATABASE_URL"] = self.database_url
        env.update(self.storage_env)
        argv = [str(executable), "serve", "--data-dir", str(self.folder / "data"), "--port", str(self.port)]
        if self.workers != 1:
            argv += ["--workers", str(self.workers)]
        return argv, env


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: {level}
  accesslog:
    disabled: {access_disabled}
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
{storage}  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
"""


class Distribution(Server):
    """CNCF Distribution 2.8 with the settings of Debian's default config.yml, less its htpasswd auth.

    No auth at all, as the reference figures were measured: it checks nothing per request.
    """

    def __init__(self, folder: Path, *, access_log: bool = True, storage: str | None = None) -> None:
        super().__init__("distribution", "Distribution", folder)
        self.access_log = access_log
        #: The storage driver's section of config.yml (bench/s3.py); None: the filesystem driver.
        self.storage = storage

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = self.folder / "config.yml"
        config.write_text(
            DISTRIBUTION_CONFIG.format(
                level="info" if self.access_log else "warn",
                access_disabled="false" if self.access_log else "true",
                storage=self.storage or f"  filesystem:\n    rootdirectory: {self.folder / 'data'}\n",
                port=self.port,
            )
        )
        env = {"AWS_CA_BUNDLE": ""}  # unset: a CA bundle from the environment breaks its S3 client
        return [shutil.which("docker-registry") or "docker-registry", "serve", str(config)], env


NGINX_CONFIG = """\
daemon off;
master_process on;
{user}
worker_processes auto;
error_log {folder}/error.log;
pid {folder}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {folder}/tmp/client;
    proxy_temp_path {folder}/tmp/proxy;
    fastcgi_temp_path {folder}/tmp/fastcgi;
    uwsgi_temp_path {folder}/tmp/uwsgi;
    scgi_temp_path {folder}/tmp/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {folder}/www;
        location = /v2/ {{ return 200 "{{}}"; }}
    }}
}}
"""


class Nginx(Server):
    """nginx serving static files from ``folder/www`` with sendfile: the ceiling for blob pulls."""

    def __init__(self, folder: Path) -> None:
        super().__init__("nginx", "nginx", folder)
        (self.folder / "www").mkdir(exist_ok=True)
        (self.folder / "tmp").mkdir(exist_ok=True)

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = self.folder / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""  # workers must read the 0700 work directory
        config.write_text(NGINX_CONFIG.format(user=user, folder=self.folder, port=self.port))
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(config), "-p", str(self.folder)], {}


def postgres_tree(database_url: str) -> ProcessTree | None:
    """The PostgreSQL server behind ``database_url`` when it runs on this machine (its postmaster,
    found by its port, and the backends it forks), so its CPU is Dockyard's and not other load."""
    port = urlsplit(database_url).port or 5432
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"postgres") and b"-p" in argv and str(port).encode() in argv:
            return ProcessTree(int(entry.name))
    return None


def machine_busy_seconds() -> float:
    """CPU seconds all processors spent not idle since boot (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # guest time is already counted in user
    return (sum(fields) - idle - guest) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for (wrk, curl, headload)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
