"""The learning-rate range test (Smith, 2015; fastai's ``lr_find``): sweep the learning rate, watch the loss.

One short run on a copy of the model raises the learning rate geometrically from ``start`` to
``end``, one batch per value, and records the loss. The loss is smoothed with an exponential
moving average, corrected for its start at zero (as Adam does):

    avg_i = (1 - smoothing) * avg_(i-1) + smoothing * loss_i,    smoothed_i = avg_i / (1 - (1 - smoothing)^(i+1))

The sweep stops early once the smoothed loss exceeds 4× the best seen (or a loss is NaN).
The suggestion is the learning rate where the smoothed loss falls fastest against log(lr),
looking only before its minimum: a value where training still makes quick progress, well
below the point where it blows up. When the curve is too short to have such a point (it
diverges at once or never falls), the suggestion is one tenth of the learning rate at the
smoothed minimum, the older rule of thumb.

When only the head trains (feature extraction), the frozen body's features are computed once per
image (and per augmented view) and the sweep runs the head alone, as ``fit`` does.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.backbones import Classifier
from core.devices import pick_device
from core.errors import ConfigError
from core.seeding import reseed
from core.training import (
    TrainConfig,
    apply_freeze,
    augment_batch,
    build_param_groups,
    collect_activations,
    encode_images,
    frozen_groups,
    labels_of,
    make_augmenter,
    make_optimizer,
    normalise,
)

__all__ = ["LRFinderResult", "find_lr", "suggest_lr", "smooth", "DIVERGENCE_FACTOR"]

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
        slope = np.gradient(s[:i_min + 1], np.log(lrs[:i_min + 1]))
        # the first point's one-sided slope is the noisiest: look from the second point on
        j = 1 + int(np.argmin(slope[1:i_min]))
        if slope[j] < 0:
            return float(lrs[j]), "steepest"
    return float(max(lrs[0], lrs[i_min] / 10)), "minimum / 10"


def find_lr(model: Classifier, train_ds, config: TrainConfig, start: float = 1e-6, end: float = 1.0,
            steps: int = 60, smoothing: float = 0.05, stop: threading.Event | None = None,
            on_step: Callable[[int, float, float], None] | None = None) -> LRFinderResult:
    """Sweep the learning rate from ``start`` to ``end`` over ``steps`` batches on a deep copy of ``model``.

    The copy trains as ``fit`` would train the model: ``config``'s optimizer, augmentation, frozen
    groups and per-group multipliers (each group's lr is the swept value × its multiplier).
    ``on_step(step, lr, loss)`` is called after every batch; setting ``stop`` ends the sweep.
    """
    group_names = [g.name for g in model.layer_groups]
    config.validate(group_names)
    if not (0 < start < end and math.isfinite(end)):
        raise ConfigError("The sweep needs 0 < start < end.")
    if not isinstance(steps, int) or not 5 <= steps <= 1000:
        raise ConfigError("The sweep needs between 5 and 1000 steps.")
    if not 0 < smoothing <= 1:
        raise ConfigError("Smoothing must be in (0, 1].")
    if len(train_ds) < 2:
        raise ConfigError("The learning-rate finder needs at least two training images.")
    labels = labels_of(train_ds)
    if int(labels.max()) >= len(model.classes):
        raise ConfigError("The dataset has more classes than the model's head.")

    device = pick_device(config.device)
    work = copy.deepcopy(model).to(device)
    groups = build_param_groups(work, config)
    multipliers = [g["lr"] / config.lr for g in groups]
    frozen = frozen_groups(work, config)
    frozen_modules = [work.get_submodule(m) for g in work.layer_groups if g.name in frozen for m in g.modules]
    apply_freeze(work, frozen_modules, config.train_bn)
    optimizer = make_optimizer(config, groups)

    size = int(config.image_size)
    images = encode_images(train_ds, size)
    mean = torch.tensor(work.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(work.std, device=device).view(1, 3, 1, 1)
    augmenter = make_augmenter(size) if config.augment else None
    # Feature extraction: the frozen body computes the same features every step, so compute them
    # once per image (and per cached augmented view) and sweep the head alone, as fit does.
    head_group = work.layer_groups[-1]
    head_only = (config.cache_features and not config.train_bn and len(head_group.modules) == 1
                 and all(g.name in frozen for g in work.layer_groups[:-1]) and head_group.name not in frozen
                 and len(groups) == 1)
    bank = None
    if head_only:
        head = work.get_submodule(head_group.modules[0])
        views = min(config.cached_views, 3) if augmenter is not None else 1
        work.eval()
        bank = torch.stack([
            collect_activations(work, head,
                                augment_batch(images, augmenter, config.seed * 1000 + v) if augmenter else images,
                                mean, std, device, 64, None, lambda: None, capture="input")
            for v in range(views)
        ])
        apply_freeze(work, frozen_modules, config.train_bn)
    bs = min(config.batch_size, len(images))
    per_epoch = len(images) // bs if len(images) % bs == 1 else math.ceil(len(images) / bs)  # no batch of one
    shuffler = torch.Generator().manual_seed(config.seed)
    reseed(config.seed)

    lrs, losses, smoothed = [], [], []
    beta = 1.0 - smoothing
    avg, best, stopped_early = 0.0, math.inf, False
    order = torch.randperm(len(images), generator=shuffler)
    for step in range(steps):
        if stop is not None and stop.is_set():
            stopped_early = True
            break
        lr = start * (end / start) ** (step / (steps - 1))
        for group, mult in zip(optimizer.param_groups, multipliers):
            group["lr"] = lr * mult
        b = step % per_epoch
        if b == 0 and step > 0:
            order = torch.randperm(len(images), generator=shuffler)
        idx = order[b * bs:(b + 1) * bs]
        y = labels[idx].to(device)
        if bank is not None:
            pick = torch.randint(len(bank), (len(idx),), generator=shuffler)
            logits = head(bank[pick.to(device), idx.to(device)])
        else:
            batch = images[idx]
            if augmenter is not None:
                batch = augment_batch(batch, augmenter, hash((config.seed, step)) & 0x7FFFFFFF)
            logits = work(normalise(batch.to(device), mean, std))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        value = loss.item()
        if not math.isfinite(value):
            stopped_early = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        avg = beta * avg + smoothing * value
        current = avg / (1 - beta ** (step + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(current)
        best = min(best, current)
        if on_step is not None:
            on_step(step, lr, value)
        if current > DIVERGENCE_FACTOR * best:
            stopped_early = step < steps - 1
            break
    del work, optimizer
    if not lrs:
        raise ConfigError("The very first step of the sweep gave a NaN loss: lower the start learning rate.")
    suggestion, method = suggest_lr(lrs, smoothed)
    min_lr = lrs[int(np.argmin(smoothed))]
    return LRFinderResult(lrs, losses, smoothed, suggestion, method, min_lr, stopped_early)
