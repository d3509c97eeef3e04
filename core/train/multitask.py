"""Multi-task training in the one loop: per-task cross-entropy over one shared body.

The :class:`MultiTask` objective masks missing labels (an image not labelled for a task is left out
of that task's loss), weights the tasks' losses (equal, manual or uncertainty weighting, Kendall et
al. 2018), can project conflicting gradients (PCGrad, Yu et al. 2020), and measures how much the
tasks' gradients on the shared part disagree (:func:`gradient_conflict`). ``core.train.fit``
trains a multi-task model with it; :func:`fit_multitask` lets a caller choose its weighting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from core.train.base import EpochMetrics
from core.train.loop import Trainer
from core.train.objectives import Objective

__all__ = ["WEIGHTINGS", "MultiTask", "MultiTaskEpochMetrics", "gradient_conflict", "fit_multitask"]


WEIGHTINGS = {
    "equal": "Equal: the tasks' losses added up",
    "manual": "Manual: each task's loss times a weight you choose",
    "uncertainty": "Uncertainty (Kendall et al. 2018): weights learned from each task's noise",
}


@dataclass
class MultiTaskEpochMetrics(EpochMetrics):
    """An epoch of multi-task training: the overall figures (``val_acc`` is the mean over tasks),
    the same per task, the task weights in use, and how much the tasks' gradients disagreed."""

    val_acc_by_task: dict[str, float] = field(default_factory=dict)
    val_loss_by_task: dict[str, float] = field(default_factory=dict)
    train_loss_by_task: dict[str, float] = field(default_factory=dict)
    train_acc_by_task: dict[str, float] = field(default_factory=dict)
    task_weights: dict[str, float] = field(default_factory=dict)
    # cosine similarity between the tasks' gradients on the shared part, averaged over a few
    # batches (rows and columns in task order), and the share of (batch, pair) with a negative one
    grad_cosine: list[list[float]] = field(default_factory=list)
    grad_conflict: float = math.nan
    grad_on: str = ""  # "parameters" (the trainable shared weights) or "features" (all frozen)


class MultiTask(Objective):
    """Per-task cross-entropy over one shared body; images missing a task's label are left out of
    that task's loss, and a task with no label in a batch gives its head no gradient at all.

    ``weighting``: "equal" (sum of the losses), "manual" (``weights[task]`` × loss) or
    "uncertainty" (Kendall et al. 2018: ``exp(-s_t) · L_t + s_t`` with a learned log-variance
    ``s_t`` per task, trained by the same optimizer). ``conflict_batches`` batches are used after
    each epoch to measure gradient conflict (0: off). ``pcgrad`` (Yu et al. 2020) projects each
    task's gradient on the shared parameters off the others' where they conflict (negative dot).
    """

    title = "Multi-task training"

    def __init__(self, weighting: str = "equal", weights: Mapping[str, float] | None = None,
                 conflict_batches: int = 4, weights_lr_multiplier: float = 10.0, pcgrad: bool = False):
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"Unknown loss weighting {weighting!r}; choose one of: {', '.join(WEIGHTINGS)}.")
        self.weighting = weighting
        self.manual = dict(weights or {})
        self.conflict_batches = int(conflict_batches)
        self.weights_lr_multiplier = float(weights_lr_multiplier)
        self.pcgrad = bool(pcgrad)
        self.tasks: list[str] = []
        self.log_vars: nn.Parameter | None = None

    def check(self, model, data, config) -> None:
        tasks = getattr(model, "tasks", None)
        if not tasks:
            raise ConfigError("Multi-task training needs a multi-task model (one head per task).")
        self.tasks = list(tasks)
        for name, ds in data.items():
            if ds is None:
                continue
            ds_tasks = getattr(ds, "tasks", None)
            if ds_tasks is None:
                raise ConfigError(f"The {name} images carry one label each; multi-task training needs a label "
                                  "per task (a ZIP with labels.csv, or the multi-task demo).")
            for t in self.tasks:
                if t not in ds_tasks:
                    raise ConfigError(f"The {name} images have no labels for task {t!r}.")
                if list(ds_tasks[t]) != list(tasks[t]):
                    raise ConfigError(f"Task {t!r} has other classes in the {name} images than in the model.")
        if len(data["train"]) < 2:
            raise ConfigError("Training needs at least two training images.")
        if self.weighting == "manual":
            unknown = sorted(set(self.manual) - set(self.tasks))
            if unknown:
                raise ConfigError(f"Weights given for unknown task(s): {', '.join(unknown)}.")
            bad = [t for t in self.tasks if not (math.isfinite(self.manual.get(t, 1.0)) and self.manual.get(t, 1.0) >= 0)]
            if bad or not any(self.manual.get(t, 1.0) > 0 for t in self.tasks):
                raise ConfigError("Task weights must be numbers ≥ 0, at least one of them above 0.")

    def labels(self, ds) -> torch.Tensor:
        return ds.label_matrix(self.tasks)

    def param_groups(self, trainer) -> list[dict]:
        if self.weighting != "uncertainty":
            self.log_vars = None
            return []
        # s_t = log sigma_t^2 starts at 0 (weight 1); no weight decay, it would pull every s_t to 0
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks), device=trainer.device))
        return [{"params": [self.log_vars], "lr": trainer.config.lr * self.weights_lr_multiplier,
                 "weight_decay": 0.0, "name": "task weights"}]

    def task_weights(self) -> dict[str, float]:
        if self.weighting == "uncertainty" and self.log_vars is not None:
            return {t: float(w) for t, w in zip(self.tasks, torch.exp(-self.log_vars.detach()).cpu(), strict=True)}
        if self.weighting == "manual":
            return {t: float(self.manual.get(t, 1.0)) for t in self.tasks}
        return dict.fromkeys(self.tasks, 1.0)

    def task_losses(self, outputs: Mapping[str, torch.Tensor], y: torch.Tensor, smoothing: float = 0.0):
        """{task: (mean loss over its labelled images, their count, correct)} for tasks labelled in the batch."""
        result = {}
        for k, t in enumerate(self.tasks):
            mask = y[:, k] >= 0
            count = int(mask.sum())
            if count == 0:
                continue  # leaving the term out keeps the head's gradient None, not zero
            logits = outputs[t].float()[mask]
            target = y[mask, k]
            loss = F.cross_entropy(logits, target, label_smoothing=smoothing)
            result[t] = (loss, count, (logits.detach().argmax(1) == target).sum())
        return result

    def terms(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each labelled task's weighted loss term."""
        result = {}
        for k, t in enumerate(self.tasks):
            if t not in losses:
                continue
            if self.weighting == "uncertainty":
                s = self.log_vars[k]
                result[t] = torch.exp(-s) * losses[t] + s
            elif self.weighting == "manual":
                result[t] = self.manual.get(t, 1.0) * losses[t]
            else:
                result[t] = losses[t]
        return result

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        terms = list(self.terms(losses).values())
        return sum(terms[1:], terms[0]) if terms else None

    def projected(self, terms: Mapping[str, torch.Tensor], shared: list[nn.Parameter], seed: int) -> torch.Tensor:
        """The summed loss whose gradient on ``shared`` is PCGrad's (the heads' stay their own): the
        loop's one ``backward()`` then applies the projection, with no second backward pass."""
        total = sum(list(terms.values())[1:], next(iter(terms.values())))
        if len(terms) < 2 or not shared:
            return total
        grads = [torch.autograd.grad(term, shared, retain_graph=True, allow_unused=True) for term in terms.values()]
        flat = [_flat(gs, shared) for gs in grads]
        order = torch.Generator().manual_seed(seed)
        combined = torch.zeros_like(flat[0])
        for i, g in enumerate(flat):
            g = g.clone()
            for j in torch.randperm(len(flat), generator=order).tolist():
                dot = g @ flat[j]
                if j != i and dot < 0:
                    g -= dot / flat[j].norm().pow(2).clamp_min(1e-20) * flat[j]
            combined += g
        correction, start = 0.0, 0
        plain = torch.stack(flat).sum(0)
        for p in shared:
            n = p.numel()
            delta = (combined[start:start + n] - plain[start:start + n]).view_as(p).to(p.dtype)
            correction = correction + (delta.detach() * p).sum()
            start += n
        # same value as the plain sum; its gradient on the shared part is the projected one
        return total + correction - correction.detach()

    def loss(self, trainer, batch):
        idx, seed = batch
        x = trainer.inputs("train", idx, seed)
        y = trainer.labels["train"][idx].to(trainer.device, non_blocking=True)
        outputs = trainer.logits(x)
        per_task = self.task_losses(outputs, y, trainer.config.label_smoothing)
        terms = self.terms({t: v[0] for t, v in per_task.items()})
        if self.pcgrad and terms:
            total = self.projected(terms, _shared_parameters(trainer), seed)
        else:
            total = self.combine({t: v[0] for t, v in per_task.items()})
        if total is None:  # no label at all in this batch: a zero that leaves every weight alone
            total = sum(o.float().sum() for o in outputs.values()) * 0.0
        stats = {"n": len(idx)}
        for t, (loss, count, correct) in per_task.items():
            stats[f"loss:{t}"] = loss.detach() * count
            stats[f"n:{t}"] = count
            stats[f"correct:{t}"] = correct
        return total, stats

    @torch.inference_mode()
    def evaluate(self, trainer) -> dict:
        if "val" not in trainer.images or len(trainer.labels["val"]) == 0:
            return {"val_loss": math.nan, "val_acc": math.nan}
        model = trainer.model
        was_training = model.training
        model.eval()
        labels = trainer.labels["val"]
        loss_sum = dict.fromkeys(self.tasks, 0.0)
        correct = dict.fromkeys(self.tasks, 0)
        count = dict.fromkeys(self.tasks, 0)
        try:
            for start, x in trainer.eval_inputs("val"):
                outputs = trainer.logits(x)
                y = labels[start:start + len(x)].to(trainer.device)
                for t, (loss, n, right) in self.task_losses(outputs, y).items():
                    loss_sum[t] += loss.item() * n
                    correct[t] += int(right)
                    count[t] += n
        finally:
            model.train(was_training)
        acc = {t: correct[t] / count[t] if count[t] else math.nan for t in self.tasks}
        loss = {t: loss_sum[t] / count[t] if count[t] else math.nan for t in self.tasks}
        return {"val_loss": _nanmean(loss.values()), "val_acc": _nanmean(acc.values()),
                "val_acc_by_task": acc, "val_loss_by_task": loss}

    def epoch_metrics(self, trainer, epoch, sums, measured, seconds, lr):
        n = max(1, sums.get("n", 0))
        by_task = {t: sums.get(f"loss:{t}", math.nan) / sums[f"n:{t}"] if sums.get(f"n:{t}") else math.nan
                   for t in self.tasks}
        acc_by_task = {t: sums.get(f"correct:{t}", 0) / sums[f"n:{t}"] if sums.get(f"n:{t}") else math.nan
                       for t in self.tasks}
        conflict = gradient_conflict(trainer, self, self.conflict_batches, seed=epoch) if self.conflict_batches else None
        return MultiTaskEpochMetrics(
            epoch=epoch, train_loss=sums.get("loss", math.nan) / n, train_acc=_nanmean(acc_by_task.values()),
            val_loss=measured.get("val_loss", math.nan), val_acc=measured.get("val_acc", math.nan),
            seconds=seconds, lr=lr, val_acc_by_task=measured.get("val_acc_by_task", {}),
            val_loss_by_task=measured.get("val_loss_by_task", {}), train_loss_by_task=by_task,
            train_acc_by_task=acc_by_task, task_weights=self.task_weights(),
            grad_cosine=conflict["cosine"] if conflict else [], grad_conflict=conflict["conflict"] if conflict else math.nan,
            grad_on=conflict["on"] if conflict else "")


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _shared_parameters(trainer) -> list[nn.Parameter]:
    """The trainable parameters every task's loss reaches: all but the task heads'."""
    heads = {id(p) for ps in trainer.model.task_head_parameters().values() for p in ps}
    return [p for g in trainer.param_groups for p in g["params"] if id(p) not in heads and p.requires_grad]


def _flat(grads, like: list[torch.Tensor]) -> torch.Tensor:
    """Gradients as one float vector; a tensor a loss does not reach counts as zeros."""
    return torch.cat([(g if g is not None else torch.zeros_like(w)).reshape(-1).float()
                      for g, w in zip(grads, like, strict=True)])


def _unit_gradients(per_task: dict, wrt: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each task's loss gradient with respect to ``wrt``, as a unit vector (tasks with none left out)."""
    vectors = {}
    for t, (loss, _, _) in per_task.items():
        flat = _flat(torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True), wrt)
        norm = flat.norm()
        if norm > 0:
            vectors[t] = flat / norm
    return vectors


def gradient_conflict(trainer, objective: MultiTask, batches: int = 4, seed: int = 0) -> dict | None:
    """Cosine similarity between the tasks' loss gradients on the shared part of the model.

    The shared part is every trainable parameter outside the task heads; with all of those frozen
    it is the pooled features themselves (the representation the heads share). Measured without
    augmentation on ``batches`` random training batches, in eval mode, away from the training's
    random streams. Returns {"cosine": T×T mean cosines (1 on the diagonal), "negative": T×T share
    of batches with a negative cosine, "conflict": that share over all pairs, "on": what was
    differentiated}, or None with fewer than two tasks.
    """
    tasks = objective.tasks
    if len(tasks) < 2 or batches <= 0:
        return None
    model = trainer.model
    shared = _shared_parameters(trainer)
    on = "parameters" if shared else "features"
    labels = trainer.labels["train"]
    gen = torch.Generator().manual_seed(int(trainer.config.seed) * 7919 + int(seed))
    bs = min(trainer.config.batch_size, len(labels))
    T = len(tasks)
    cos_sum, cos_n, neg = np.zeros((T, T)), np.zeros((T, T)), np.zeros((T, T))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for _ in range(batches):
                idx = torch.randperm(len(labels), generator=gen)[:bs]
                x = trainer.plain_inputs("train", idx)
                y = labels[idx].to(trainer.device)
                if on == "features":
                    f = trainer.features(x).detach().float().requires_grad_(True)
                    outputs, wrt = trainer.head(f), [f]
                else:
                    outputs, wrt = trainer.logits(x), shared
                vectors = _unit_gradients(objective.task_losses(outputs, y), wrt)
                present = [k for k, t in enumerate(tasks) if t in vectors]
                if not present:
                    continue
                stacked = torch.stack([vectors[tasks[k]] for k in present])
                cos = (stacked @ stacked.T).clamp(-1, 1).cpu().numpy()
                for a, i in enumerate(present):
                    for b, j in enumerate(present):
                        value = float(cos[a, b])
                        cos_sum[i, j] += value
                        cos_n[i, j] += 1
                        neg[i, j] += value < 0
    finally:
        model.train(was_training)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cos_n > 0, cos_sum / np.maximum(cos_n, 1), np.nan)
        negative = np.where(cos_n > 0, neg / np.maximum(cos_n, 1), np.nan)
    off = ~np.eye(T, dtype=bool) & (cos_n > 0)
    conflict = float(neg[off].sum() / cos_n[off].sum()) if off.any() else math.nan
    return {"cosine": mean.tolist(), "negative": negative.tolist(), "conflict": conflict, "on": on}


def fit_multitask(model, train_ds, val_ds, config, objective: MultiTask | None = None, callbacks=(), stop=None):
    """Train a multi-task model in place through the one loop; returns the ``History``."""
    objective = objective or MultiTask()
    return Trainer(model, objective, config, callbacks, stop).fit({"train": train_ds, "val": val_ds})
