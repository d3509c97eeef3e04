"""Multi-task runs as the app trains them: queued through core.runs.jobs, trained in a worker process
over the run's folder, and reloaded from disk with one head per task."""

import pytest
import torch

from core.analysis.predict import predict_tasks
from core.data.demo import demo_multitask
from core.data.multitask import MultiTaskDataset
from core.errors import DataError
from core.models.multitask import MultiTaskClassifier
from core.runs import RunStore
from core.runs.jobs import get_job
from core.runs.kinds.multitask import start_multitask_run
from core.runs.tasks import TaskQueue
from core.train.base import TrainConfig

FROZEN = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top"]
OWNER = "c" * 16



def with_gaps(ds: MultiTaskDataset) -> MultiTaskDataset:
    """Every third image loses its colour label and every fourth its size label (never both)."""
    labels = {t: ds.task_labels(t) for t in ds.task_names}
    for i in range(len(ds)):
        if i % 3 == 0:
            labels["colour"][i] = -1
        elif i % 4 == 0:
            labels["size"][i] = -1
    return MultiTaskDataset(ds.images, ds.tasks, labels, ds.names)


def test_a_multitask_run_trains_in_a_worker_with_curves_per_task_and_reloads_with_a_head_per_task(tmp_path, pool):
    from core.data import split

    store = RunStore(tmp_path / "data")
    ds = with_gaps(demo_multitask(per_class=4, size=32))
    train_ds, val_ds = split(ds, 0.25, 0)
    config = TrainConfig(epochs=2, batch_size=8, freeze=FROZEN, image_size=32, augment=False)
    job = start_multitask_run(store, train_ds, val_ds, backbone="efficientnet_lite0", pretrained=True,
                              config=config, owner=OWNER, weighting="uncertainty", queue=TaskQueue(1, pool=pool))
    assert get_job(job.run_id) is job
    assert job.join(240), "the run did not finish in time"
    snap = job.snapshot()
    assert snap.status == "finished", snap.message
    tasks = ["shape", "colour", "size"]
    # the live view (read from the worker's events) carries each task's curve
    assert [e.epoch for e in snap.epochs] == [1, 2]
    assert all(list(e.val_acc_by_task) == tasks for e in snap.epochs)
    record = store.get(job.run_id)
    assert record.config["kind"] == "multitask" and list(record.config["tasks"]) == tasks
    assert record.config["tasks"]["colour"] == ["red", "green", "blue"] and record.classes == ds.tasks["shape"]
    for epoch in record.epochs:
        assert list(epoch["val_acc_by_task"]) == tasks and list(epoch["train_loss_by_task"]) == tasks
        assert all(0 <= v <= 1 for v in epoch["val_acc_by_task"].values())
        assert set(epoch["task_weights"]) == set(tasks)
    assert record.epochs[-1]["task_weights"] != dict.fromkeys(tasks, 1.0)  # uncertainty weights were learned
    assert not (store.folder(job.run_id) / "inputs.safetensors").exists()

    model = store.load_model(job.run_id)
    assert isinstance(model, MultiTaskClassifier) and model.tasks == ds.tasks
    # the saved model is the one that was scored: each task's accuracy on the labelled images is the record's
    probs = predict_tasks(model, val_ds.images)
    for t in tasks:
        y = torch.tensor(val_ds.task_labels(t))
        keep = y >= 0
        accuracy = (probs[t].argmax(1)[keep] == y[keep]).float().mean().item()
        assert accuracy == pytest.approx(record.epochs[-1]["val_acc_by_task"][t])
    # the safetensors export rebuilds the same heads from its sidecar alone
    from core.export import export_safetensors, load_safetensors

    exported = load_safetensors(export_safetensors(model, tmp_path / "model.safetensors"))
    again = predict_tasks(exported, val_ds.images)
    assert all(torch.allclose(again[t], probs[t], atol=1e-5) for t in tasks)
    start = store.load_starting_model(job.run_id)
    assert start.tasks == model.tasks
    trained, before = model.task_heads.heads["size"].weight, start.task_heads.heads["size"].weight
    assert not torch.equal(trained, before)  # the heads trained; the body stayed frozen
    stem = next(iter(start.state_dict()))
    assert torch.equal(model.state_dict()[stem], start.state_dict()[stem])


def test_a_task_no_training_image_is_labelled_for_is_refused_before_anything_is_queued(tmp_path):
    from core.data import split

    store = RunStore(tmp_path / "data")
    ds = demo_multitask(per_class=4, size=32)
    labels = {t: ds.task_labels(t) for t in ds.task_names}
    labels["size"] = [-1] * len(ds)
    train_ds, val_ds = split(MultiTaskDataset(ds.images, ds.tasks, labels), 0.25, 0)
    with pytest.raises(DataError, match="size"):
        start_multitask_run(store, train_ds, val_ds, backbone="efficientnet_lite0", pretrained=True,
                            config=TrainConfig(epochs=1, image_size=32), owner=OWNER)
    assert store.list() == []
