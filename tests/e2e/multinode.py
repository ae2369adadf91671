"""A scaled-out Dockyard for the e2e suite: `dockyard serve` nodes and a `dockyard worker` on one
PostgreSQL and one S3 bucket prefix, behind nginx balancing round robin per request."""

from __future__ import annotations

import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.e2e.support import DockyardServer, clean_environment, dockyard_command, require_tool, wait_for
from tests.support.postgres import free_port

#: nginx: one worker process, so its round robin is one sequence over every request it proxies;
#: bodies streamed both ways (a PATCH reaches its node while the client is still sending).
NGINX_CONF = """\
user root;
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    log_format upstream '$upstream_addr "$request" $status $request_length';
    access_log {root}/access.log upstream;
    upstream dockyard {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_read_timeout 120s;
        location / {{
            proxy_pass http://dockyard;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""

_NGINX_LINE = re.compile(r'^(?P<upstream>\S+) "(?P<method>\S+) (?P<target>\S+) [^"]*" (?P<status>\d+)')
_ACCESS_LINE = re.compile(r'access \S+ "(?P<method>\S+) (?P<path>\S+)" (?P<status>\d+)')


@dataclass(frozen=True)
class Proxied:
    """One request as nginx logged it: which node (host:port) answered it."""

    upstream: str
    method: str
    target: str
    status: int


class Nginx:
    """nginx in front of ``upstreams`` (host:port), from a private config, stopped by its PID."""

    def __init__(self, root: Path, upstreams: list[str]) -> None:
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"        server {u} max_fails=0;" for u in upstreams)
        self.conf = root / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(root=root, servers=servers, port=self.port))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> Nginx:
        binary = require_tool("nginx", "nginx")
        with (self.root / "stderr").open("wb") as err:
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.conf), "-p", str(self.root)], stdout=err, stderr=err
            )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {self.logs()}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=1.0)
            except httpx.TransportError:
                return False
            return True

        wait_for(up, timeout=10, what="nginx to listen")
        return self

    def requests(self) -> list[Proxied]:
        """Every request nginx has passed to a node so far, in order (logged as each one ends)."""
        path = self.root / "access.log"
        found = []
        for line in path.read_text().splitlines() if path.exists() else []:
            match = _NGINX_LINE.match(line)
            # "-": answered by nginx itself (skopeo first tries TLS on the plain port: a 400)
            if match and match["upstream"] != "-":
                # a request retried on the next node logs "A, B": the node that answered is the last
                upstream = match["upstream"].split(",")[-1].strip()
                found.append(Proxied(upstream, match["method"], match["target"], int(match["status"])))
        return found

    def logs(self) -> str:
        parts = [self.root / "stderr", self.root / "error.log"]
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in parts if p.exists())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def served_by(server: DockyardServer) -> list[tuple[str, str, int]]:
    """(method, path, status) of every request in the node's access log (its stderr)."""
    return [(m["method"], m["path"], int(m["status"])) for m in _ACCESS_LINE.finditer(server.stderr())]


class Worker:
    """A `dockyard worker` process with the nodes' settings, its output in a file."""

    def __init__(self, log: Path, env: dict[str, str]) -> None:
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                dockyard_command("worker"),
                env=clean_environment(**self.env),
                cwd=self.log.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        wait_for(
            lambda: "dockyard worker running" in self.output() or self._died(),
            timeout=30,
            what="dockyard worker to start",
        )
        return self

    def _died(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"dockyard worker exited {self.proc.returncode}:\n{self.output()}")
        return False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode
