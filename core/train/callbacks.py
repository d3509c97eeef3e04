"""Callbacks of the one loop that the engine itself adds to every fit: the divergence guard and early
stopping."""

from __future__ import annotations

import math

import torch

from core.train.base import HEAD_PATIENCE, BatchProgress, Callback, EpochMetrics, FitInfo, History

__all__ = ["DivergenceGuard", "EarlyStopping", "BLOW_UP_FACTOR"]

# A loss this many times its starting value (or a validation loss this many times the starting
# training loss) is a run that blew up without producing a NaN.
BLOW_UP_FACTOR = 10.0


class DivergenceGuard(Callback):
    """Ends a run whose loss becomes NaN or infinite, whose weights or BatchNorm statistics stop
    being finite, or whose loss grows far beyond where it started; the last good epoch's weights
    and buffers are put back."""

    def __init__(self, what: str = "Training"):
        self.what = what

    def on_fit_start(self, info: FitInfo) -> None:
        t = self.trainer
        self.tensors = [p for g in t.param_groups for p in g["params"]] + list(t.model.buffers())
        self.last_good = [x.detach().clone() for x in self.tensors]
        self.first_losses: list[float] = []
        self.epoch_losses: list[float] = []
        self._first_epoch: int | None = None

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch_losses = []

    def on_batch_end(self, progress: BatchProgress) -> None:
        if progress.phase == "train" and math.isfinite(progress.loss):
            # where the loss started: the first few batches of the first epoch that trains, never
            # later ones (on a small set five batches spanned epochs, and a loss already growing
            # raised the bar until a loss of 194,448 was kept as "the last good epoch")
            if self._first_epoch is None:
                self._first_epoch = progress.epoch
            if len(self.first_losses) < 5 and progress.epoch == self._first_epoch:
                self.first_losses.append(progress.loss)
            self.epoch_losses.append(progress.loss)

    def _start(self) -> float:
        return max(sum(self.first_losses) / len(self.first_losses), 0.5) if self.first_losses else math.inf

    def _blow_up(self, epoch: int, why: str) -> None:
        t = self.trainer
        with torch.no_grad():
            for x, good in zip(self.tensors, self.last_good, strict=True):
                x.copy_(good)
        t.history.best_epoch = epoch - 1  # the weights the run keeps (0: the starting ones)
        lr = t.config.lr
        t.request_stop("diverged", f"{self.what} stopped in epoch {epoch}: {why}, which usually means the "
                                   f"learning rate ({lr:g}) is too high. The weights of the last good epoch "
                                   f"were kept; try a learning rate 10× smaller ({lr / 10:g}).")

    def on_train_epoch_end(self, epoch: int) -> None:
        t = self.trainer
        if t.stop_reason == "diverged":
            self._blow_up(epoch, "the loss became NaN or infinite")
        elif not self._finite():
            self._blow_up(epoch, "a weight or a BatchNorm statistic is no longer finite")
        elif self.epoch_losses and sum(self.epoch_losses) / len(self.epoch_losses) > BLOW_UP_FACTOR * self._start():
            self._blow_up(epoch, f"the training loss grew to over {BLOW_UP_FACTOR:g}× where it started")

    def _finite(self) -> bool:
        """Every weight and statistic finite: one fused max-abs per floating tensor (NaN propagates
        through it), one sync."""
        floats = [x.detach() for x in self.tensors if x.is_floating_point()]
        if not floats:
            return True
        largest = torch._foreach_norm(floats, float("inf"))
        return bool(torch.stack([m.float() for m in largest]).isfinite().all())

    def on_epoch_end(self, metrics) -> None:
        val_loss = getattr(metrics, "val_loss", math.nan)
        if math.isfinite(val_loss) and val_loss > BLOW_UP_FACTOR * self._start():
            self._blow_up(metrics.epoch, f"the validation loss ({val_loss:.3g}) grew to over "
                                         f"{BLOW_UP_FACTOR:g}× the starting loss")
            return
        with torch.no_grad():
            torch._foreach_copy_(self.last_good, [x.detach() for x in self.tensors])


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
            for x, good in zip(self.tensors, self.best_state, strict=True):
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
