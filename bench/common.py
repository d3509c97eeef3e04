"""Shared helpers of the benchmarks: device choice, timers, peak memory of a child process, tables.

Benchmarks print ratios against a baseline measured in the same process, because the machines
they run on are shared and noisy: an absolute number means little, a ratio a little more.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = [
    "ROOT",
    "add_common_args",
    "resolve_device",
    "sync",
    "time_once",
    "median_time",
    "peak_rss_mib",
    "ru_maxrss_mib",
    "run_child",
    "print_table",
    "fmt_ratio",
    "machine_line",
]


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every benchmark accepts: ``--device cpu|cuda|auto`` and ``--quick``."""
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to compute (auto: CUDA when present, else CPU)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    return parser


def resolve_device(name: str):
    """``auto`` -> cuda when available, else cpu; exits with a message when cuda is asked for but absent.

    MPS is left out on purpose: ``auto`` here means "the accelerator this bench knows how to sync".
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA GPU here.")
    return torch.device(name)


def sync(device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not only its launch."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def time_once(fn: Callable[[], object], device=None) -> float:
    """Seconds one call of ``fn`` takes (GPU work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, device=None) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_once(fn, device) for _ in range(max(1, repeats)))


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB.

    On Linux this is ``VmHWM`` from /proc/self/status, the high-water mark of this process's own
    memory map. ``ru_maxrss`` is not used there because Linux carries it across fork and exec: a
    child started by a 2 GB parent reports at least 2 GB, whatever it does itself.
    Elsewhere, ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return ru_maxrss_mib()


def ru_maxrss_mib() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in MiB; floored by the parent's size at spawn on Linux."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def run_child(argv: Sequence[str], timeout: float | None = None, env: dict | None = None,
              new_session: bool = False) -> dict:
    """Run ``python argv...`` from the repository root in a fresh process; returns the JSON object
    printed on its last stdout line, plus ``wall_s`` (the child's wall time seen from here).

    A fresh process has a memory map of its own, so its ``peak_rss_mib()`` is the peak of that
    one workload. ``new_session``: the child starts a session of its own, as the engine's workers
    do. On failure returns ``{"error": last stderr line}``.
    """
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT,
                              timeout=timeout, env={**os.environ, **(env or {})}, start_new_session=new_session)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return {"error": tail[-1]}
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": f"no JSON on the child's last line: {lines[-1][:120]}"}
    result["wall_s"] = wall
    return result


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> None:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    if title:
        print(title)
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    print()


def fmt_ratio(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}x"


def machine_line(device) -> str:
    """One line on what the numbers were measured on, the load average included."""
    import torch

    if getattr(device, "type", "") == "cuda":
        where = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        where = f"CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores"
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"torch {torch.__version__} on {where}; load average {load} (shared machine: expect noise)"
