"""A person's training settings without the UI: which ones they edited, which ones a link locks.

The app keeps one workspace per person (pages/ui/workspace.py); this module holds the rules it
applies to every change, so they are the same for the Model page, the Train page, the LR finder,
lessons and links:

- a locked setting changes only through the link that locked it; any other change to it is refused
  and reported;
- choosing a strategy puts back that strategy's preset, except the settings the person edited and
  those a link locks, which keep their values (and are named, so the page can say so).

Locks are a classroom convenience, not access control: a student who edits the address bar
opens the app with other locks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, replace

from core.train.base import TrainConfig
from core.train.strategies import strategy_config

__all__ = ["LOCK_OF", "PRESET_FIELDS", "DATA_FIELDS", "FIELD_WORDS", "locked_fields", "apply_changes",
           "preset_changes"]

# TrainConfig field -> the name of the link lock (core.links.LOCKABLE) that holds it.
LOCK_OF = {
    "epochs": "epochs", "lr": "lr", "seed": "seed", "image_size": "size",
    "freeze": "freeze", "lr_multipliers": "freeze", "unfreeze_every": "freeze",
}
# What a strategy's preset decides (core.train.strategies); the rest describes the data or the person.
PRESET_FIELDS = ("epochs", "lr", "batch_size", "weight_decay", "augment", "cached_views", "early_stopping",
                 "warmup_epochs", "keep_bn_stats", "unfreeze_every", "freeze", "lr_multipliers")
# Settings a change of strategy never touches: they describe the images, not the strategy.
DATA_FIELDS = ("seed", "image_size", "flip", "color_jitter", "device", "optimizer", "schedule", "train_bn")
# How a page names a field when it says which were kept.
FIELD_WORDS = {
    "epochs": "epochs", "lr": "learning rate", "batch_size": "batch size", "early_stopping": "early-stopping patience",
    "warmup_epochs": "head warm-up", "augment": "augmentation", "freeze": "frozen groups",
    "lr_multipliers": "learning-rate multipliers", "unfreeze_every": "unfreezing pace", "weight_decay": "weight decay",
    "cached_views": "cached views", "keep_bn_stats": "BatchNorm statistics", "seed": "seed", "image_size": "input size",
}
_FIELDS = {f.name for f in fields(TrainConfig)}


def locked_fields(locks: Iterable[str]) -> set[str]:
    """The TrainConfig fields that these link locks hold."""
    locks = set(locks)
    return {name for name, lock in LOCK_OF.items() if lock in locks}


def apply_changes(config: TrainConfig, changes: Mapping, locks: Iterable[str] = ()) -> tuple[TrainConfig, list[str]]:
    """``config`` with ``changes`` made, except to locked fields; (the new config, the fields refused).

    A change that sets a field to the value it has is no change, so it is never refused.
    """
    unknown = set(changes) - _FIELDS
    if unknown:
        raise KeyError(f"not TrainConfig fields: {', '.join(sorted(unknown))}")
    held = locked_fields(locks)
    refused = [k for k, v in changes.items() if k in held and v != getattr(config, k)]
    allowed = {k: v for k, v in changes.items() if k not in refused}
    updated = replace(config, **allowed) if allowed else config
    return _fit_warmup(updated), refused


def preset_changes(strategy: str, groups: Sequence[str], config: TrainConfig, edited: Iterable[str] = (),
                   locks: Iterable[str] = ()) -> tuple[TrainConfig, list[str]]:
    """The preset of ``strategy`` (a core.train.strategies code) for these layer groups, with the
    fields the person ``edited`` or the ``locks`` hold kept at ``config``'s values; (the config,
    the preset's fields that kept a value other than the preset's)."""
    preset = strategy_config(strategy, list(groups), **{k: getattr(config, k) for k in DATA_FIELDS})
    keep = (set(edited) & set(PRESET_FIELDS)) | locked_fields(locks)
    kept = [k for k in PRESET_FIELDS if k in keep and getattr(preset, k) != getattr(config, k)]
    updated = replace(preset, **{k: getattr(config, k) for k in kept})
    return _fit_warmup(updated), kept


def _fit_warmup(config: TrainConfig) -> TrainConfig:
    """A preset's 30 warm-up epochs in a run of 7 epochs cannot work: the warm-up shrinks to fit,
    as the Train page shows it (at most one less than the epochs)."""
    if config.warmup_epochs <= max(0, config.epochs - 1):
        return config
    return replace(config, warmup_epochs=max(0, config.epochs - 1))
