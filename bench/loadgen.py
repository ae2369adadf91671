"""Load generators: wrk for GETs, headload (bench/headload.c) for HEADs, curl for big pulls."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
UNITS_US = {"us": 1.0, "ms": 1_000.0, "s": 1_000_000.0, "m": 60_000_000.0}


@dataclass
class LoadResult:
    """One closed-loop load run: completed requests, the rate, latency percentiles, failures."""

    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int


def _latency_us(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unreadable latency {text!r}")
    return float(match.group(1)) * UNITS_US[match.group(2)]


def parse_wrk(output: str) -> LoadResult:
    """Read wrk's --latency report."""
    requests = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if not (requests and rate and p50 and p99):
        raise ValueError(f"unreadable wrk output:\n{output}")
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return LoadResult(
        requests=int(requests.group(1)),
        duration_s=_latency_us(requests.group(2) + requests.group(3)) / 1e6,
        requests_per_s=float(rate.group(1)),
        p50_ms=_latency_us(p50.group(1)) / 1000,
        p99_ms=_latency_us(p99.group(1)) / 1000,
        errors=sum(int(g) for g in socket_errors.groups()) if socket_errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(
    url: str, *, threads: int, connections: int, seconds: float, headers: dict[str, str]
) -> LoadResult:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    output = subprocess.run([*argv, url], check=True, capture_output=True, text=True).stdout
    return parse_wrk(output)


def build_headload(workdir: Path) -> Path | None:
    """Compile bench/headload.c into ``workdir``; None when there is no C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    target = workdir / "headload"
    subprocess.run(
        [compiler, "-O2", "-pthread", "-o", str(target), str(HERE / "headload.c")],
        check=True,
        capture_output=True,
    )
    return target


def run_headload(
    binary: Path, url: str, *, threads: int, connections: int, seconds: float, headers: dict[str, str]
) -> LoadResult:
    argv = [str(binary), "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    output = subprocess.run([*argv, url], check=True, capture_output=True, text=True).stdout
    data = json.loads(output)
    return LoadResult(
        requests=data["requests"],
        duration_s=data["duration_s"],
        requests_per_s=data["requests_per_s"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["errors"],
        non_2xx=data["non_2xx"],
    )


def curl_pull(
    url: str,
    *,
    streams: int,
    repeats: int,
    expected_size: int,
    headers: dict[str, str] | None = None,
    follow: bool = False,
) -> float:
    """Download ``url`` ``repeats`` times on each of ``streams`` parallel curl processes.

    Each process reuses one connection for its downloads and sends ``headers`` (the
    Bearer token) on each; ``follow`` follows redirects (curl sends the headers to the
    same host and port only, so the token never reaches the store). Returns the
    aggregate bytes per second over the wall time from the first start to the last finish.
    """
    argv = ["curl", "-s", "--http1.1", "-w", "%{http_code} %{size_download}\\n", *(["-L"] if follow else [])]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    for _ in range(repeats):
        argv += ["-o", "/dev/null", url]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(streams)
    ]
    outputs = [process.communicate() for process in processes]
    elapsed = time.perf_counter() - started
    total = 0
    for process, (out, err) in zip(processes, outputs, strict=True):
        lines = out.split()
        codes, sizes = lines[0::2], lines[1::2]
        if process.returncode != 0 or len(codes) != repeats:
            raise RuntimeError(f"curl {url} failed ({process.returncode}): {err.strip()} {out.strip()}")
        for code, size in zip(codes, sizes, strict=True):
            if code != "200" or int(size) != expected_size:
                raise RuntimeError(f"curl {url}: HTTP {code}, {size} bytes (expected {expected_size})")
            total += int(size)
    return total / elapsed
