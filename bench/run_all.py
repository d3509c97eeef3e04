"""Run every benchmark in bench/ one after the other, each in its own process, and sum up.

Run from anywhere: ``python bench/run_all.py [--device cpu|cuda|auto] [--quick] [--save]``.
A benchmark gets ``--device`` and ``--quick`` only when it declares them; one that does not is
run as it is, and the header says so. Nothing is written unless ``--save`` is given, and then only
under bench/out/ (ignored by git). Exits non-zero when any benchmark fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIRST = ("bench_training.py", "bench_mmd.py", "bench_saliency.py")
# Cheaper settings for benchmarks that have no --quick but do have these options.
QUICK_FALLBACK = {"bench_saliency.py": ["--repeats", "1"]}


def benchmarks() -> list[Path]:
    """The known benchmarks first, then any other bench_*.py, so a new one joins by itself."""
    found = sorted(HERE.glob("bench_*.py"))
    order = {name: i for i, name in enumerate(FIRST)}
    return sorted(found, key=lambda p: (order.get(p.name, len(FIRST)), p.name))


def _declares(source: str, option: str) -> bool:
    """Whether a benchmark's source defines ``option``, itself or through common.add_common_args."""
    if option in ("--device", "--quick") and "add_common_args(" in source:
        return True
    return f'"{option}"' in source or f"'{option}'" in source


def arguments(path: Path, device: str, quick: bool) -> tuple[list[str], list[str]]:
    """The options this benchmark understands, and notes on the ones it does not."""
    source = path.read_text(encoding="utf-8")
    argv, notes = [], []
    if _declares(source, "--device"):
        argv += ["--device", device]
    elif device != "auto":
        notes.append(f"has no --device option: it runs where it chooses, not necessarily on {device}")
    if quick:
        if _declares(source, "--quick"):
            argv.append("--quick")
        else:
            fallback = QUICK_FALLBACK.get(path.name, [])
            if fallback and _declares(source, fallback[0]):
                argv += fallback
                notes.append(f"has no --quick option: run with {' '.join(fallback)} instead")
            else:
                notes.append("has no --quick option: it runs at full size")
    return argv, notes


def run_one(path: Path, argv: list[str], log) -> tuple[int, float]:
    """Stream one benchmark's output (stdout and stderr) as it comes; returns (exit status, seconds)."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen([sys.executable, str(path), *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if log:
                log.write(line)
        status = proc.wait()
    return status, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (e.g. bench_training)")
    parser.add_argument("--skip", nargs="+", metavar="NAME", default=[], help="leave these out")
    parser.add_argument("--save", action="store_true", help="also write each output to bench/out/<time>/")
    args = parser.parse_args()

    def stem(name: str) -> str:
        return Path(name).stem

    chosen = [p for p in benchmarks()
              if (not args.only or p.stem in {stem(n) for n in args.only}) and p.stem not in {stem(n) for n in args.skip}]
    if not chosen:
        print("no benchmark matches --only/--skip", file=sys.stderr)
        return 2
    out_dir = None
    if args.save:
        out_dir = HERE / "out" / time.strftime("%Y%m%d-%H%M%S")
        out_dir.mkdir(parents=True, exist_ok=True)

    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"run_all: {len(chosen)} benchmark(s), device {args.device}{', quick' if args.quick else ''}; "
          f"{os.cpu_count()} cores, load average {load} at start (other work on the machine skews timings)")
    results = []
    for path in chosen:
        argv, notes = arguments(path, args.device, args.quick)
        print(f"\n{'=' * 100}\n{path.name} {' '.join(argv)}".rstrip())
        for note in notes:
            print(f"  note: {path.name} {note}")
        print("=" * 100, flush=True)
        log = open(out_dir / f"{path.stem}.txt", "w", encoding="utf-8") if out_dir else None
        try:
            status, seconds = run_one(path, argv, log)
        finally:
            if log:
                log.close()
        results.append((path.name, status, seconds))

    print(f"\n{'=' * 100}\nrun_all summary")
    width = max(len(name) for name, _, _ in results)
    for name, status, seconds in results:
        verdict = "ok" if status == 0 else f"FAILED (exit status {status})"
        print(f"  {name:<{width}}  {seconds:7.1f} s  {verdict}")
    if out_dir:
        print(f"outputs saved under {out_dir.relative_to(ROOT)}")
    return 0 if all(status == 0 for _, status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
