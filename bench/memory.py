"""Memory phase: peak RSS of each registry's processes over the whole run."""

from __future__ import annotations

import contextlib
from pathlib import Path

from harness import Bench
from report import Target, log_figure


def peak_rss(bench: Bench) -> None:
    """Peak RSS (VmHWM) over the whole run, summed over each server's processes."""
    figure = bench.figure(
        "peak_rss", "peak RSS, all server processes", "MiB", Target("distribution", "<=", 1.0)
    )
    for server in bench.registries:
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
