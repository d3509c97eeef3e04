"""Multi-task transfer as a method: one shared model with a head per task against one model per task,
on the same split, seed and settings (``compare_shared_separate``), and the accuracy per task of the
epoch a fit kept."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.data.multitask import MultiTaskDataset
from core.errors import ConfigError
from core.models.multitask import multitask_classifier
from core.seeding import seeded
from core.train.loop import Trainer
from core.train.multitask import MultiTask

__all__ = ["TaskComparison", "compare_shared_separate", "kept_accuracy_by_task"]


@dataclass
class TaskComparison:
    """One shared model against one model per task, on the same split, seed and settings."""

    tasks: list[str]
    shared_acc: dict[str, float]
    separate_acc: dict[str, float]
    shared_params: int  # every parameter of the one shared model
    separate_params: int  # of all the single-task models together
    shared_trainable: int
    separate_trainable: int
    shared_seconds: float
    separate_seconds: float

    def rows(self) -> list[dict]:
        """A table: one row per task with both accuracies and their difference."""
        rows = [{"task": t, "shared": self.shared_acc[t], "separate": self.separate_acc[t],
                 "difference": self.shared_acc[t] - self.separate_acc[t]} for t in self.tasks]
        return rows


def kept_accuracy_by_task(epochs: Sequence, best_epoch: int | None = None) -> dict[str, float]:
    """Validation accuracy per task of the epoch whose weights a fit kept: ``best_epoch`` (early
    stopping) or else the last. ``epochs`` are ``MultiTaskEpochMetrics`` or, as a run's record
    stores them, their dicts."""
    rows = [e if isinstance(e, Mapping) else vars(e) for e in epochs]
    if not rows:
        return {}
    chosen = next((e for e in rows if e.get("epoch") == best_epoch), rows[-1]) if best_epoch else rows[-1]
    return dict(chosen.get("val_acc_by_task") or {})


def compare_shared_separate(backbone, train_ds: MultiTaskDataset, val_ds: MultiTaskDataset, config,
                            head: str | Mapping[str, str] = "linear", weighting: str = "equal",
                            shared_cache: dict | None = None) -> TaskComparison:
    """Train one model with a head per task and, for each task, one model with that head alone
    (the same backbone weights, split, seed and settings) and compare validation accuracy per task,
    parameters and training time. ``backbone`` is a loaded ``Backbone``; it is copied, not changed.
    """
    tasks = train_ds.tasks

    def run(task_subset: dict[str, list[str]]):
        with seeded(config.seed):
            model = multitask_classifier(backbone, task_subset, head, image_size=config.image_size)
        names = list(task_subset)
        train = train_ds.only_tasks(names) if len(names) < len(tasks) else train_ds
        val = val_ds.only_tasks(names) if len(names) < len(tasks) else val_ds
        started = time.perf_counter()
        # each model computes its own feature cache (unless asked to share one): separate models
        # each run their own backbone, and that cost belongs in the comparison
        history = Trainer(model, MultiTask(weighting if len(names) > 1 else "equal", conflict_batches=0), config,
                          shared_cache=shared_cache).fit({"train": train, "val": val})
        seconds = time.perf_counter() - started
        if history.stopped == "diverged":
            raise ConfigError(history.message)
        total = sum(p.numel() for p in model.parameters())
        frozen = set(config.freeze)
        trainable = sum(p.numel() for g in model.layer_groups if g.name not in frozen
                        and config.lr_multipliers.get(g.name, 1.0) > 0
                        for m in g.modules for p in model.get_submodule(m).parameters())
        return kept_accuracy_by_task(history.epochs, history.best_epoch), total, trainable, seconds

    shared_acc, shared_params, shared_trainable, shared_seconds = run(tasks)
    separate_acc, separate_params, separate_trainable, separate_seconds = {}, 0, 0, 0.0
    for t, classes in tasks.items():
        acc, total, trainable, seconds = run({t: classes})
        separate_acc[t] = acc.get(t, math.nan)
        separate_params += total
        separate_trainable += trainable
        separate_seconds += seconds
    return TaskComparison(list(tasks), shared_acc, separate_acc, shared_params, separate_params,
                          shared_trainable, separate_trainable, shared_seconds, separate_seconds)
