import threading
import time

import pytest
import torch

from core import backbones
from core.jobs import TrainingQueue, get_job, start_run, submit
from core.errors import CheckpointError
from core.runs import RunRecord, RunStore, is_run_id, new_run_id
from core.training import TrainConfig, predict_proba
from tests.test_training import Shapes

FROZEN = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top"]


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "data")


def quick_config(**changes):
    return TrainConfig(**{"epochs": 2, "batch_size": 8, "freeze": FROZEN, "image_size": 32, **changes})


def default_build():
    return backbones.classifier(backbones.load(), 2, classes=["disc", "square"], image_size=32)


def launch(store, queue, build=default_build, epochs=1):
    """Submit a run with a model builder of the test's choosing (to hold or crash a slot)."""
    record = RunRecord(id=new_run_id(), status="queued", created=time.time(), backbone="efficientnet_lite0",
                       pretrained=True, classes=["disc", "square"], config={})
    return submit(record, store, build, Shapes(8, 0), Shapes(4, 1), quick_config(epochs=epochs), queue)


def wait(job, timeout=120):
    assert job.join(timeout), "the run did not finish in time"
    return job.snapshot()


def test_a_run_trains_in_the_background_and_is_saved_with_its_model(store):
    train_ds, val_ds = Shapes(16, 0), Shapes(6, 1)
    job = start_run(store, train_ds, val_ds, backbone="efficientnet_lite0", pretrained=True,
                    config=quick_config(), owner="aaaa", queue=TrainingQueue(1))
    assert is_run_id(job.run_id) and get_job(job.run_id) is job
    snap = wait(job)
    assert snap.status == "finished", snap.message
    assert [e.epoch for e in snap.epochs] == [1, 2]
    assert snap.first_point_after is not None and snap.progress == pytest.approx(1.0)
    record = store.get(job.run_id)
    assert record.status == "finished" and record.owner == "aaaa" and len(record.epochs) == 2
    assert record.classes == ["disc", "square"]
    reloaded = store.load_model(job.run_id)
    images = [train_ds[i][0] for i in range(4)]
    assert torch.allclose(predict_proba(reloaded, images), predict_proba(job.model, images), atol=1e-6)


def test_runs_wait_their_turn_in_the_server_queue(store):
    queue = TrainingQueue(1)
    gate = threading.Event()

    def slow_build():
        gate.wait(30)
        return default_build()

    first = launch(store, queue, slow_build)
    second = launch(store, queue)
    deadline = time.time() + 10
    while second.snapshot().queue_position != 1 and time.time() < deadline:
        time.sleep(0.05)
    assert second.snapshot().status == "queued" and second.snapshot().queue_position == 1
    assert first.snapshot().status == "preparing"
    gate.set()
    assert wait(first).status == "finished"
    assert wait(second).status == "finished"


def test_a_queued_run_can_be_cancelled_and_the_queue_goes_on(store):
    queue = TrainingQueue(1)
    gate = threading.Event()
    blocker = launch(store, queue, lambda: (gate.wait(30), default_build())[1])
    waiting = launch(store, queue)
    waiting.cancel()
    assert wait(waiting).status == "cancelled"
    assert store.get(waiting.run_id).status == "cancelled"
    gate.set()
    assert wait(blocker).status == "finished"
    assert queue.running == 0 and queue.waiting == 0


def test_a_crash_inside_a_run_is_reported_and_the_queue_goes_on(store):
    queue = TrainingQueue(1)
    snap = wait(launch(store, queue, lambda: 1 / 0))
    assert snap.status == "failed" and "ZeroDivisionError" in snap.message
    assert store.get(snap.run_id).status == "failed"
    assert wait(launch(store, queue)).status == "finished"


def test_offline_torchvision_weights_fail_the_run_with_instructions(store, monkeypatch):
    import urllib.error

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    job = start_run(store, Shapes(8, 0), Shapes(4, 1), backbone="resnet18", pretrained=True,
                    config=quick_config(freeze=[]), queue=TrainingQueue(1))
    snap = wait(job)
    assert snap.status == "failed" and "TORCH_HOME" in snap.message


def test_run_ids_from_a_link_cannot_reach_outside_the_store(store):
    assert store.get("../../etc") is None
    assert store.get("0123456789abcdef") is None
    assert not is_run_id("0123456789ABCDEF/..")


def test_the_oldest_finished_runs_go_when_the_store_is_over_its_cap(tmp_path):
    store = RunStore(tmp_path / "data", cap_mb=10)
    jobs = []
    for seed in range(3):
        job = start_run(store, Shapes(8, seed), Shapes(4, 9), backbone="efficientnet_lite0", pretrained=True,
                        config=quick_config(epochs=1), queue=TrainingQueue(1))
        wait(job)
        jobs.append(job)
    # each Lite0 model is ~14 MB, so none fits under 10 MB, but the run that just finished stays
    remaining = {r.id for r in store.list()}
    assert remaining == {jobs[2].run_id}


def test_a_runs_starting_model_is_kept_exactly_while_other_threads_draw_random_numbers(store):
    """The Feature maps page compares a run's "before" with its "after": "before" must be the model
    the run really started from, even when another session's training draws from torch's global
    generator (dropout) while this one is built or rebuilt."""
    built = {}

    def build():
        model = backbones.starting_model("resnet18", ["disc", "square"], pretrained=False, seed=7, image_size=32)
        built.update({k: v.clone() for k, v in model.state_dict().items()})
        return model

    stop = threading.Event()

    def another_sessions_dropout():
        while not stop.is_set():
            torch.rand(4096)

    noise = threading.Thread(target=another_sessions_dropout, daemon=True)
    noise.start()
    try:
        config = quick_config(freeze=[], seed=7, epochs=1)
        record = RunRecord(id=new_run_id(), status="queued", created=time.time(), backbone="resnet18",
                           pretrained=False, classes=["disc", "square"], config=config.to_dict())
        job = submit(record, store, build, Shapes(8, 0), Shapes(4, 1), config, TrainingQueue(1))
        wait(job)
        again = store.load_starting_model(job.run_id)
    finally:
        stop.set()
        noise.join()
    assert set(again.state_dict()) == set(built)
    for name, tensor in again.state_dict().items():
        assert torch.equal(tensor, built[name]), name
    trained = store.load_model(job.run_id)
    assert not torch.equal(trained.conv1.weight, again.conv1.weight)  # training moved it


def test_damaged_weights_files_of_a_run_are_a_clear_error(store):
    job = launch(store, TrainingQueue(1))
    wait(job)
    store.load_starting_model(job.run_id), store.load_model(job.run_id)  # readable as saved
    for name in ("start.safetensors", "model.safetensors"):
        (store.root / job.run_id / name).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="starting weights could not be read"):
        store.load_starting_model(job.run_id)
    with pytest.raises(CheckpointError, match="saved model could not be read"):
        store.load_model(job.run_id)


def test_out_of_gpu_memory_retries_once_with_half_the_batch_then_stops_with_a_message(store, monkeypatch):
    import core.jobs as jobs

    real_fit = jobs.fit
    batch_sizes = []

    def fit_that_runs_out_once(model, train_ds, val_ds, config, *args, **kwargs):
        batch_sizes.append(config.batch_size)
        if len(batch_sizes) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_fit(model, train_ds, val_ds, config, *args, **kwargs)

    monkeypatch.setattr(jobs, "fit", fit_that_runs_out_once)
    snap = wait(launch(store, TrainingQueue(1)))
    assert snap.status == "finished" and batch_sizes == [8, 4]
    assert "retrying with batch size 4" in snap.message
    assert store.get(snap.run_id).config["batch_size"] == 4

    def always_out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(jobs, "fit", always_out_of_memory)
    snap = wait(launch(store, TrainingQueue(1)))
    assert snap.status == "failed" and "ran out of memory" in snap.message
