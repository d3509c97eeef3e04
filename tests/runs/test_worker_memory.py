"""Workers give memory back: after each run a worker frees what it can, and one still above the
threshold is replaced by a fresh, warm worker, so the next run neither waits for torch nor inherits it."""

import time

from core.runs import RunStore
from core.runs.jobs import start_run
from core.runs.processes import WorkerPool
from core.runs.tasks import TaskQueue
from core.train.base import TrainConfig
from tests.toys import Shapes

FROZEN = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top"]


def train_once(store, queue):
    job = start_run(store, Shapes(8, 0), Shapes(4, 1), backbone="efficientnet_lite0", pretrained=True,
                    config=TrainConfig(epochs=1, batch_size=8, freeze=FROZEN, image_size=32), queue=queue)
    assert job.join(180)
    assert job.snapshot().status == "finished", job.snapshot().message
    return job.worker_pid


def test_a_worker_above_the_threshold_after_a_run_is_replaced_by_a_warm_one(tmp_path):
    pool = WorkerPool(1, threads=1, recycle_mb=1)  # every worker is above 1 MB: each run gets a fresh one
    try:
        store, queue = RunStore(tmp_path), TaskQueue(1, pool=pool)
        first = train_once(store, queue)
        assert pool.replaced == 1 and pool.memory[0][0] == first and pool.memory[0][1] > 1
        assert pool.pids() != [first]
        began = time.perf_counter()
        assert pool.wait_ready(120)  # the replacement warms up on its own, before it is needed
        assert train_once(store, queue) not in (first, None)
        assert time.perf_counter() - began < 180
    finally:
        pool.close()


def test_a_worker_below_the_threshold_keeps_training_the_next_run(tmp_path):
    pool = WorkerPool(1, threads=1, recycle_mb=100_000)
    try:
        store, queue = RunStore(tmp_path), TaskQueue(1, pool=pool)
        assert train_once(store, queue) == train_once(store, queue)
        assert pool.replaced == 0 and len(pool.memory) == 2
    finally:
        pool.close()
