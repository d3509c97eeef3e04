"""What a batch is and what its loss is, for each kind of training the one loop runs.

An objective never steps an optimizer or calls ``backward()``: it turns a batch into a loss (and
a few sums for the epoch's metrics), says how to evaluate after an epoch, and which datasets it
trains on. Everything else (caches, freezing, stopping, progress) is the loop's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from core.data.encoded import labels_of
from core.errors import ConfigError
from core.hooks import eval_mode
from core.train.base import EpochMetrics, History

__all__ = ["Objective", "Classification", "cross_entropy_eval", "check_labels"]


class Objective:
    """The base: every hook has a sensible default; subclasses override ``loss`` at least."""

    title = "Training"  # names the run in messages ("Training stopped in epoch 3: ...")
    sources: tuple[str, ...] = ("train",)  # datasets trained on: augmented, cached per view
    images_per_item = 1  # images one counted item stands for (DAN counts pairs)

    def check(self, model: nn.Module, data: dict, config) -> None:
        """Raise ConfigError when ``data`` cannot train ``model``."""

    def labels(self, ds) -> torch.Tensor:
        return labels_of(ds)

    def cache_ok(self, model: nn.Module, mode: str, boundary: str) -> bool:
        """Whether a cache of that kind ("head" or "prefix", ending at ``boundary``) keeps the
        objective's loss the same; a loss that reads a layer inside the cached part says no."""
        return True

    def param_groups(self, trainer) -> list[dict]:
        """Optimizer param groups of the objective's own parameters (e.g. learned loss weights),
        trained beside the model's; called once the device is known, before the optimizer is built."""
        return []

    def new_history(self, **fields) -> History:
        return History(**fields)

    def steps_per_epoch(self, trainer) -> int:
        return trainer.batches_for(self.sources[0])

    def batches(self, trainer, epoch: int) -> Iterator:
        seed = trainer.config.seed
        for b, idx in enumerate(trainer.shuffled(self.sources[0])):
            yield idx, hash((seed, epoch, b)) & 0x7FFFFFFF

    def loss(self, trainer, batch) -> tuple[torch.Tensor, dict]:
        """(loss, sums): ``sums["n"]`` items in the batch, ``sums["correct"]`` of them right, and any
        other sums the epoch's metrics average over ``n``."""
        raise NotImplementedError

    def evaluate(self, trainer) -> dict:
        """Validation figures after an epoch: at least ``val_loss`` and ``val_acc``."""
        if "val" not in trainer.images:
            return {"val_loss": math.nan, "val_acc": math.nan}
        loss, acc = cross_entropy_eval(trainer, "val")
        return {"val_loss": loss, "val_acc": acc}

    def epoch_metrics(self, trainer, epoch: int, sums: dict, measured: dict, seconds: float, lr: float):
        n = max(1, sums.get("n", 0))
        return EpochMetrics(epoch=epoch, train_loss=sums.get("loss", math.nan) / n,
                            train_acc=sums.get("correct", 0) / n, val_loss=measured.get("val_loss", math.nan),
                            val_acc=measured.get("val_acc", math.nan), seconds=seconds, lr=lr)

    # hooks, in the order the loop calls them
    def on_cache_view(self, trainer, source: str, view: int, images: torch.Tensor) -> None:
        """One cached view of a training source (the first: the images themselves; the others augmented),
        as uint8 images, while the cache is built."""

    def on_fit_start(self, trainer) -> None:
        """After the caches are built, before the first epoch."""

    def on_epoch_start(self, trainer, epoch: int) -> None:
        """After the epoch plan set the trainable groups and modes."""

    def on_fit_end(self, trainer, history: History) -> None:
        """After the last epoch (or a stop), inside the loop's clean-up."""

    def teardown(self, trainer) -> None:
        """Always called when the fit ends, even after an error: remove hooks, give things back."""


def check_labels(model: nn.Module, labels: torch.Tensor, what: str = "The dataset") -> None:
    if len(labels) and int(labels.max()) >= len(model.classes):
        raise ConfigError(f"{what} has more classes than the model's head.")


@torch.inference_mode()
def cross_entropy_eval(trainer, source: str) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``source`` in eval mode, without augmentation."""
    labels = trainer.labels[source]
    if len(labels) == 0:
        return math.nan, math.nan
    total, correct = 0.0, 0
    with eval_mode(trainer.model):
        for start, x in trainer.eval_inputs(source):
            logits = trainer.logits(x).float()
            y = labels[start:start + len(x)].to(trainer.device)
            total += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    return total / len(labels), correct / len(labels)


class Classification(Objective):
    """Cross-entropy on labelled images: feature extraction and fine-tuning."""

    def check(self, model, data, config) -> None:
        if len(data["train"]) < 2:
            raise ConfigError("Training needs at least two training images.")
        tasks = getattr(data["train"], "tasks", None) or {}
        if len(tasks) > 1:
            raise ConfigError(
                f"These images carry a label for each of {len(tasks)} tasks, but the model has one head. Build it "
                "with core.models.multitask.multitask_classifier (then fit trains every task), or train one task "
                "on the dataset's as_single_task(name).")
        check_labels(model, labels_of(data["train"]))

    def loss(self, trainer, batch):
        idx, seed = batch
        x = trainer.inputs("train", idx, seed)
        y = trainer.labels["train"][idx].to(trainer.device, non_blocking=True)
        logits = trainer.logits(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=trainer.config.label_smoothing)
        return loss, {"n": len(y), "correct": (logits.detach().argmax(1) == y).sum()}
