"""Running a build tool: its own session, output streamed line by line, killed on deadline or cancel."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dockyard.builds.interfaces import BuildError, Deadline, LogSink, RunCanceled, StepTimedOut

#: How often a running tool's deadline and the run's cancel flag are checked (seconds).
POLL_SECONDS = 0.2
#: Longest line kept in the log (a tool printing a progress bar without newlines).
MAX_LINE = 16 * 1024


class ProcessGroups:
    """The process groups a builder started and has not reaped yet, killed together by ``kill_all``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.add(proc)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.discard(proc)

    def kill_all(self) -> None:
        with self._lock:
            procs = list(self._running)
        for proc in procs:
            kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's whole group (it leads its own session) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: LogSink | None,
    deadline: Deadline,
    cwd: Path | None = None,
    mask: Callable[[str], str] = lambda text: text,
    groups: ProcessGroups | None = None,
    capture: bool = False,
    what: str = "",
) -> tuple[int, str]:
    """Run ``argv`` to its end; its exit code and (with ``capture``) its output.

    stdout and stderr are merged and each line goes, through ``mask``, to ``log`` (None: not
    logged). Past ``deadline.at`` the process group is killed and StepTimedOut raised; when
    ``deadline.canceled()`` turns true, RunCanceled.
    """
    try:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise BuildError(
            f"{argv[0]} is not installed on this worker ({os.uname().nodename}): "
            "apt-get install -y buildah podman runc git"
        ) from None
    if groups is not None:
        groups.add(proc)
    captured: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in iter(lambda: proc.stdout.readline(MAX_LINE), b""):  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace")
            if not line.endswith("\n"):
                line += "\n"
            if capture:
                captured.append(line)
            if log is not None:
                log.write(mask(line))

    reader = threading.Thread(target=pump, name=f"output of {argv[0]}", daemon=True)
    reader.start()
    try:
        while True:
            try:
                code = proc.wait(POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            if deadline.canceled():
                kill_group(proc)
                raise RunCanceled(f"{what or argv[0]}: canceled")
            if time.monotonic() >= deadline.at:
                kill_group(proc)
                raise StepTimedOut(f"{what or argv[0]}: timed out")
    finally:
        if groups is not None:
            groups.discard(proc)
        kill_group(proc)  # leftovers of a tool that exited but left children in its group
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
    return code, "".join(captured)
