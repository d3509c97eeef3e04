"""Callbacks of the one loop that the engine itself uses (the divergence guard lives with the loop)."""

from __future__ import annotations

import math

import torch

from core.train.base import HEAD_PATIENCE, Callback, EpochMetrics, FitInfo, History

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Ends the fit after ``patience`` epochs without a lower validation loss, and puts back the
    weights (and BatchNorm statistics) of the best epoch, so the model is the one the curve's
    best point shows."""

    def __init__(self, patience: int, min_delta: float = 1e-4):
        self.patience, self.min_delta = int(patience), float(min_delta)

    def on_fit_start(self, info: FitInfo) -> None:
        t = self.trainer
        self.tensors = [p for g in t.param_groups for p in g["params"]] + list(t.model.buffers())
        self.best, self.best_epoch, self.best_state, self.wait = math.inf, None, None, 0

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        loss = metrics.val_loss
        if not math.isfinite(loss):
            return
        t = self.trainer
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = loss, metrics.epoch, 0
            self.best_state = [x.detach().clone() for x in self.tensors]
            return
        self.wait += 1
        if metrics.epoch == t.warmup_end:  # the warm-up's last epoch: fine-tune from its best head
            self._put_back_best()
            self.wait = 0
            return
        warming = metrics.epoch < t.warmup_end
        if self.wait < (max(self.patience, HEAD_PATIENCE) if warming else self.patience):
            return
        if warming:
            # the head's warm-up has converged: not the end of the run, the start of fine-tuning,
            # from the best head (the last one may already be past it)
            self._put_back_best()
            self.wait = 0
            t.end_warmup(metrics.epoch)
            return
        t.request_stop("early", f"Stopped early after epoch {metrics.epoch}: the validation loss "
                                f"had not improved for {self.patience} epochs.")

    def _put_back_best(self) -> None:
        with torch.no_grad():
            for x, good in zip(self.tensors, self.best_state):
                x.copy_(good)

    def on_fit_end(self, history: History) -> None:
        if self.best_state is None or history.stopped == "diverged":
            return
        history.best_epoch = self.best_epoch
        if history.epochs and history.epochs[-1].epoch != self.best_epoch:
            self._put_back_best()
            note = f"The model keeps the weights of epoch {self.best_epoch}, its best validation loss."
            history.message = f"{history.message} {note}".strip()
        self.best_state = None
