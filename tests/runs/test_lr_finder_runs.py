"""The learning-rate sweep is a run like any other: queued, swept in a worker process that reads and
writes only the run's folder, stoppable, and failed clearly on input it cannot use."""

import json
import os
import time

import pytest

from core import cli, models
from core.errors import ConfigError
from core.methods.lr_finder import find_lr
from core.runs.kinds.lr_find import start_lr_sweep, sweep_of
from core.runs.tasks import TaskQueue
from core.train.base import TrainConfig
from tests.toys import Shapes

ALICE = "a" * 16
BACKBONE = models.DEFAULT_BACKBONE
BODY = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top"]




@pytest.fixture(scope="module")
def shapes():
    return Shapes(16, 0, size=32)


def config(**changes):
    return TrainConfig(**{"batch_size": 8, "image_size": 32, "freeze": BODY, "seed": 3, **changes})


def wait_for(condition, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_sweep_in_a_worker_suggests_what_the_same_sweep_suggests_in_process(store, pool, shapes, capsys):
    job = start_lr_sweep(store, shapes, config(), backbone=BACKBONE, pretrained=True, steps=20, owner=ALICE,
                         queue=TaskQueue(1, pool=pool))
    model = models.starting_model(BACKBONE, shapes.classes, pretrained=True, seed=3, image_size=32)
    here = find_lr(model, shapes, config(), steps=20)
    assert job.join(180), "the sweep did not end in time"
    record = store.get(job.run_id)
    assert record.status == "finished", record.message
    assert record.config["kind"] == "lr_find" and record.owner == ALICE and job.worker_pid != os.getpid()
    there = sweep_of(record)  # from the record alone, as the page reads it
    assert there.suggestion == pytest.approx(here.suggestion, rel=1e-4)
    assert there.method == here.method and there.stopped_early == here.stopped_early
    assert there.lrs == pytest.approx(here.lrs, rel=1e-6)
    assert there.smoothed == pytest.approx(here.smoothed, rel=1e-4)
    snap = job.snapshot()  # what the page polled: every step's learning rate and loss
    assert snap.status == "finished" and snap.extra["step"] == snap.extra["steps"] == 20
    assert snap.extra["lr"] == pytest.approx(here.lrs[-1]) and snap.extra["loss"] == pytest.approx(here.losses[-1], rel=1e-4)
    assert not store.has_model(job.run_id)  # a sweep leaves no weights behind
    assert not (store.folder(job.run_id) / "inputs.safetensors").exists()
    assert cli.main(["list", "--json", "--data-dir", str(store.root.parent)]) == 0
    assert json.loads(capsys.readouterr().out) == []  # and is not listed among the runs with a model


def test_stop_ends_a_sweep_within_a_second_and_leaves_no_result(store, pool, shapes):
    slow = config(batch_size=2, freeze=[])  # every layer trains: each step takes a while
    job = start_lr_sweep(store, shapes, slow, backbone=BACKBONE, pretrained=True, steps=1000,
                         queue=TaskQueue(1, pool=pool))
    wait_for(lambda: job.snapshot().extra.get("step", 0) >= 2)
    asked = time.monotonic()
    job.cancel()
    assert job.join(20)
    record = store.get(job.run_id)
    assert time.monotonic() - asked < 1.5, "the sweep went on after Stop"
    assert record.status == "cancelled" and sweep_of(record) is None
    assert "stopped" in record.message


def test_a_weights_file_the_sweep_cannot_use_fails_it_with_the_files_own_problem(store, pool, shapes, tmp_path):
    broken = tmp_path / "mine.pt"
    broken.write_bytes(b"this is not a weights file")
    job = start_lr_sweep(store, shapes, config(), backbone=BACKBONE, pretrained=True, weights_path=broken,
                         queue=TaskQueue(1, pool=pool))
    assert job.join(120)
    record = store.get(job.run_id)
    assert record.status == "failed" and "mine.pt" in record.message and "crashed" not in record.message
    assert sweep_of(record) is None


def test_an_impossible_sweep_is_refused_before_it_is_queued(store, shapes):
    with pytest.raises(ConfigError, match="start < end"):
        start_lr_sweep(store, shapes, config(), backbone=BACKBONE, pretrained=True, start=1.0, end=1e-3,
                       queue=TaskQueue(1))
    assert store.list() == []
