"""The preset ways to transfer a pretrained backbone, each with the settings that suit it.

- ``feature_extraction``: the backbone is frozen and only the new head trains, on cached features,
  until the validation loss stops improving (the best epoch's head is kept). An epoch costs
  milliseconds, so the head is trained to convergence rather than for a fixed few epochs.
- ``last_stage``: the head warms up alone first (a new random head would otherwise send large,
  noisy gradients into pretrained layers), then the last two backbone groups train with it at a
  tenth and a third of the head's rate.
- ``progressive``: after the warm-up, one more group from the top unfreezes every epoch (ULMFiT),
  with rates that shrink geometrically toward the input (discriminative rates).
- ``full``: after the warm-up every group trains, with discriminative rates from 1/100 of the
  head's rate at the stem.

Every fine-tuning preset warms the head up on cached features until it converges (at most 30
epochs), stops early once the validation loss stops improving and keeps its best epoch, so none
ends on a rising validation loss, and keeps BatchNorm's pretrained statistics while the body trains.

What changes at the join, when the body starts to train after the warm-up, and why (each suspect
of the validation loss's jump measured alone by ``bench/bench_join.py``; digits, "full", the first
fine-tuning epoch's validation loss over the warm-up's best, 1.51x as the preset stands):

- The body's rates ramp up linearly over its first epoch (each group's own, under progressive
  unfreezing); without a ramp 1.85x. The head starts fine-tuning's schedule at once and keeps its
  optimizer state (a fresh optimizer: 1.50x; the head not training at all after the join: 1.46x:
  the head is not what jumps).
- BatchNorm layers of the groups that train keep their pretrained statistics (``keep_bn_stats``),
  although they are the dip's main cause: letting them normalise by batch removed it (0.97x; on
  the grayscale "scenes" set 4.9x instead of 41x, from a warm-up loss of 0.007), since with the
  statistics held fixed Adam's first steps shift every channel's mean and scale and nothing absorbs
  it. But it cost the kept accuracy (bench_defaults, digits at 128 px: "full" 0.90 instead of 0.95,
  "progressive" 0.875 instead of 0.887, below feature extraction), so the dip stays for now; earlier,
  300 digits at 64 px: 0.97 with them fixed against 0.83. Early stopping keeps the best epoch.
- Unchanged, because changing them made the jump larger or left most of it: augmentation (the warm-up's cached views
  become live crops; without augmentation at all 3.6x), the batch (16 for warm-up and fine-tuning
  alike; 32: 2.4x), drop-connect (off: 2.5x), and the rate multipliers (the body's at a tenth:
  1.37x, and fine-tuning then never beat the warm-up).
"""

from __future__ import annotations

from collections.abc import Sequence

from core.errors import ConfigError
from core.train.base import HEAD_PATIENCE, TrainConfig, discriminative_multipliers

__all__ = ["STRATEGIES", "strategy_config", "strategy_of"]

STRATEGIES = {
    "feature_extraction": "Feature extraction",
    "last_stage": "Fine-tune the last stage",
    "progressive": "Progressive unfreezing",
    "full": "Fine-tune all",
}

_HEAD_ONLY = dict(epochs=60, early_stopping=HEAD_PATIENCE, lr=3e-3, batch_size=32, weight_decay=1e-4, augment=True,
                  cached_views=3, warmup_epochs=0, unfreeze_every=0)
# The warm-up is at most WARMUP epochs of the head alone, on cached features (milliseconds each),
# ended by early stopping once the head has converged; the fine-tuning epochs come after it.
WARMUP = 30
# Fine-tuning waits 5 epochs for a better validation loss: its first epochs, pretrained layers
# moving for the first time, are often worse than the warm-up's head before they are better
# (full fine-tuning of digits at 128 px: 0.91 with patience 3, kept from the warm-up; 0.95 with 5).
_FINE_TUNE = dict(batch_size=16, weight_decay=1e-2, augment=True, early_stopping=5, warmup_epochs=WARMUP,
                  keep_bn_stats=True)


def _body(group_names: Sequence[str]) -> list[str]:
    return list(group_names[:-1])


def strategy_config(strategy: str, group_names: Sequence[str], **overrides) -> TrainConfig:
    """The preset's ``TrainConfig`` for a backbone with these layer groups (input to output, head
    last); ``overrides`` replace any field. ``TrainConfig()``'s defaults are feature extraction's."""
    group_names = list(group_names)
    if len(group_names) < 2:
        raise ConfigError("A strategy needs a backbone with at least one group besides the head.")
    body, head = _body(group_names), group_names[-1]
    if strategy == "feature_extraction":
        settings = dict(_HEAD_ONLY, freeze=body, lr_multipliers={})
    elif strategy == "last_stage":
        trainable = body[-2:] if len(body) > 2 else body[-1:]
        rates = {g: m for g, m in zip(trainable, (0.1, 0.3)[-len(trainable):], strict=True)}
        settings = dict(_FINE_TUNE, epochs=WARMUP + 10, lr=2e-3, freeze=[g for g in body if g not in trainable],
                        lr_multipliers={**rates, head: 1.0})
    elif strategy == "progressive":
        settings = dict(_FINE_TUNE, epochs=WARMUP + 12, lr=2e-3, freeze=[], unfreeze_every=1,
                        lr_multipliers=discriminative_multipliers(group_names, 0.01))
    elif strategy == "full":
        settings = dict(_FINE_TUNE, epochs=WARMUP + 10, lr=2e-3, freeze=[],
                        lr_multipliers=discriminative_multipliers(group_names, 0.01))
    else:
        raise ConfigError(f"Unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}.")
    settings.update(overrides)
    config = TrainConfig(**settings)
    config.validate(group_names)
    return config


def strategy_of(config: TrainConfig, group_names: Sequence[str]) -> str | None:
    """The preset whose freezing and schedule ``config`` follows, or None for a custom setup."""
    body = _body(list(group_names))
    if set(config.freeze) >= set(body):
        return "feature_extraction"
    if config.unfreeze_every:
        return "progressive"
    if not config.freeze:
        return "full"
    return "last_stage" if len([g for g in body if g not in config.freeze]) <= 2 else None
