"""A worker's memory over consecutive full fine-tunes: does it go back down between runs?

    python bench/bench_worker_memory.py [--runs 20] [--size 128] [--epochs 2]

One warm worker (``WorkerPool(1)``, the server's settings: ``TRANSFER_LAB_WORKER_RECYCLE_MB``)
trains ``--runs`` full fine-tunes (every layer trains) of the demo set one after the other, as a
class clicking Train does. Printed: the worker's resident memory once warm (the baseline), after
each run (after ``give_memory_back``), as a ratio to the baseline, and whether the pool replaced
the worker. Before workers gave memory back it went 1.0 GB -> 2.45 GB over 10 runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from core.data import demo_dataset, split
    from core.runs import RunStore
    from core.runs.jobs import start_run
    from core.runs.processes import WorkerPool
    from core.runs.tasks import TaskQueue
    from core.runs.worker import resident_mb
    from core.train.base import TrainConfig

    pool = WorkerPool(1)
    assert pool.wait_ready(300)
    baseline = resident_mb(pool.pids()[0])
    print(f"worker warm: {baseline:,.0f} MB (threshold for a replacement: {pool.recycle_mb:,} MB)")
    train, val = split(demo_dataset("source", per_class=20), 0.25, 0)
    config = TrainConfig(epochs=args.epochs, image_size=args.size, freeze=[], early_stopping=0)
    with tempfile.TemporaryDirectory() as tmp:
        store, queue = RunStore(Path(tmp)), TaskQueue(1, pool=pool)
        for i in range(args.runs):
            began = time.perf_counter()
            job = start_run(store, train, val, backbone="efficientnet_lite0", pretrained=True, config=config,
                            queue=queue)
            job.join()
            pid, mb = pool.memory[-1]
            print(f"run {i + 1:2d}: {job.snapshot().status}, {time.perf_counter() - began:5.1f} s, worker {pid} "
                  f"{mb:,.0f} MB after it ({mb / baseline:.2f}x warm){', replaced' if pid not in pool.pids() else ''}",
                  flush=True)
    pool.close()


if __name__ == "__main__":
    main()
