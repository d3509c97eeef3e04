"""The learning-rate range test (Smith, 2015; fastai's ``lr_find``): sweep the learning rate, watch the loss.

One short run on a copy of the model raises the learning rate geometrically from ``start`` to
``end``, one batch per value, and records the loss. The loss is smoothed with an exponential
moving average, corrected for its start at zero (as Adam does):

    avg_i = (1 - smoothing) * avg_(i-1) + smoothing * loss_i,    smoothed_i = avg_i / (1 - (1 - smoothing)^(i+1))

The sweep stops early once the smoothed loss exceeds 4× the best seen (or a loss is NaN).
The suggestion is the learning rate where the smoothed loss falls fastest against log(lr)
(measured across a window of a twentieth of the sweep, so one noisy dip does not count),
looking only before its minimum: a value where training still makes quick progress, well
below the point where it blows up. When the curve is too short to have such a point (it
diverges at once or never falls), the suggestion is one tenth of the learning rate at the
smoothed minimum, the older rule of thumb.

The sweep is a callback (``LRSweep``) of the one training loop, so it trains exactly as ``fit``
does: frozen groups cached, the same optimizer and augmentation; it ends the fit when it is done.
The app runs it like any run, in a worker process over a run folder (``core.runs.kinds.lr_find``).
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.errors import ConfigError
from core.models.heads import Classifier
from core.train.base import Callback, TrainConfig
from core.train.loop import Trainer
from core.train.objectives import Classification

__all__ = ["LRFinderResult", "LRSweep", "find_lr", "suggest_lr", "smooth", "check_sweep", "DIVERGENCE_FACTOR"]

DIVERGENCE_FACTOR = 4.0


@dataclass(frozen=True)
class LRFinderResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    method: str = "steepest"  # "steepest" or "minimum / 10"
    min_lr: float = float("nan")  # the learning rate at the smallest smoothed loss
    stopped_early: bool = False


def smooth(losses, smoothing: float = 0.05) -> list[float]:
    """The bias-corrected exponential moving average of ``losses`` (see the module docstring)."""
    beta = 1.0 - smoothing
    avg, out = 0.0, []
    for i, loss in enumerate(losses):
        avg = beta * avg + smoothing * float(loss)
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest_lr(lrs, smoothed) -> tuple[float, str]:
    """(learning rate, method): the steepest descent of the smoothed loss before its minimum,
    else one tenth of the learning rate at the minimum (never below the sweep's start)."""
    lrs = np.asarray(lrs, dtype=float)
    s = np.asarray(smoothed, dtype=float)
    if len(s) == 0:
        raise ConfigError("The learning-rate sweep recorded no loss.")
    i_min = int(np.nanargmin(s))
    if i_min >= 2:
        # The slope across a window of a twentieth of the sweep (at least one point each side): one
        # noisy dip on the flat start must not outrank the real descent. From the second point on,
        # as the first point's one-sided slope is the noisiest.
        w = max(1, len(s) // 20)
        log_lr = np.log(lrs)
        js = np.arange(1, i_min)
        lo, hi = np.maximum(0, js - w), np.minimum(i_min, js + w)
        slope = (s[hi] - s[lo]) / (log_lr[hi] - log_lr[lo])
        j = int(js[int(np.argmin(slope))])
        if slope.min() < 0:
            return float(lrs[j]), "steepest"
    return float(max(lrs[0], lrs[i_min] / 10)), "minimum / 10"


class LRSweep(Callback):
    """The range test as a callback of the one loop: before each step it sets every group's rate to
    the swept value × the group's multiplier; after it, it records the loss and ends the fit once
    the sweep is done or the smoothed loss has blown up."""

    def __init__(self, start: float, end: float, steps: int, smoothing: float,
                 on_step: Callable[[int, float, float], None] | None = None):
        self.start, self.end, self.steps, self.beta = start, end, steps, 1.0 - smoothing
        self.on_step = on_step
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.stopped_early = False

    def on_fit_start(self, info) -> None:
        config = self.trainer.config
        self.multipliers = [g["lr"] / config.lr for g in self.trainer.optimizer.param_groups]
        self.avg, self.best = 0.0, math.inf
        # a retry at half the batch (out of GPU memory) sweeps again from the start: keeping the first
        # attempt's points returned two sweeps mixed, with rates that went down again
        self.lrs, self.losses, self.smoothed = [], [], []
        self.stopped_early = False

    def on_batch_start(self, step: int) -> None:
        self.lr = self.start * (self.end / self.start) ** (step / (self.steps - 1))
        for group, mult in zip(self.trainer.optimizer.param_groups, self.multipliers, strict=True):
            group["lr"] = self.lr * mult

    def on_batch_end(self, progress) -> None:
        if progress.phase != "train":
            return
        step = len(self.lrs)
        self.avg = self.beta * self.avg + (1 - self.beta) * progress.loss
        current = self.avg / (1 - self.beta ** (step + 1))
        self.lrs.append(self.lr)
        self.losses.append(progress.loss)
        self.smoothed.append(current)
        self.best = min(self.best, current)
        if self.on_step is not None:
            self.on_step(step, self.lr, progress.loss)
        if current > DIVERGENCE_FACTOR * self.best:
            self.stopped_early = step < self.steps - 1
            self.trainer.request_stop("sweep")
        elif step == self.steps - 1:
            self.trainer.request_stop("sweep")

    def on_fit_end(self, history) -> None:
        if history.stopped in ("cancelled", "diverged"):
            self.stopped_early = True


def find_lr(model: Classifier, train_ds, config: TrainConfig, start: float = 1e-6, end: float = 1.0,
            steps: int = 60, smoothing: float = 0.05, stop: threading.Event | None = None,
            on_step: Callable[[int, float, float], None] | None = None,
            callbacks: Sequence[Callback] = ()) -> LRFinderResult:
    """Sweep the learning rate from ``start`` to ``end`` over ``steps`` batches on a deep copy of ``model``.

    The copy trains as ``fit`` would train the model, through the same loop: ``config``'s
    optimizer, augmentation, frozen groups, feature caches and per-group multipliers (each group's
    lr is the swept value × its multiplier). ``on_step(step, lr, loss)`` is called after every
    batch; setting ``stop`` (anything with ``is_set()``) ends the sweep. ``callbacks`` join the
    loop's (a worker's event log).
    """
    config.validate([g.name for g in model.layer_groups])
    check_sweep(start, end, steps, smoothing)
    if len(train_ds) < 2:
        raise ConfigError("The learning-rate finder needs at least two training images.")
    bs = min(config.batch_size, len(train_ds))
    per_epoch = len(train_ds) // bs if len(train_ds) % bs == 1 else math.ceil(len(train_ds) / bs)
    sweep_config = replace(config, batch_size=bs, schedule="constant", epochs=min(500, math.ceil(steps / per_epoch)))
    sweep = LRSweep(start, end, steps, smoothing, on_step)
    work = copy.deepcopy(model)
    Trainer(work, Classification(), sweep_config, [sweep, *callbacks], stop, validate=False,
            guard=False).fit({"train": train_ds})
    del work
    if not sweep.lrs:
        raise ConfigError("The very first step of the sweep gave a NaN loss: lower the start learning rate.")
    suggestion, method = suggest_lr(sweep.lrs, sweep.smoothed)
    min_lr = sweep.lrs[int(np.argmin(sweep.smoothed))]
    return LRFinderResult(sweep.lrs, sweep.losses, sweep.smoothed, suggestion, method, min_lr, sweep.stopped_early)


def check_sweep(start: float, end: float, steps: int, smoothing: float) -> None:
    """ConfigError for a sweep that cannot run (checked before it is queued, and by ``find_lr``)."""
    if not (0 < start < end and math.isfinite(end)):
        raise ConfigError("The sweep needs 0 < start < end.")
    if not isinstance(steps, int) or not 5 <= steps <= 1000:
        raise ConfigError("The sweep needs between 5 and 1000 steps.")
    if not 0 < smoothing <= 1:
        raise ConfigError("Smoothing must be in (0, 1].")
