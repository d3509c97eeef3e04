"""Feature extraction and fine-tuning: ``fit``, the public face of the one training loop.

Frozen layer groups stay exactly as they were (their BatchNorm layers run in eval mode, so
their running statistics do not move). When everything but the head is frozen, the backbone's
output is computed once per image (and per augmented view) and only the head trains on those
cached features: epochs after the first then cost milliseconds instead of seconds. The loop
itself lives in ``core.train``; this module keeps the names the pages and scripts import.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from core.backbones import Classifier
from core.train.base import *  # noqa: F401,F403  (the public names of the engine's vocabulary)
from core.train.base import __all__ as _base_names
from core.train.base import Callback, History, TrainConfig
from core.train.loop import Trainer, prefix_key, skip_prefix
from core.train.objectives import Classification
from core.train.strategies import STRATEGIES, strategy_config, strategy_of

__all__ = [*_base_names, "fit", "clone_model", "Trainer", "skip_prefix", "prefix_key", "STRATEGIES",
           "strategy_config", "strategy_of"]


def fit(model: Classifier, train_ds, val_ds, config: TrainConfig, callbacks: Sequence[Callback] = (),
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
    """
    return Trainer(model, Classification(), config, callbacks, stop, distributed=distributed,
                   shared_cache=shared_cache).fit({"train": train_ds, "val": val_ds})


def clone_model(model: Classifier) -> Classifier:
    """An independent copy (for 'before/after' comparisons)."""
    return copy.deepcopy(model)
