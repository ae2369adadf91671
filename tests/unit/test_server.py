"""server.py's process hygiene: the port check before serving, workers that stop with their supervisor."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.server import port_in_use


def test_a_free_port_passes() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert port_in_use("127.0.0.1", port) is None


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_listened_port_is_refused(reuse_port: bool) -> None:
    with socket.socket() as sock:
        if reuse_port:  # how granian's workers listen
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_in_use("127.0.0.1", port) == (
            f"cannot listen on 127.0.0.1:{port}: another process already holds port {port}"
        )


def test_a_bound_but_not_listening_port_passes() -> None:
    """Only a listener holds the port: a socket merely bound with SO_REUSEADDR does not."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        assert port_in_use("127.0.0.1", sock.getsockname()[1]) is None


def test_an_address_of_another_machine_is_explained() -> None:
    refusal = port_in_use("192.0.2.1", 5000)  # TEST-NET-1: never a local address
    assert refusal is not None
    assert refusal.startswith("cannot listen on 192.0.2.1:5000: ")


def test_ipv6_addresses_are_bracketed() -> None:
    refusal = port_in_use("2001:db8::1", 5000)
    assert refusal is not None
    assert refusal.startswith("cannot listen on [2001:db8::1]:5000: ")


def test_port_zero_is_never_held() -> None:
    assert port_in_use("127.0.0.1", 0) is None


# A supervisor that forks one worker, which arms stop_with_supervisor and reports its PID.
_FAMILY = textwrap.dedent(
    """
    import os, signal, sys
    from dockyard.server import drain_when_supervisor_dies, stop_with_supervisor

    supervisor = os.getpid()
    if os.fork() == 0:
        lost = {"drain": 0, "late": 2, "booting": 0}.get(sys.argv[1])  # SIGTERMs lost before handled
        if lost is None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            def drain(signum, frame):
                global lost
                lost -= 1
                if lost < 0:
                    print("draining", flush=True)
                    os._exit(0)
            signal.signal(signal.SIGTERM, drain)
        stop_with_supervisor(supervisor, grace=float(sys.argv[2]))
        if sys.argv[1] != "booting":
            drain_when_supervisor_dies()  # the app has started
        print(os.getpid(), flush=True)
    while True:
        signal.pause()
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@contextlib.contextmanager
def _family(sigterm: str, grace: float) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _FAMILY, sigterm, str(grace)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        yield proc, worker
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait_gone(pid: int, timeout: float) -> float:
    """Seconds until ``pid`` exited; fails after ``timeout``."""
    start = time.monotonic()
    while _alive(pid):
        if time.monotonic() - start > timeout:
            pytest.fail(f"process {pid} still runs {timeout:.0f}s after its supervisor died")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("drain", "draining\n"),  # a started worker drains on SIGTERM, well before the 60 s grace
        # SIGTERMs that arrive while the app still loads are lost: the watcher keeps sending them
        ("late", "draining\n"),
        # before its app has started a worker has nothing to drain, and a SIGTERM that reaches
        # granian during the app's startup could hang it: the supervisor's death kills it
        ("booting", ""),
    ],
)
def test_a_worker_stops_soon_after_its_supervisor_is_killed(mode: str, said: str) -> None:
    with _family(mode, grace=60) as (supervisor, worker):
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait(10)
        _wait_gone(worker, timeout=10)
        assert supervisor.stdout is not None
        assert supervisor.stdout.read() == said


def test_a_worker_that_does_not_drain_exits_after_the_grace() -> None:
    with _family("ignore", grace=1) as (supervisor, worker):
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait(10)
        assert _wait_gone(worker, timeout=15) >= 1.0


ARENA_PROBE = textwrap.dedent(
    """
    import ctypes, os, sys, tempfile, threading
    from dockyard.server import limit_malloc_arenas

    print(limit_malloc_arenas() if sys.argv[1] == "limit" else "-")
    barrier = threading.Barrier(12)
    kept = []

    def allocate():
        barrier.wait()
        kept.append([bytearray(4096) for _ in range(200)])  # above pymalloc's 512 bytes: glibc malloc

    threads = [threading.Thread(target=allocate) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    libc = ctypes.CDLL(None)
    libc.fdopen.restype = ctypes.c_void_p
    with tempfile.TemporaryFile() as out:
        stream = libc.fdopen(os.dup(out.fileno()), b"w")
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        out.seek(0)
        print(out.read().count(b"<heap nr="))
    """
)


def _arenas(mode: str, **env: str) -> tuple[str, int]:
    child_env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    out = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, text=True, check=True, env=child_env
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc arenas exist on Linux only")
def test_malloc_arenas_are_capped_for_many_threads() -> None:
    applied, capped = _arenas("limit")
    assert applied == "True"
    assert capped <= 2
    _, default = _arenas("none")
    assert default > 2  # the probe's threads do spread over more arenas without the cap


def test_an_operators_malloc_arena_max_is_left_alone() -> None:
    applied, _ = _arenas("limit", MALLOC_ARENA_MAX="4")
    assert applied == "False"
