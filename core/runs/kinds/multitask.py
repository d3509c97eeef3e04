"""The ``"multitask"`` kind: a model with one head per task, trained in a worker process over a run
folder whose inputs hold a label matrix (a column per task, ``-1`` where an image has no label)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace

import torch

from core.data.encoded import EncodedMultiTaskDataset, Pending
from core.data.multitask import MISSING
from core.data.names import some
from core.errors import DataError
from core.models.multitask import starting_multitask_model
from core.runs.jobs import new_record, start_folder_run
from core.runs.recording import BestWeights, WatchRecorder, ending, fit_info, status_of
from core.train.base import TrainConfig
from core.train.loop import Trainer
from core.train.multitask import MultiTask

__all__ = ["encode_multitask_inputs", "new_multitask_record", "start_multitask_run", "train_folder"]


def encode_multitask_inputs(train_ds, val_ds, size: int) -> dict[str, torch.Tensor]:
    """What a multi-task worker reads from the run folder: both splits' images (encoded there) at the run's size
    and their label matrices (columns in the training set's task order)."""
    tasks = train_ds.task_names
    return {"train_images": Pending(train_ds, size), "train_labels": train_ds.label_matrix(tasks),
            "val_images": Pending(val_ds, size), "val_labels": val_ds.label_matrix(tasks)}


def new_multitask_record(train_ds, val_ds, *, backbone: str, pretrained: bool, config, weights_path=None,
                         head: str = "linear", weighting: str = "equal", weights: Mapping[str, float] | None = None,
                         pcgrad: bool = False, conflict_batches: int = 4, owner: str = "", label: str = "",
                         dataset: str = ""):
    """A queued multi-task run's record (``config["kind"] == "multitask"``, ``config["tasks"]``: task ->
    classes in output order), after checking that the run can start at all. ``conflict_batches``:
    batches measuring gradient conflict after each epoch (0: none, e.g. for a comparison that
    reads accuracy alone)."""
    tasks = getattr(train_ds, "tasks", None)
    if not tasks:
        raise DataError("Multi-task training needs images with a label per task: a ZIP with labels.csv, "
                        "or the multi-task demo on the Data page.")
    MultiTask(weighting, weights)  # an unknown weighting is refused here, not in the worker
    unlabelled = [t for t in tasks if not any(v != MISSING for v in train_ds.task_labels(t))]
    if unlabelled:
        raise DataError(f"No training image is labelled for {some(unlabelled, 3)}: label a few more images for "
                        "it, or use a smaller validation share on the Data page.")
    record = new_record(train_ds, val_ds, backbone=backbone, pretrained=pretrained, config=config,
                        weights_path=weights_path, head=head, owner=owner, dataset=dataset,
                        label=label or f"{backbone} {'pretrained' if pretrained else 'scratch'}, multi-task")
    return replace(record, config={**record.config, "kind": "multitask", "tasks": train_ds.tasks,
                                   "weighting": weighting, "task_weights": dict(weights or {}),
                                   "pcgrad": bool(pcgrad), "conflict_batches": int(conflict_batches)})


def start_multitask_run(store, train_ds, val_ds, *, queue=None, **options):
    """Queue a multi-task run (options as ``new_multitask_record``'s) to train in a worker process."""
    record = new_multitask_record(train_ds, val_ds, **options)
    size = int(options["config"].image_size)
    return start_folder_run(store, record, lambda: encode_multitask_inputs(train_ds, val_ds, size), queue=queue)


def train_folder(store, record, stop, log, save, distributed=None):
    """What a worker runs for a ``"multitask"`` run folder: the one loop with the ``MultiTask``
    objective, live events, the best weights kept at each epoch end; returns (status, message,
    record changes), as ``core.runs.kinds.classify.train_folder`` does."""
    cfg = record.config
    config = TrainConfig.from_dict(cfg)
    tasks = cfg.get("tasks") or {}
    inputs = store.load_inputs(record.id)
    train_ds = EncodedMultiTaskDataset(inputs["train_images"], inputs["train_labels"], tasks)
    val_ds = EncodedMultiTaskDataset(inputs["val_images"], inputs["val_labels"], tasks)
    del inputs
    model = starting_multitask_model(record.backbone, tasks, pretrained=record.pretrained, seed=config.seed,
                                     image_size=config.image_size, head=cfg.get("head", "linear"),
                                     weights_path=cfg.get("weights_file"))
    objective = MultiTask(cfg.get("weighting", "equal"), cfg.get("task_weights") or None,
                          pcgrad=bool(cfg.get("pcgrad", False)), conflict_batches=int(cfg.get("conflict_batches", 4)))
    main = distributed is None or distributed.main
    callbacks = [log]
    if main:
        store.save_start(record.id, model, record.pretrained)
        callbacks = [BestWeights(store, record.id, model, lambda **c: save(**c)), log]
        if config.watch:
            callbacks.insert(1, WatchRecorder(store, record.id, val_ds.images))
    history = Trainer(model, objective, config, callbacks, stop, distributed=distributed).fit(
        {"train": train_ds, "val": val_ds})
    status = status_of(history.stopped)
    if history.epochs and main:
        store.save_model(record.id, model)
    return status, history.message, {
        "epochs": [asdict(e) for e in history.epochs],  # with val_acc_by_task, train_loss_by_task, ...
        "info": {**fit_info(store, record.id), **record.info, **ending(history)},
        "config": {**cfg, "batch_size": history.batch_size or config.batch_size,
                   "used_feature_cache": history.used_feature_cache,
                   "images_per_second": history.images_per_second},
    }
