"""A run beside other work, by how OpenMP's idle threads wait: sleep at once (PASSIVE), spin a little, or
spin for libgomp's default 300,000 rounds.

    python bench/bench_contention.py [--hogs 6] [--runs 3] [--quick] [--own-session]

A classroom server never trains alone: page reruns, analyses and other runs share its cores. Each
case runs the default demo run (feature extraction, as a click on Train does) ``--runs`` times in
a fresh process with that setting, quiet and then beside ``--hogs`` busy processes, and prints each
case's median repeat run (the first run of each process caches the features and is reported apart)
and its ratio to PASSIVE in the same conditions. The child imports torch before ``core``, so the
engine's own default does not apply there: each case is exactly its setting. The process's torch threads are the
worker pool's default for one slot on this machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt_ratio, print_table, run_child  # noqa: E402

# name -> environment of the process that trains. libgomp's default (no setting) spins for 300,000
# rounds before it sleeps; GOMP_SPINCOUNT shortens that; PASSIVE sleeps at once.
CASES = {"PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
         "spin 10k": {"GOMP_SPINCOUNT": "10000"},
         "default": {}}
# with --own-session: the engine's choice (PASSIVE), with the pool's threads and with one
SESSION_CASES = {"PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0), "PASSIVE, 1 thread": ({"OMP_WAIT_POLICY": "PASSIVE"}, 1)}
BASE = "PASSIVE"


def _spin() -> None:
    while True:
        pass


def child(runs: int, threads: int) -> None:
    """In a fresh process, whose OMP_WAIT_POLICY the parent set: time ``runs`` default demo runs."""
    import torch

    torch.set_num_threads(threads)
    from dataclasses import replace

    from core import data, models
    from core.runs import RunStore
    from core.runs.jobs import create_run
    from core.runs.worker import train_run_folder
    from core.train.base import TrainConfig
    from core.train.strategies import strategy_config

    train_ds, val_ds = data.split(data.demo_dataset("source", per_class=20, seed=0), 0.25, seed=0)
    preset = strategy_config("feature_extraction", models.group_names(models.DEFAULT_BACKBONE))
    config = replace(TrainConfig(), freeze=list(preset.freeze), lr_multipliers=dict(preset.lr_multipliers))
    models.load(models.DEFAULT_BACKBONE, pretrained=True)
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        for _ in range(runs):
            record = create_run(store, train_ds, val_ds, backbone=models.DEFAULT_BACKBONE, pretrained=True,
                                config=config)
            started = time.perf_counter()
            status = train_run_folder(store.folder(record.id))
            seconds.append(time.perf_counter() - started)
            assert status == "finished", status
    print(json.dumps({"seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hogs", type=int, default=6, help="busy processes beside the run")
    parser.add_argument("--runs", type=int, default=3, help="runs per process (the first caches features)")
    parser.add_argument("--quick", action="store_true", help="two runs per process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--own-session", action="store_true",
                        help="each run in a session of its own, as the engine's workers are, with the pool's "
                             "threads and with one")
    args = parser.parse_args()
    runs = 2 if args.quick else max(2, args.runs)
    cores = os.cpu_count() or 2
    threads = args.threads or cores  # WorkerPool(1): every core to its one worker
    if args.child:
        child(runs, threads)
        return

    for setting in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):  # each case sets only its own
        os.environ.pop(setting, None)
    print(f"{cores} cores, {threads} torch threads, {runs} runs per process; load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    results = {}  # (case, busy processes) -> the child's seconds per run, or its error
    for hogs in (0, args.hogs):
        hog_processes = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(hogs)]
        for process in hog_processes:
            process.start()
        try:
            cases = SESSION_CASES if args.own_session else {name: (env, 0) for name, env in CASES.items()}
            for name, (env, case_threads) in cases.items():
                out = run_child([__file__, "--child", "--runs", str(runs), "--threads", str(case_threads or threads)],
                                timeout=1800, env=env, new_session=args.own_session)
                results[name, hogs] = out.get("error") or out["seconds"]
        finally:
            for process in hog_processes:
                process.terminate()
    medians = {key: statistics.median(seconds[1:]) for key, seconds in results.items() if not isinstance(seconds, str)}
    table = []
    for (name, hogs), seconds in results.items():
        if isinstance(seconds, str):
            table.append([f"{name}, {hogs} busy", "failed", seconds, ""])
            continue
        base = medians.get((BASE, hogs))
        table.append([f"{name}, {hogs} busy", f"{seconds[0]:.2f} s", f"{medians[name, hogs]:.2f} s",
                      fmt_ratio(medians[name, hogs] / base) if base else "n/a"])
    print_table(("policy, beside", "first run", "repeat run (median)", f"vs {BASE}"), table,
                title="The default demo run in a session of its own, by torch threads" if args.own_session
                else "The default demo run by OpenMP wait policy")


if __name__ == "__main__":
    main()
