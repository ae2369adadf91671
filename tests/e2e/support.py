"""Helpers for the end-to-end suite: a `dockyard serve` subprocess, client tools, raw registry HTTP."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest

from tests.support.images import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Image

#: What a client that understands every manifest type sends.
ACCEPT_ALL = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

#: Every server the suite starts has this admin password (DOCKYARD_ADMIN_PASSWORD at first start).
ADMIN_USERNAME = "dockyard"
ADMIN_PASSWORD = "e2e-admin-password"
ADMIN = (ADMIN_USERNAME, ADMIN_PASSWORD)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
_counter = itertools.count(1)


def dockyard_command(*args: str) -> list[str]:
    """Run the Dockyard CLI with the interpreter running the tests (works from any fresh venv)."""
    return [sys.executable, "-m", "dockyard", *args]


def clean_environment(**extra: str) -> dict[str, str]:
    """The test process's environment without DOCKYARD_* settings, plus the suite's admin password,
    webhooks allowed to loopback receivers and sign-in throttling out of the way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    env["DOCKYARD_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.0/8"  # the test receivers listen on 127.0.0.1
    # Every test client is 127.0.0.1 and many tests sign in wrongly on purpose: a shared server must
    # not throttle one test for another's failures (the throttle's own tests use private apps).
    env["DOCKYARD_LOGIN_FAILURES_PER_CLIENT"] = "100000"
    env["DOCKYARD_LOGIN_FAILURES_PER_USER"] = "100000"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_for(condition: Callable[[], object], *, timeout: float, what: str, interval: float = 0.02) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class DockyardServer:
    """One `dockyard serve` process in its own process group, with its output in files."""

    def __init__(
        self,
        *,
        log_dir: Path,
        port: int,
        data_dir: Path | None = None,
        cwd: Path | None = None,
        extra_args: Sequence[str] = (),
        owner: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        #: Settings for this server only (e.g. DOCKYARD_WEBHOOK_RETRY_BASE_SECONDS), over clean_environment.
        self.env = dict(env or {})
        self.data_dir = data_dir
        self.cwd = cwd or log_dir
        self.extra_args = list(extra_args)
        self.owner = owner
        number = next(_counter)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / f"dockyard-{number}-port{port}.stderr"
        self.stdout_path = log_dir / f"dockyard-{number}-port{port}.stdout"
        self.proc: subprocess.Popen[bytes] | None = None
        self.forced_kill = False
        #: Set when the test stopped or killed the server itself (an exit is then no crash).
        self.stopped_on_purpose = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self, **kwargs: object) -> httpx.Client:
        """An HTTP client signed in as the admin user."""
        return httpx.Client(base_url=self.url, auth=ADMIN, **kwargs)  # type: ignore[arg-type]

    @property
    def host(self) -> str:
        """host:port, as container tools write registry references."""
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = ["serve", "--port", str(self.port)]
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        return dockyard_command(*args, *self.extra_args)

    def start(self, *, wait: bool = True) -> DockyardServer:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.cwd,
                env=clean_environment(**self.env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: granian's workers die with it
            )
        if wait:
            self.wait_ready()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll GET /v2/ until it answers 200; fail with the server's output if it dies or hangs."""
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        with httpx.Client(timeout=2.0, auth=ADMIN) as client:
            while True:
                if not self.running():
                    raise RuntimeError(
                        f"dockyard serve exited with {self.proc.returncode if self.proc else None} "
                        f"before answering:\n{self.logs()}"
                    )
                try:
                    response = client.get(f"{self.url}/v2/")
                except httpx.TransportError as exc:
                    last_error = repr(exc)
                else:
                    if response.status_code == 200:
                        return
                    last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"dockyard serve did not answer GET /v2/ within {timeout:.0f}s "
                        f"({last_error}):\n{self.logs()}"
                    )
                time.sleep(0.05)

    def _signal_group(self, signum: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
            os.killpg(self.proc.pid, signum)

    def terminate(self) -> None:
        """Send SIGTERM and return at once (``stop`` waits for the exit)."""
        assert self.proc is not None
        self.stopped_on_purpose = True
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL the process group if it has not exited within ``timeout``."""
        if self.proc is None:
            return None
        self.stopped_on_purpose = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.forced_kill = True
                self._signal_group(signal.SIGKILL)
                self.proc.wait(10)
        self._signal_group(signal.SIGKILL)  # workers the main process left behind, if any
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the server and its workers at once, as a crash or power cut would."""
        if self.proc is None:
            return None
        self.stopped_on_purpose = True
        self._signal_group(signal.SIGKILL)
        self.proc.wait(10)
        return self.proc.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def logs(self, limit: int = 12000) -> str:
        stdout = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        text = f"$ {shlex.join(self.command())}\n--- stderr ---\n{self.stderr()}\n--- stdout ---\n{stdout}"
        return text if len(text) <= limit else "…" + text[-limit:]


def require_tool(name: str, apt_package: str) -> str:
    """The tool's path; a missing tool fails the test with the package to install."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: apt-get install -y {apt_package}", pytrace=False)
    return path


def run(
    command: Sequence[str],
    *,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    stdin: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; with ``check``, fail showing its output unless it exits 0."""
    result = subprocess.run(
        list(command),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )
    if check:
        assert result.returncode == 0, (
            f"`{shlex.join(command)}` exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


class HttpsServer(DockyardServer):
    """A `dockyard serve --tls self-signed`: DockyardServer's URL and readiness probe speak http:// and
    trust only the usual CAs, so this one uses https:// and the CA the server creates in its data folder."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def tls_dir(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.crt"

    def trusting_ca(self) -> ssl.SSLContext:
        """What `verify=<data_dir>/tls/ca.crt` means (httpx deprecates passing the path itself)."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def http(self, **kwargs: object) -> httpx.Client:
        """An HTTPS client trusting the local CA, signed in as the admin user."""
        return httpx.Client(base_url=self.url, auth=ADMIN, verify=self.trusting_ca(), **kwargs)  # type: ignore[arg-type]

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll an authenticated GET /v2/ over HTTPS (trusting the CA once it exists) until it answers 200."""

        def ready() -> bool:
            if not self.running():
                raise RuntimeError(f"dockyard serve exited before answering:\n{self.logs()}")
            if not self.ca_cert.exists():
                return False
            try:
                with self.http(timeout=2.0) as client:
                    return client.get("/v2/").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=timeout, what=f"GET {self.url}/v2/ to answer 200")


# -- raw registry HTTP ------------------------------------------------------------------------


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(http: httpx.Client, repository: str, data: bytes) -> str:
    """A monolithic upload (POST ?digest=); returns the digest."""
    digest = sha256_digest(data)
    response = http.post(
        f"/v2/{repository}/blobs/uploads/",
        params={"digest": digest},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, f"blob push: {response.status_code} {response.text}"
    assert response.headers["Docker-Content-Digest"] == digest
    return digest


def push_image(http: httpx.Client, repository: str, reference: str, image: Image) -> str:
    """Push an image's blobs and manifest; returns the manifest digest the registry reports."""
    for blob in image.blobs:
        push_blob(http, repository, blob.data)
    return put_manifest(http, repository, reference, image.manifest, image.media_type)


def put_manifest(http: httpx.Client, repository: str, reference: str, payload: bytes, media_type: str) -> str:
    response = http.put(
        f"/v2/{repository}/manifests/{reference}", content=payload, headers={"Content-Type": media_type}
    )
    assert response.status_code == 201, f"manifest push: {response.status_code} {response.text}"
    digest = response.headers["Docker-Content-Digest"]
    assert digest == sha256_digest(payload)
    return digest


def get_manifest(http: httpx.Client, repository: str, reference: str) -> httpx.Response:
    return http.get(f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT_ALL})


def fetch_manifest(http: httpx.Client, repository: str, reference: str) -> bytes:
    """The manifest's exact bytes; fails unless the registry serves it with a matching digest."""
    response = get_manifest(http, repository, reference)
    assert response.status_code == 200, f"GET manifest {repository}:{reference}: {response.status_code}"
    assert response.headers["Docker-Content-Digest"] == sha256_digest(response.content)
    return response.content


def fetch_blob(http: httpx.Client, repository: str, digest: str) -> bytes:
    """A blob's bytes; fails unless they hash to ``digest``."""
    response = http.get(f"/v2/{repository}/blobs/{digest}")
    assert response.status_code == 200, f"GET blob {repository}@{digest}: {response.status_code}"
    assert sha256_digest(response.content) == digest, f"blob {digest} served with other bytes"
    return response.content


# -- container tools kept off the machine's global configuration -----------------------------

POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}\n'


class ContainerTools:
    """skopeo, podman and buildah with private policy, registries, storage and auth files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._short_dirs: list[Path] = []
        self._runroots: dict[Path, Path] = {}
        config_home = root / "xdg-config"
        (config_home / "containers").mkdir(parents=True)
        tmp = root / "tmp"
        tmp.mkdir()
        self.policy = root / "policy.json"
        self.policy.write_text(POLICY)
        (config_home / "containers" / "policy.json").write_text(POLICY)
        self.registries_conf = root / "registries.conf"
        self.registries_conf.write_text('unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
        containers_conf = root / "containers.conf"
        containers_conf.write_text(
            "[containers]\n"
            'netns = "none"\n'
            'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )
        default_store = root / "default-store"
        storage_conf = root / "storage.conf"
        storage_conf.write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{default_store}"\nrunroot = "{self.short_dir()}"\n'
        )
        auth = root / "auth.json"
        auth.write_text('{"auths": {}}\n')
        self.auth_file = auth
        self.env = clean_environment(
            CONTAINERS_CONF=str(containers_conf),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            CONTAINERS_STORAGE_CONF=str(storage_conf),
            REGISTRY_AUTH_FILE=str(auth),
            XDG_CONFIG_HOME=str(config_home),
            TMPDIR=str(tmp),
        )

    def skopeo(
        self, *args: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        binary = require_tool("skopeo", "skopeo")
        command = [
            binary,
            "--policy",
            str(self.policy),
            "--registries-conf",
            str(self.registries_conf),
            *args,
        ]
        return run(command, timeout=timeout, env=self.env, check=check)

    def authorize(self, host: str, username: str = ADMIN_USERNAME, password: str = ADMIN_PASSWORD) -> None:
        """Store credentials for ``host`` in the auth file skopeo, podman and buildah share."""
        auths = json.loads(self.auth_file.read_text())
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        auths.setdefault("auths", {})[host] = {"auth": token}
        self.auth_file.write_text(json.dumps(auths))

    def short_dir(self) -> Path:
        """A fresh directory with a short path: podman refuses a runroot longer than 50 characters."""
        path = Path(tempfile.mkdtemp(prefix="dy-e2e-", dir="/tmp" if Path("/tmp").is_dir() else None))
        self._short_dirs.append(path)
        return path

    def close(self) -> None:
        for path in self._short_dirs:
            shutil.rmtree(path, ignore_errors=True)

    def _store_flags(self, store: Path) -> list[str]:
        runroot = self._runroots.get(store)
        if runroot is None:
            runroot = self._runroots[store] = self.short_dir()
        return ["--root", str(store / "root"), "--runroot", str(runroot), "--storage-driver", "vfs"]

    def podman(
        self, store: Path, *args: str, timeout: float = 180.0, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        binary = require_tool("podman", "podman")
        return run([binary, *self._store_flags(store), *args], timeout=timeout, env=self.env, stdin=stdin)

    def podman_unchecked(
        self, store: Path, *args: str, timeout: float = 180.0
    ) -> subprocess.CompletedProcess[str]:
        """podman whose failure is what the test expects."""
        binary = require_tool("podman", "podman")
        return run([binary, *self._store_flags(store), *args], timeout=timeout, env=self.env, check=False)

    def buildah(self, store: Path, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        binary = require_tool("buildah", "buildah")
        return run([binary, *self._store_flags(store), *args], timeout=timeout, env=self.env)


BUSYBOX = Path("/bin/busybox")


def push_busybox_base(tools: ContainerTools, store: Path, name: str, reference: str) -> str:
    """A base image built from scratch: busybox as /bin/busybox and /bin/sh, committed as
    ``localhost/<name>:1`` in ``store`` and pushed over plain HTTP to ``reference``; returns ``reference``."""
    if not BUSYBOX.is_file():
        pytest.fail("/bin/busybox is missing: apt-get install -y busybox-static", pytrace=False)
    policy = f"--signature-policy={tools.policy}"

    def buildah(*args: str) -> str:
        return tools.buildah(store, *args).stdout.strip()

    container = buildah("from", policy, "--name", name, "scratch")
    buildah("copy", container, str(BUSYBOX), "/bin/busybox")
    buildah("copy", container, str(BUSYBOX), "/bin/sh")
    buildah("config", "--cmd", json.dumps(["/bin/sh"]), "--arch", "amd64", "--os", "linux", container)
    buildah("commit", policy, container, f"localhost/{name}:1")
    buildah("push", policy, "--tls-verify=false", f"localhost/{name}:1", f"docker://{reference}")
    return reference
