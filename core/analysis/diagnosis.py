"""Hints when a run goes wrong, read from its curves alone: what went wrong and the one setting to change.

- divergence: the loss became NaN/infinite or grew far past where it started -> lower the learning rate;
- overfitting: the validation loss rose for epochs after its best while the training loss kept
  falling -> fewer epochs (or, when early stopping already kept the best epoch, more augmentation);
- underfitting: the training accuracy was still rising at the last epoch and nothing stopped the
  run early -> train longer.

A pure function of the history, so the Train page, scripts and tests read the same verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Hint", "diagnose"]

# Below these the curves are read as flat: noise on a small validation set must not raise alarms.
RISING_ACC = 0.01  # train accuracy gained at the last epoch over the best of the two before it
RISING_LOSS = 0.05  # relative rise of the validation loss over its best
DIVERGED_FACTOR = 3.0  # the last train loss this many times the first one's: training blew up


@dataclass(frozen=True)
class Hint:
    kind: str  # "divergence", "overfitting" or "underfitting"
    setting: str  # the one setting to change, as the Train page names it
    message: str


def _value(epoch, key: str) -> float:
    raw = epoch.get(key) if isinstance(epoch, dict) else getattr(epoch, key, None)
    return float("nan") if raw is None else float(raw)


def diagnose(history, stopped: str | None = None) -> list[Hint]:
    """Hints for a finished run, most serious first; empty when the curves look healthy.

    ``history`` is a ``History`` (its ``stopped`` is used) or a list of epochs (``EpochMetrics``
    or dicts with train_loss, train_acc, val_loss), with ``stopped`` None, "early", "cancelled",
    "interrupted", "failed" or "diverged" as the run ended: a run that did not end by itself gets
    no advice on its epochs (killed at epoch 2 of 30, it was told to "raise the epochs").
    """
    epochs: Sequence = getattr(history, "epochs", history)
    stopped = getattr(history, "stopped", None) or stopped
    if not epochs and stopped != "diverged":
        return []
    train_loss = [_value(e, "train_loss") for e in epochs]
    train_acc = [_value(e, "train_acc") for e in epochs]
    val_loss = [_value(e, "val_loss") for e in epochs]
    n = len(epochs)

    blew_up = any(not math.isfinite(x) for x in train_loss) or (
        n >= 2 and train_loss[0] > 0 and train_loss[-1] > DIVERGED_FACTOR * train_loss[0])
    if stopped == "diverged" or blew_up:
        return [Hint("divergence", "learning rate",
                     "The loss blew up: training diverged. Lower the learning rate (to a third or a tenth) "
                     "and train again.")]

    if stopped in ("cancelled", "interrupted", "failed"):
        # a run that did not reach its last epoch says nothing about how many epochs it needs
        return []
    hints = []
    finite = [(v, i) for i, v in enumerate(val_loss) if math.isfinite(v)]
    if len(finite) >= 3:
        best, i_best = min(finite)
        last = val_loss[-1]
        after_best = n - 1 - i_best
        if (after_best >= 2 and math.isfinite(last) and last > best * (1 + RISING_LOSS)
                and train_loss[-1] < train_loss[i_best]):
            if stopped == "early":
                hints.append(Hint(
                    "overfitting", "augmentation",
                    f"Overfitting: after epoch {i_best + 1} the validation loss rose while the training loss kept "
                    f"falling. Early stopping kept epoch {i_best + 1}'s weights; to do better, turn on more "
                    "augmentation (or freeze more groups on the Model page)."))
            else:
                hints.append(Hint(
                    "overfitting", "epochs",
                    f"Overfitting: after epoch {i_best + 1} the validation loss rose while the training loss kept "
                    f"falling. Train for fewer epochs (about {i_best + 1}) or turn on early stopping; more "
                    "augmentation or freezing more groups also help."))

    # overfitting already says "fewer epochs": never contradict it with "train longer"
    if not hints and stopped != "early" and n >= 2 and math.isfinite(train_acc[-1]):
        before = max(a for a in train_acc[-3:-1] if math.isfinite(a)) if any(
            math.isfinite(a) for a in train_acc[-3:-1]) else float("nan")
        if train_acc[-1] < 0.99 and math.isfinite(before) and train_acc[-1] - before > RISING_ACC:
            hints.append(Hint(
                "underfitting", "epochs",
                f"Underfitting: the training accuracy was still rising at the last epoch ({train_acc[-1]:.0%}). "
                f"Train longer: raise the epochs (to about {2 * n})."))
    return hints
