"""The `dockyard serve` processes: workers die with their supervisor; a held port is refused."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import ADMIN, DockyardServer, clean_environment, dockyard_command, wait_for
from tests.support.images import make_image
from tests.support.registry import push_image

pytestmark = pytest.mark.e2e

#: Workers get SIGTERM at once and drain; DOCKYARD_SHUTDOWN_TIMEOUT_SECONDS bounds a stuck drain.
EXIT_DEADLINE = 20.0


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rpartition(")")[2].split()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet has exited)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def wait_for_exit(server: DockyardServer, workers: list[int], what: str) -> None:
    """Wait until every worker has exited; else fail with the stacks of those still running
    (SIGUSR2: each worker's faulthandler prints every thread's stack to the server's stderr)."""
    try:
        wait_for(lambda: not any(alive(w) for w in workers), timeout=EXIT_DEADLINE, what=what)
    except pytest.fail.Exception:
        stuck = [w for w in workers if alive(w)]
        for worker in stuck:
            os.kill(worker, signal.SIGUSR2)
        with contextlib.suppress(pytest.fail.Exception):
            wait_for(lambda: "most recent call first" in server.stderr(), timeout=5, what="stacks")
        for worker in stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
        pytest.fail(
            f"workers {stuck} still run {EXIT_DEADLINE:.0f} s after their supervisor died; the server's "
            f"stderr (with their stacks):\n{server.stderr()[-20000:]}"
        )


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (a bind without SO_REUSEPORT succeeds)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def serve_expecting_refusal(port: int, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run `dockyard serve` on ``port``, which it should refuse; whatever it started is killed after."""
    command = dockyard_command("serve", "--port", str(port), "--data-dir", str(data_dir))
    proc = subprocess.Popen(
        command,
        env=clean_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"dockyard serve did not refuse port {port} within 60 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def test_workers_exit_when_the_supervisor_is_killed(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    server = start_server(
        data_dir=tmp_path / "first",
        extra_args=["--workers", "2"],
        env={"DOCKYARD_SHUTDOWN_TIMEOUT_SECONDS": "5"},
    )
    assert server.proc is not None
    supervisor = server.proc.pid
    workers = wait_for(
        lambda: len(children(supervisor)) == 2 and children(supervisor), timeout=10, what="workers"
    )
    assert isinstance(workers, list)

    # An idle keep-alive connection must not keep a worker serving.
    with httpx.Client(base_url=server.url, auth=ADMIN, timeout=10) as keep_alive:
        assert keep_alive.get("/v2/").status_code == 200
        server.stopped_on_purpose = True
        os.kill(supervisor, signal.SIGKILL)  # the supervisor only, not its process group
        server.proc.wait(10)

        wait_for_exit(server, workers, "orphaned workers to exit")
    assert port_free(server.port)

    # The port is really free: a new registry takes it.
    second = start_server(data_dir=tmp_path / "second", port=server.port)
    with second.http(timeout=10) as http:
        assert http.get("/v2/").status_code == 200


def test_workers_still_booting_exit_when_the_supervisor_is_killed(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    """The supervisor dies the moment its workers are forked, before any has loaded the app: a
    watcher armed only by the app loader never ran, and such a worker was orphaned for good."""
    server = start_server(
        data_dir=tmp_path / "data",
        extra_args=["--workers", "2"],
        env={"DOCKYARD_SHUTDOWN_TIMEOUT_SECONDS": "5"},
        wait=False,
    )
    assert server.proc is not None
    supervisor = server.proc.pid
    workers = wait_for(
        lambda: len(children(supervisor)) == 2 and children(supervisor), timeout=60, what="forked workers"
    )
    assert isinstance(workers, list)
    server.stopped_on_purpose = True
    os.kill(supervisor, signal.SIGKILL)
    server.proc.wait(10)
    wait_for_exit(server, workers, "booting workers to exit")


def started_with_workers(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> tuple[DockyardServer, list[int]]:
    """A server on its default settings, and the PIDs of its workers once they run."""
    server = start_server(data_dir=tmp_path / "data")
    assert server.proc is not None
    workers = wait_for(lambda: children(server.proc.pid), timeout=10, what="the worker")
    assert isinstance(workers, list)
    return server, workers


def test_sigusr2_prints_a_worker_stacks_and_it_keeps_serving(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    server, worker = started_with_workers(start_server, tmp_path)
    assert len(worker) == 1
    assert "most recent call first" not in server.stderr()
    os.kill(worker[0], signal.SIGUSR2)
    # Every thread's stack, not only the one the signal interrupted: the supervisor watcher's too.
    wait_for(lambda: "in _watch_supervisor" in server.stderr(), timeout=10, what="the worker's stacks")
    with httpx.Client(base_url=server.url, auth=ADMIN, timeout=10) as http:
        assert http.get("/v2/").status_code == 200
    assert alive(worker[0])


def test_sigusr2_to_the_supervisor_prints_its_stacks_and_the_server_keeps_serving(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    """A USR2 sent to every process of the server (``pkill -USR2 -f dockyard``) ends none."""
    server, worker = started_with_workers(start_server, tmp_path)
    os.kill(server.proc.pid, signal.SIGUSR2)
    wait_for(lambda: "in serve" in server.stderr(), timeout=10, what="the supervisor's stacks")
    with httpx.Client(base_url=server.url, auth=ADMIN, timeout=10) as http:
        assert http.get("/v2/").status_code == 200
    assert server.proc.poll() is None
    assert alive(worker[0])


def test_sigusr2_on_a_worker_busy_in_many_threads_loses_no_request(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    """The stacks are read holding the interpreter lock: a worker pushing in several threads,
    with its job runtime running, is dumped again and again and answers every push."""
    server, worker = started_with_workers(start_server, tmp_path)
    stop = threading.Event()

    def push(client: int) -> int:
        pushed = 0
        with httpx.Client(base_url=server.url, auth=ADMIN, timeout=30) as http:
            while not stop.is_set() or pushed == 0:
                push_image(http, f"busy/app{client}", make_image(f"busy-{client}-{pushed}"), tag=f"v{pushed}")
                pushed += 1
        return pushed

    with ThreadPoolExecutor(max_workers=4) as pool:
        pushers = [pool.submit(push, client) for client in range(4)]
        try:
            for dumps in range(1, 16):
                os.kill(worker[0], signal.SIGUSR2)
                wait_for(
                    lambda: server.stderr().count("Current thread") >= dumps,  # noqa: B023
                    timeout=10,
                    what=f"dump {dumps}",
                )
        finally:
            stop.set()
        pushed = [pusher.result() for pusher in pushers]
    assert all(count > 0 for count in pushed)
    assert server.stderr().count("Current thread") == 15
    # Every thread's stack in each dump, not only the main thread's.
    assert server.stderr().count("(most recent call first)") >= 15 * 3
    assert server.stderr().count("in _watch_supervisor") == 15
    assert alive(worker[0])


def test_a_second_server_refuses_a_port_a_running_one_holds(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    first = start_server(data_dir=tmp_path / "first")
    other = tmp_path / "other"

    result = serve_expecting_refusal(first.port, other)

    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == [
        f"ERROR: cannot listen on 127.0.0.1:{first.port}: another process already holds port {first.port}"
    ]
    assert not (other / "dockyard.db").exists(), "the refused server prepared a database"
    with first.http(timeout=10) as http:
        assert http.get("/v2/").status_code == 200


@pytest.fixture
def shared_listener() -> Iterator[int]:
    """A port listened on with SO_REUSEPORT, as an orphaned granian worker of an older Dockyard holds it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_refuses_a_port_shared_with_so_reuseport(shared_listener: int, tmp_path: Path) -> None:
    result = serve_expecting_refusal(shared_listener, tmp_path / "data")

    assert result.returncode != 0
    assert f"another process already holds port {shared_listener}" in result.stderr


def test_the_supervisor_carries_neither_the_cli_nor_the_app(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    """After preparing, `dockyard serve` execs a fresh interpreter as the supervisor (same PID):
    none of the CLI's, the settings' or the app's libraries are loaded there, only in workers."""
    server = start_server(data_dir=tmp_path / "slim")
    assert server.proc is not None
    supervisor = server.proc.pid
    workers = wait_for(lambda: children(supervisor), timeout=10, what="a worker")
    with server.http(timeout=10) as http:
        assert http.get("/v2/").status_code == 200
    heavy = ("pydantic_core", "sqlalchemy", "cryptography")
    mapped = Path(f"/proc/{supervisor}/maps").read_text()
    assert [name for name in heavy if name in mapped] == []
    worker_maps = Path(f"/proc/{workers[0]}/maps").read_text()
    assert [name for name in heavy if name in worker_maps] == list(heavy)
    assert "serve" in Path(f"/proc/{supervisor}/cmdline").read_text().split("\0")
