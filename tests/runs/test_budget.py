"""A run's budget: its images, once encoded, have a cap checked before any work, and only the worker
process that trains a run encodes them (a queued run holds references, never an encoded copy)."""

import threading
import time

import pytest
import torch
from torchvision.transforms import v2 as T

from core.data.encoded import Pending, encode_images
from core.errors import ConfigError
from core.runs import RunStore
from core.runs.jobs import start_run
from core.runs.processes import WorkerPool
from core.runs.tasks import TaskQueue
from core.train.base import TrainConfig
from tests.toys import Shapes

FROZEN = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top"]
ALICE = "a" * 16


def config(size=32):
    return TrainConfig(epochs=1, batch_size=8, freeze=FROZEN, image_size=size)


def test_a_run_above_the_budget_is_refused_at_once_saying_what_to_lower(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_MAX_RUN_INPUTS_MB", "1")
    store, queue = RunStore(tmp_path), TaskQueue(1, per_person=2)
    train, val = Shapes(60, 0), Shapes(20, 1)  # 80 images x 3 x 224 x 224 = 11.5 MB encoded
    began = time.perf_counter()
    with pytest.raises(ConfigError) as refused:
        start_run(store, train, val, backbone="efficientnet_lite0", pretrained=True, config=config(224),
                  owner=ALICE, queue=queue)
    assert time.perf_counter() - began < 1
    message = str(refused.value)
    assert "80 images at 224 px" in message and "11 MB" in message
    assert "Lower the input size to 66 px or less" in message  # 80 x 3 x 66² fits 1 MB, 67² does not
    assert store.list() == [] and queue.room_for(ALICE) == 2  # nothing written, nothing counted


def test_the_same_run_within_the_budget_is_queued(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_MAX_RUN_INPUTS_MB", "1")
    store, queue = RunStore(tmp_path), TaskQueue(1)
    queue.acquire("someone else", threading.Event())  # the one slot is taken: the run waits
    job = start_run(store, Shapes(60, 0), Shapes(20, 1), backbone="efficientnet_lite0", pretrained=True,
                    config=config(64), queue=queue)
    assert job.snapshot().status == "queued"
    job.cancel()
    queue.release("someone else")
    assert job.join(10)


def test_images_the_worker_encodes_are_those_the_server_would_have_encoded(tmp_path):
    store = RunStore(tmp_path)
    ds = Shapes(6, 3, size=40)
    store.folder("0123456789abcdef").mkdir(parents=True)
    store.save_inputs("0123456789abcdef", {"images": Pending(ds, 32), "big": Pending(ds, 56),
                                           "labels": torch.tensor(ds.labels)})
    loaded = store.load_inputs("0123456789abcdef")
    assert torch.equal(loaded["images"], encode_images(ds, 32))
    assert torch.equal(loaded["big"], encode_images(ds, 56))
    assert loaded["labels"].tolist() == ds.labels
    store.drop_inputs("0123456789abcdef")
    assert sorted(p.name for p in store.folder("0123456789abcdef").iterdir()) == []


def test_a_queued_run_holds_no_encoded_images_and_only_its_worker_encodes_them(tmp_path, monkeypatch):
    """The server never resizes a picture for a run: not while it waits, not when it starts."""
    def no_encoding_here(self, *args, **kwargs):
        raise AssertionError("the server encoded a run's images")

    monkeypatch.setattr(T.Resize, "forward", no_encoding_here)  # this process only: the worker is spawned
    pool = WorkerPool(1, threads=1)
    try:
        store, queue = RunStore(tmp_path), TaskQueue(1, pool=pool)
        queue.acquire("someone else", threading.Event())
        job = start_run(store, Shapes(8, 0), Shapes(4, 1), backbone="efficientnet_lite0", pretrained=True,
                        config=config(32), queue=queue)
        time.sleep(0.3)
        assert job.snapshot().status == "queued"
        assert not [p.name for p in store.folder(job.run_id).iterdir() if "inputs" in p.name or "sources" in p.name]
        queue.release("someone else")
        assert job.join(180)
        snap = job.snapshot()
        assert snap.status == "finished", snap.message
        assert len(snap.epochs) == 1
    finally:
        pool.close()
