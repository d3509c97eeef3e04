"""What a run writes into its folder while it trains: one JSON line per event (``EventLog``), its best
weights so far (``BestKeeper``), and each arm's epochs for a run that trains several models in turn.

Every kind of run (``core.runs.kinds``) records through these callbacks of the one loop, so a page
follows any of them the same way, and a run whose worker dies keeps what it had learned.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from torch import nn

from core.runs.kept import phase_of
from core.runs.store import RunStore
from core.train.base import Callback

__all__ = ["EventLog", "Silent", "BestKeeper", "BestWeights", "ArmRecorder", "WatchRecorder", "status_of", "ending",
           "fit_info"]


class EventLog(Callback):
    """Appends one JSON line per event to the run's events.jsonl, flushed so a page sees it now."""

    def __init__(self, path: Path):
        self._fh = open(path, "a", buffering=1, encoding="utf-8")
        self._started = False

    def write(self, event: str, **fields) -> None:
        self._fh.write(json.dumps({"event": event, "t": time.time(), **fields}, default=float) + "\n")
        self._fh.flush()

    def arm(self, name: str, index: int, of: int) -> None:
        """A run that trains several models in turn (a comparison's arms): the next fit is ``name``'s,
        a new start rather than a retry."""
        self._started = False
        self.write("arm", arm=name, index=index, of=of)

    def on_fit_start(self, info) -> None:
        if self._started:  # the loop starts over at half the batch after running out of GPU memory
            self.write("retry", message=self.trainer.retry_message, batch_size=self.trainer.config.batch_size)
        self._started = True
        self.write("fit_start", info=asdict(info))

    def on_batch_end(self, progress) -> None:
        self.write("batch", **asdict(progress))

    def on_epoch_end(self, metrics) -> None:
        self.write("epoch", **asdict(metrics))

    def close(self) -> None:
        self._fh.close()


class Silent(EventLog):
    """The event log of a rank that is not rank 0: it writes nothing."""

    def __init__(self):
        self._started = False

    def write(self, event: str, **fields) -> None:
        pass

    def close(self) -> None:
        pass



class BestKeeper:
    """Writes a run's best weights so far to its folder, so an interrupted run keeps what it learned.

    The first best is written at once; a newer best is written when at least ``every`` seconds have
    passed since the last write, and otherwise kept in memory (a copy of the state) until then. A
    full model file costs about 50 ms on two cores, and on a small set nearly every epoch is a new
    best: writing each one took a quarter of a default run. A kill loses at most ``every`` seconds'
    improvement; the run's final weights are written at its end either way."""

    every = 5.0

    def __init__(self, store: RunStore, run_id: str):
        self.store, self.run_id = store, run_id
        self.reset()

    def reset(self, trainer=None) -> None:
        """A fit starts: with its ``trainer``, a kept copy holds only what that fit can change."""
        self.best, self.written, self.pending = -math.inf, None, None
        self.fitted, self.entries = None, []
        if trainer is not None:
            changing = ({id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
                        | {id(b) for b in trainer.model.buffers()})
            # (key, tensor, whether the fit can change it): a fit keeps the same tensor objects
            self.fitted = trainer.model
            self.entries = [(k, v, id(v) in changing or not isinstance(v, nn.Parameter) or v.requires_grad)
                            for k, v in trainer.model.state_dict(keep_vars=True).items()]

    def epoch_end(self, model, metrics) -> None:
        score = metrics.val_acc if math.isfinite(metrics.val_acc) else -metrics.train_loss
        now = time.monotonic()
        due = self.written is None or now - self.written >= self.every
        if math.isfinite(score) and score >= self.best:
            self.best = score
            if due:
                self._write(model.state_dict(), model, now)
            else:
                self.pending = self._copy(model)
        elif self.pending is not None and due:
            self._write(self.pending, model, now)

    def _copy(self, model) -> dict:
        """The weights as they are now. What the fit can change (the optimizer's parameters, every
        buffer) is copied; a parameter no epoch trains is kept by reference, as it will not change
        before the copy is written. With a frozen backbone the copy is the head alone: copying the
        whole EfficientNet-Lite0 took 9 ms, at nearly every epoch of a head that trains in 30 ms."""
        if model is not self.fitted:
            return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return {k: v.detach().to("cpu", copy=True) if changes else v.detach() for k, v, changes in self.entries}

    def _write(self, state, model, now: float) -> None:
        self.store.save_model(self.run_id, model, state=state)
        self.written, self.pending = now, None


class BestWeights(Callback):
    """Keeps the best weights so far on disk (``BestKeeper``) and the record's epochs with them."""

    every = 1.0  # seconds between two saves of the record's epochs; the run's end saves them all

    def __init__(self, store: RunStore, run_id: str, model, log_record):
        self.keeper, self.model, self.log_record = BestKeeper(store, run_id), model, log_record
        self.epochs: list[dict] = []
        self.saved: float | None = None

    def on_fit_start(self, info) -> None:
        self.keeper.reset(self.trainer)  # a retry starts over from the starting weights
        self.epochs, self.saved = [], None
        self.log_record(info=asdict(info))

    def on_epoch_end(self, metrics) -> None:
        self.epochs.append(asdict(metrics))
        self.keeper.epoch_end(self.model, metrics)
        # The page follows the run through its events; the record's epochs are for a run whose
        # worker dies. Saving them (the whole record, as JSON) after each of a head's 30 ms epochs
        # cost a tenth of a default run, so they are saved once a second.
        now = time.monotonic()
        if self.saved is None or now - self.saved >= self.every:
            self.log_record(epochs=list(self.epochs))
            self.saved = now


class ArmRecorder(Callback):
    """One arm of a run that trains several models in turn (a comparison's arms): puts its epochs
    in ``arms[name]["epochs"]`` as they end and calls ``changed()`` (which saves the record), and
    with ``store`` keeps its best weights so far on disk (``BestKeeper``)."""

    def __init__(self, arms: dict, name: str, changed, store: RunStore | None = None, run_id: str = ""):
        self.arms, self.name, self.changed = arms, name, changed
        self.keeper = BestKeeper(store, run_id) if store is not None else None

    def on_fit_start(self, info) -> None:
        if self.keeper is not None:
            self.keeper.reset(self.trainer)  # a retry at half the batch starts over from the starting weights
        self.arms[self.name] = {**self.arms.get(self.name, {}), "epochs": []}
        self.changed()

    def on_epoch_end(self, metrics) -> None:
        self.arms[self.name]["epochs"].append(asdict(metrics))
        if self.keeper is not None:
            self.keeper.epoch_end(self.trainer.model, metrics)
        self.changed()


class WatchRecorder(Callback):
    """Keeps the run's pinned images (``TrainConfig.watch``) in its folder: the images when the fit
    starts, their frames (``History.watch``) at most once a second while it trains and all of them
    at its end, so the Train page's player follows a run as it trains."""

    every = 1.0

    def __init__(self, store: RunStore, run_id: str, val_images):
        self.store, self.run_id, self.val_images = store, run_id, val_images
        self.saved: float | None = None

    def on_fit_start(self, info) -> None:
        pins = list(self.trainer.config.watch)
        self.store.save_watch(self.run_id, [], images=self.val_images[pins])
        self.saved = None

    def on_epoch_end(self, metrics) -> None:
        now = time.monotonic()
        if self.saved is None or now - self.saved >= self.every:
            self.save()
            self.saved = now

    def on_fit_end(self, history) -> None:
        self.save()

    def save(self) -> None:
        self.store.save_watch(self.run_id, [asdict(f) for f in self.trainer.history.watch])


def status_of(stopped: str | None) -> str:
    """A run's final status from how its fit ended (``History.stopped``): an early stop finished."""
    return stopped if stopped in ("cancelled", "diverged") else "finished"


def ending(history) -> dict:
    """How the fit ended, for the record: ``stopped`` ("early", "cancelled", "diverged"), with early
    stopping ``best_epoch``, and always ``kept_epoch`` (the epoch whose weights the saved model has,
    0 for the starting weights) and ``kept_phase`` ("warm-up", "fine-tuning" or "": see core.runs.kept)."""
    out = {"stopped": history.stopped} if history.stopped else {}
    if history.best_epoch is not None:
        out["best_epoch"] = history.best_epoch
    if history.epochs:
        kept = history.best_epoch if history.best_epoch is not None else history.epochs[-1].epoch
        out["kept_epoch"] = kept
        out["kept_phase"] = phase_of(history.plan, kept)
    return out


def fit_info(store: RunStore, run_id: str) -> dict:
    """What fit said about itself when it started (the last start, after an out-of-memory retry)."""
    events, _ = store.read_events(run_id)
    starts = [e["info"] for e in events if e.get("event") == "fit_start"]
    return starts[-1] if starts else {}

