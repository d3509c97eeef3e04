"""DAN comparisons and distillations are runs like any other: queued, trained in a worker process
that reads and writes only the run's folder, stoppable, and failed clearly when the worker dies."""

import os
import signal
import time

import pytest
import torch

from core import data, models
from core.data.encoded import encode_images, labels_of
from core.errors import ConfigError
from core.methods.adaptation import adaptation_config, compare_adaptation, default_freeze
from core.runs.jobs import start_run
from core.runs.kinds.dan import comparison_of, start_comparison
from core.runs.kinds.distill import VARIANTS, start_distillation, students_of
from core.runs.tasks import TaskQueue
from core.train.base import TrainConfig, evaluate
from tests.toys import Shapes

ALICE = "a" * 16
FROZEN = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top"]




def dan_config(**changes):
    return adaptation_config(**{"epochs": 2, "batch_size": 4, "image_size": 32, **changes})


def wait_for(condition, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def numbers(arm):
    return [v for e in arm.history.epochs
            for v in (e.train_loss, e.ce, e.mmd, e.val_loss, e.val_acc, e.target_acc, e.layer_mmd)]


def test_a_comparison_queued_as_a_run_gives_the_arms_of_the_same_comparison_in_process(store, pool, small_domains):
    train, val, target = small_domains
    job = start_comparison(train, val, target, dan_config(), 1.0, store=store, owner=ALICE,
                           queue=TaskQueue(1, pool=pool))
    here = compare_adaptation(train, val, target, dan_config(), 1.0)  # in this process, meanwhile
    assert job.join(300), "the comparison did not end in time"
    record = store.get(job.run_id)
    assert record.status == "finished", record.message
    assert record.config["kind"] == "dan" and record.owner == ALICE and job.worker_pid != os.getpid()
    queued = comparison_of(record)  # from the record alone
    assert [a.name for a in queued.arms] == ["plain", "DAN"] and [a.lam for a in queued.arms] == [0.0, 1.0]
    for mine, theirs in zip(queued.arms, here.arms, strict=True):
        assert len(mine.history.epochs) == 2
        assert numbers(mine) == pytest.approx(numbers(theirs), rel=1e-4, abs=1e-6)  # same seed, same split
        assert (mine.mmd_before, mine.mmd_after) == pytest.approx((theirs.mmd_before, theirs.mmd_after), rel=1e-4)
    snap = job.snapshot()  # what the page polled: both arms' epochs, from the run's events
    assert snap.status == "finished" and snap.progress == pytest.approx(1.0)
    assert {arm: [e["epoch"] for e in rows] for arm, rows in snap.epochs.items()} == {"plain": [1, 2], "DAN": [1, 2]}
    store.load_model(job.run_id)  # the adapted model is the run's model
    assert not (store.folder(job.run_id) / "inputs.safetensors").exists()


def test_a_comparison_with_nothing_trainable_before_the_layer_is_refused_before_it_is_queued(store, small_domains):
    train, val, target = small_domains
    frozen = dan_config(freeze=default_freeze(models.group_names(models.DEFAULT_BACKBONE), trainable=0))
    with pytest.raises(ConfigError, match="trainable layers before the adapted layer"):
        start_comparison(train, val, target, frozen, 1.0, store=store, queue=TaskQueue(1))
    assert store.list() == []


def test_stop_ends_a_comparison_and_a_killed_worker_fails_the_next_one_clearly(store, pool, small_domains):
    train, val, target = small_domains
    queue = TaskQueue(1, pool=pool)
    slow = dan_config(epochs=40, batch_size=2)
    job = start_comparison(train, val, target, slow, 1.0, store=store, queue=queue)
    wait_for(lambda: len(job.snapshot().batch_losses) >= 2)
    job.cancel()
    assert job.join(20)
    assert store.get(job.run_id).status == "cancelled"

    job = start_comparison(train, val, target, slow, 1.0, store=store, queue=queue)
    wait_for(lambda: isinstance(job.snapshot().epochs, dict) and any(job.snapshot().epochs.values()))
    os.kill(job.worker_pid, signal.SIGKILL)
    assert job.join(30)
    record = store.get(job.run_id)
    assert record.status == "failed" and "SIGKILL" in record.message and "start the run again" in record.message
    assert record.info["arms"]["plain"]["epochs"]  # what it had trained is still in its record
    assert job.snapshot().status == "failed"
    wait_for(lambda: len(pool.pids()) == 1)  # the pool replaced its worker


def test_a_distillation_trains_in_a_worker_and_its_record_carries_the_students_histories(store, pool):
    train_ds, val_ds = Shapes(8, 0), Shapes(4, 1)
    queue = TaskQueue(1, pool=pool)
    config = TrainConfig(epochs=1, batch_size=8, freeze=FROZEN, image_size=32)
    teacher = start_run(store, train_ds, val_ds, backbone="efficientnet_lite0", pretrained=True, config=config,
                        queue=queue)
    assert teacher.join(180) and store.get(teacher.run_id).status == "finished"

    job = start_distillation(store, teacher.run_id, train_ds, val_ds, config, 2.0, 0.5,
                             backbone="efficientnet_lite0", owner=ALICE, queue=queue)
    assert job.join(300), "the distillation did not end in time"
    record = store.get(job.run_id)
    assert record.status == "finished", record.message
    assert record.config["kind"] == "distill" and record.config["teacher"] == teacher.run_id
    students = students_of(record)
    assert [len(students[v]) for v in VARIANTS] == [1, 1]
    assert record.epochs == students["with teacher"]  # the taught student is the run's own history
    # the same start: only the teacher made the two students differ
    assert students["with teacher"][0]["train_loss"] != students["without teacher"][0]["train_loss"]
    assert 0 <= record.info["teacher_val_acc"] <= 1
    snap = job.snapshot()
    assert snap.status == "finished" and all(len(snap.epochs[v]) == 1 for v in VARIANTS)
    assert snap.teacher_val_acc == record.info["teacher_val_acc"]
    student = store.load_model(job.run_id)  # the saved student is the one that was scored
    _, acc = evaluate(student, encode_images(val_ds, 32), labels_of(val_ds),
                      torch.tensor(student.mean).view(1, 3, 1, 1), torch.tensor(student.std).view(1, 3, 1, 1), "cpu")
    assert acc == pytest.approx(record.epochs[-1]["val_acc"])


def test_a_teacher_of_other_classes_is_refused_before_anything_is_queued(store, pool):
    config = TrainConfig(epochs=1, batch_size=8, freeze=FROZEN, image_size=32)
    teacher = start_run(store, Shapes(8, 0), Shapes(4, 1), backbone="efficientnet_lite0", pretrained=True,
                        config=config, queue=TaskQueue(1, pool=pool))
    assert teacher.join(180)
    others = data.demo_dataset("source", per_class=2, size=32)
    with pytest.raises(ConfigError, match="same, in the same order"):
        start_distillation(store, teacher.run_id, others, others, config, backbone="efficientnet_lite0")
    assert [r.id for r in store.list()] == [teacher.run_id]
