"""Figures, targets and what the run reports: progress lines, the table, the JSON document."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness import Bench, Profile

HERE = Path(__file__).resolve().parent

#: Other work on the machine above this share of all CPUs makes a phase's figures suspect.
BUSY_MACHINE = 0.15


#: Short names of the references in targets and table columns.
SHORT = {"distribution": "Dist", "nginx": "nginx", "seaweedfs": "S3"}


@dataclass
class Target:
    """What Dockyard should reach: ``value(dockyard) / value(reference) <op> ratio``.

    An empty ``reference`` holds Dockyard's own value to ``ratio`` (a count, say ≤ 4).
    """

    reference: str
    op: str  # ">=" or "<="
    ratio: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.ratio if self.op == ">=" else ratio <= self.ratio

    def __str__(self) -> str:
        if not self.reference:
            return f"{self.op}{self.ratio:g}"
        return f"{self.op}{self.ratio:g}x {SHORT[self.reference]}"


@dataclass
class Figure:
    """One measured quantity: samples and their median per server, and the target it is held to.

    ``mean`` makes the value the mean of the samples instead: for quantities counted
    in coarse steps (CPU time in 10 ms kernel ticks), where the median of a few
    samples lands on one of the steps.
    """

    key: str
    label: str
    unit: str
    target: Target | None = None
    values: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    detail: dict[str, dict[str, object]] = field(default_factory=dict)
    mean: bool = False

    def add(self, server: str, sample: float, **detail: object) -> None:
        self.samples.setdefault(server, []).append(sample)
        average = statistics.fmean if self.mean else statistics.median
        self.values[server] = average(self.samples[server])
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
        if not self.target.reference:
            mine = self.values.get("dockyard")
            return None if mine is None else self.target.met(mine)
        ratio = self.ratio(self.target.reference)
        return None if ratio is None else self.target.met(ratio)


# -- progress ---------------------------------------------------------------------------------


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


# -- the table --------------------------------------------------------------------------------


def table(figures: list[Figure], reference: str = "nginx") -> str:
    """The figures; ``reference`` names the third column (nginx, or seaweedfs on S3)."""
    label = {"nginx": "nginx", "seaweedfs": "SeaweedFS"}[reference]
    header = (
        "figure",
        "unit",
        "Dockyard",
        "Distribution",
        label,
        "D/Dist",
        f"D/{SHORT[reference]}",
        "target",
        "met",
    )
    rows = [header]
    for figure in figures:
        met = figure.target_met()
        to_dist, to_ref = figure.ratio("distribution"), figure.ratio(reference)
        rows.append(
            (
                figure.label,
                figure.unit,
                fmt(figure.values.get("dockyard")),
                fmt(figure.values.get("distribution")),
                fmt(figure.values.get(reference)),
                "-" if to_dist is None else f"{to_dist:.2f}x",
                "-" if to_ref is None else f"{to_ref:.2f}x",
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


def report(bench: Bench, profile: Profile, elapsed: float, stamp: dt.datetime, access_log: bool) -> None:
    """Print the heading, the table, the other load per phase, notes and errors to stdout."""
    env = bench.info.get("environment", {})
    assert isinstance(env, dict)
    commit = env.get("dockyard_commit", "?") + ("+changes" if env.get("dockyard_uncommitted_changes") else "")
    print()
    reference = bench.pull_reference.name
    print(
        f"Dockyard {commit} ({_auth_text(bench, 'dockyard')}) vs CNCF Distribution 2.8 "
        f"({_auth_text(bench, 'distribution')}) / {bench.pull_reference.label}: {profile.name} run, "
        f"{elapsed:.0f} s, {stamp:%Y-%m-%d %H:%M} UTC, access logs {'on' if access_log else 'off'}, "
        f"storage {bench.info.get('storage', 'filesystem')}, database {bench.info.get('database', '?')}"
    )
    if _auth_text(bench, "dockyard") != _auth_text(bench, "distribution"):
        print(
            "Dockyard checks a Bearer token on every request, Distribution (as Debian ships it, "
            "minus htpasswd) checks nothing: the comparison is conservative for Dockyard"
        )
    short = SHORT[reference]
    print(f"medians of repeated runs; D/Dist and D/{short} are Dockyard's figure divided by the other's")
    print()
    print(table(list(bench.figures.values()), reference))
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


def _auth_text(bench: Bench, server: str) -> str:
    """How the bench authenticated to ``server``: "Bearer token auth", "no auth" or "auth ?"."""
    auth = bench.info.get("auth")
    scheme = auth.get(server, {}).get("scheme", "?") if isinstance(auth, dict) else "?"
    if scheme is None:
        return "no auth"
    return f"{scheme} token auth" if scheme == "Bearer" else f"auth {scheme}"


# -- the JSON document ------------------------------------------------------------------------


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


def document(
    bench: Bench, elapsed: float, stamp: dt.datetime, access_log: bool, phases: set[str]
) -> dict[str, object]:
    """Everything the run measured, for bench/results/<time>-<profile>.json."""
    return {
        "started_utc": stamp.isoformat(),
        "elapsed_s": round(elapsed, 1),
        "profile": asdict(bench.profile),
        "access_log": access_log,
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
                "ratio_to_seaweedfs": f.ratio("seaweedfs"),
                "target": None if f.target is None else {**asdict(f.target), "text": str(f.target)},
                "target_met": f.target_met(),
            }
            for f in bench.figures.values()
        ],
        "notes": bench.notes,
        "errors": bench.errors,
    }
