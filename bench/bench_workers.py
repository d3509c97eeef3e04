"""What the worker processes cost: starting one, and a click on Train to the first point on the curve.

    python bench/bench_workers.py [--runs 3] [--size 128]

1. spawn cost: from ``WorkerPool(1)`` to a worker that has imported torch and loaded the
   default backbone (what app.py pays once, at server start, and the pool after a crash);
2. first point through the warm pool: ``start_run`` on the demo set with the default strategy
   (feature extraction) until the first training batch is on the curve (issue 11: within 3 s);
3. the same run's fit alone in this process, for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    from core import models
    from core.data import demo_dataset, split
    from core.runs import RunStore
    from core.runs.jobs import start_run
    from core.runs.processes import WorkerPool
    from core.runs.tasks import TaskQueue
    from core.train.base import BatchProgress, Callback, TrainConfig
    from core.train.fitting import fit

    started = time.perf_counter()
    pool = WorkerPool(1)
    assert pool.wait_ready(300), "the worker did not start"
    spawn = time.perf_counter() - started
    print(f"spawn + import torch + load {models.DEFAULT_BACKBONE}: {spawn:.1f} s "
          f"({pool.threads} torch thread(s) per worker)")

    train_ds, val_ds = split(demo_dataset("source"), 0.25, 0)
    groups = models.group_names(models.DEFAULT_BACKBONE)
    config = TrainConfig(epochs=2, image_size=args.size, freeze=[g for g in groups if g != "head"])
    queue = TaskQueue(1, pool=pool)
    firsts, totals = [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        for _ in range(args.runs):
            job = start_run(store, train_ds, val_ds, backbone=models.DEFAULT_BACKBONE, pretrained=True,
                            config=config, queue=queue)
            while not job.join(0.05):
                pass
            snap = job.snapshot()
            assert snap.status == "finished", snap.message
            firsts.append(snap.first_point_after)
            totals.append(snap.seconds)
    pool.close()
    print(f"click to first point through the warm pool: median {statistics.median(firsts):.2f} s "
          f"({' '.join(f'{x:.2f}' for x in firsts)}); whole run {statistics.median(totals):.1f} s")

    class First(Callback):
        def __init__(self):
            self.t0, self.first = time.perf_counter(), None

        def on_batch_end(self, progress: BatchProgress) -> None:
            if progress.phase == "train" and self.first is None:
                self.first = time.perf_counter() - self.t0

    in_process = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        model = models.starting_model(models.DEFAULT_BACKBONE, train_ds.classes, image_size=args.size)
        cb = First()
        cb.t0 = t0
        fit(model, train_ds, val_ds, config, [cb])
        in_process.append(cb.first)
    print(f"the same in this process (build + fit, no worker): median {statistics.median(in_process):.2f} s")


if __name__ == "__main__":
    main()
