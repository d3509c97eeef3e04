"""Feature extraction and fine-tuning: ``fit``, the public face of the one training loop.

Frozen layer groups stay exactly as they were (their BatchNorm layers run in eval mode, so
their running statistics do not move). When everything but the head is frozen, the backbone's
output is computed once per image (and per augmented view) and only the head trains on those
cached features: epochs after the first then cost milliseconds instead of seconds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from core.train.base import Callback, History, TrainConfig
from core.train.loop import Trainer
from core.train.multitask import MultiTask
from core.train.objectives import Classification

__all__ = ["fit", "clone_model"]


def fit(model: nn.Module, train_ds, val_ds, config: TrainConfig, callbacks: Sequence[Callback] = (),
        stop=None, *, distributed=None, shared_cache=None) -> History:
    """Train ``model`` in place on ``train_ds``, evaluating on ``val_ds`` after every epoch.

    Setting ``stop`` (a ``threading.Event``) ends the run within one batch. A loss that becomes
    NaN or infinite, or grows far past where it started, ends the run with a message, and the
    weights of the last good epoch are put back. Layer groups that never train are computed once
    per image (and per cached augmented view) when ``config.cache_features`` allows, and only the
    rest of the network runs. ``distributed``: this process's share of a ``torchrun`` job
    (``core.train.distributed.Distributed``). ``shared_cache``: a mapping that keeps those cached
    activations for later fits (keyed by the frozen layers' weights, the images, the size and the
    augmentation seed, so a hit is the same tensor a fresh pass would compute).

    A multi-task model (one head per task, ``core.models.multitask``) trains on every task with
    the tasks' losses added up; ``core.train.multitask.fit_multitask`` chooses another weighting.
    """
    objective = MultiTask() if getattr(model, "tasks", None) else Classification()
    return Trainer(model, objective, config, callbacks, stop, distributed=distributed,
                   shared_cache=shared_cache).fit({"train": train_ds, "val": val_ds})


def clone_model(model: nn.Module) -> nn.Module:
    """An independent copy (for 'before/after' comparisons)."""
    return copy.deepcopy(model)
