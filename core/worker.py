"""What runs inside a worker process: train one run folder, reading and writing nothing else.

The folder holds ``run.json`` (record and config) and ``inputs.safetensors`` (the training and
validation images, uint8 at the run's size, and their labels). The worker builds the starting
model, trains it with ``core.training.fit``, appends one JSON line per event to ``events.jsonl``
(flushed at once, so a page can tail it), writes the best weights so far as epochs end (at most
every few seconds, ``BestKeeper``) and the final ones at the end (each atomically), and the final
record. A ``stop`` file in the folder ends the run after the current batch. ``train_run_folder``
also runs in-process (tests, a CLI).
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn
from PIL import Image

from core import backbones
from core.errors import UserInputError
from core.features import FeatureCache
from core.runs import EVENTS, RunRecord, RunStore
from core.training import Callback, TrainConfig, encode_images, fit

__all__ = ["EncodedDataset", "EventLog", "StopSignal", "ArmRecorder", "train_run_folder", "serve", "encode_inputs"]


class EncodedDataset:
    """Images already decoded to uint8 ``Tensor[N, 3, S, S]``, with the ``ImageDataset`` interface."""

    def __init__(self, images: torch.Tensor, labels, classes: list[str]):
        self.images = images
        self.labels = [int(v) for v in labels]
        self.classes = list(classes)

    def encoded(self, size: int) -> torch.Tensor:
        """The images as uint8 Tensor[N, 3, size, size] (resized only when the size differs)."""
        if self.images.shape[-1] == size and self.images.shape[-2] == size:
            return self.images
        # resized here: encode_images would hand the dataset back to this very method, forever
        resized = torch.nn.functional.interpolate(self.images.float(), size=(size, size), mode="bilinear",
                                                  antialias=True, align_corners=False)
        return resized.round_().clamp_(0, 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i].permute(1, 2, 0).numpy(), "RGB"), self.labels[i]


def encode_inputs(train_ds, val_ds, size: int) -> dict[str, torch.Tensor]:
    """What a worker needs of the two splits, as tensors for the run folder."""
    from core.training import labels_of

    return {"train_images": encode_images(train_ds, size), "train_labels": labels_of(train_ds),
            "val_images": encode_images(val_ds, size), "val_labels": labels_of(val_ds)}


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


class _Silent(EventLog):
    """The event log of a rank that is not rank 0: it writes nothing."""

    def __init__(self):
        self._started = False

    def write(self, event: str, **fields) -> None:
        pass

    def close(self) -> None:
        pass


class StopSignal:
    """``fit``'s stop flag: set by a ``stop`` file in the run folder, or when the server is gone."""

    def __init__(self, folder: Path, parent_pid: int | None = None):
        self._file = folder / "stop"
        self._parent = parent_pid

    @property
    def orphaned(self) -> bool:
        return self._parent is not None and os.getppid() != self._parent

    def is_set(self) -> bool:
        return self._file.exists() or self.orphaned


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


class _BestWeights(Callback):
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


def train_run_folder(folder: str | Path, parent_pid: int | None = None, distributed=None, log: EventLog | None = None,
                     raise_input_errors: bool = False) -> str:
    """Train the run in ``folder`` to its end; returns its final status.

    Under ``torchrun`` (a ``core.train.distributed.Distributed`` context) every rank trains its
    share of each batch from the same folder, and rank 0 alone writes to it. ``log`` replaces
    rank 0's event log (the command line's draws a progress bar too). With ``raise_input_errors``
    a run failed by input a person can fix raises that UserInputError once its record says so."""
    folder = Path(folder)
    store = RunStore(folder.parent.parent)
    run_id = folder.name
    record = store.get(run_id)
    if record is None:
        return "failed"
    stop = StopSignal(folder, parent_pid)
    main = distributed is None or distributed.main
    log = (log or EventLog(folder / EVENTS)) if main else _Silent()
    world = {"world_size": distributed.world_size} if distributed is not None else {}
    # the thread count changes a run's arithmetic (not only its speed): the record keeps it
    info = {**record.info, **world, "cpu_threads": torch.get_num_threads()}
    state = {"record": replace(record, status="running", worker_pid=os.getpid(), info=info)}

    def save(**changes) -> None:
        state["record"] = replace(state["record"], **changes)
        if main:
            store.save(state["record"])

    save()
    log.write("status", status="preparing")
    input_error = None
    try:
        status, message, changes = kind_function(state["record"])(store, state["record"], stop, log, save, distributed)
    except UserInputError as exc:
        status, message, changes, input_error = "failed", str(exc), {}, exc
    except Exception as exc:  # the record must say what happened; the worker lives on
        traceback.print_exc()
        status, message, changes = "failed", crash_message(exc, distributed), {}
    if status == "cancelled" and stop.orphaned:
        status = "interrupted"
        message = "The server stopped while this run was training; its best weights so far are kept."
    save(status=status, message=message, finished=time.time(), worker_pid=None, **changes)
    log.write("end", status=status, message=message)
    log.close()
    if main:
        store.drop_inputs(run_id)
    if input_error is not None and raise_input_errors:
        raise input_error
    return status


def crash_message(exc: Exception, distributed=None) -> str:
    """What a run's record says when its training raised ``exc`` (not a UserInputError)."""
    if distributed is not None and distributed.world_size > 1 and isinstance(
            exc, (RuntimeError, torch.distributed.DistError)):  # a lost peer, from the process group
        first = str(exc).splitlines()[0] if str(exc) else ""
        return (f"A process of this distributed run stopped or lost contact with the others "
                f"({type(exc).__name__}: {first}). Train it again.")
    return f"The run crashed: {type(exc).__name__}: {exc}"


# What a run folder holds decides what trains it: ``run.json``'s ``config["kind"]`` names one of
# these (module:function), imported when first needed so the worker loads only what it runs. Each
# takes (store, record, stop, log, save, distributed) and returns (status, message, record changes);
# every one of them trains through the one loop (``core.train.Trainer``).
KINDS = {
    "train": "core.worker:train_classifier",
    "dan": "core.adaptation:train_folder",
    "distill": "core.distillation:train_folder",
    "multitask": "core.multitask:train_folder",
    "meta": "core.fewshot:train_folder",
    "lr_find": "core.lr_finder:sweep_folder",  # a learning-rate sweep: a result in the record, no weights
}


def kind_function(record: RunRecord):
    """The function that trains this record's kind of run (UserInputError for one it cannot)."""
    import importlib

    kind = str(record.config.get("kind", "train"))
    target = KINDS.get(kind)
    if target is None:
        raise UserInputError(f"This run folder asks for a kind of training ({kind!r}) this version cannot do; "
                             f"known kinds: {', '.join(sorted(KINDS))}.")
    module, name = target.split(":")
    function = getattr(importlib.import_module(module), name, None)
    if function is None:
        raise UserInputError(f"This version cannot train {kind!r} runs yet ({target} is missing).")
    return function


# A worker's frozen-backbone features, kept between the runs it trains: a class that trains the
# default feature extraction on the demo set computes the same activations run after run (same
# backbone, images, size and augmentation seeds; the key says so), about half of such a run.
# They stay on the run's device: on a GPU that is up to this much GPU memory per worker.
BANKS = FeatureCache(max_items=256, max_bytes=192 * 2**20)


def train_classifier(store: RunStore, record: RunRecord, stop: StopSignal, log: EventLog, save, distributed=None):
    cfg = record.config
    config = TrainConfig.from_dict(cfg)
    inputs = store.load_inputs(record.id)
    train_ds = EncodedDataset(inputs["train_images"], inputs["train_labels"].tolist(), record.classes)
    val_ds = EncodedDataset(inputs["val_images"], inputs["val_labels"].tolist(), record.classes)
    del inputs

    def build():
        return backbones.starting_model(record.backbone, record.classes, pretrained=record.pretrained,
                                        seed=config.seed, image_size=config.image_size,
                                        head=cfg.get("head", "linear"), weights_path=cfg.get("weights_file"))

    model = build()
    main = distributed is None or distributed.main
    callbacks = [log]
    if main:
        store.save_start(record.id, model, record.pretrained)
        callbacks = [_BestWeights(store, record.id, model, lambda **c: save(**c)), log]  # weights first, then news
    # the loop retries once at half the batch after running out of GPU memory (EventLog says so)
    history = fit(model, train_ds, val_ds, config, callbacks, stop, distributed=distributed,
                  shared_cache=BANKS if distributed is None else None)
    status = status_of(history.stopped)
    if history.epochs and main:
        store.save_model(record.id, model)
    return status, history.message, {
        "epochs": [asdict(e) for e in history.epochs],
        "info": {**_fit_info(store, record.id), **record.info, **ending(history)},
        # the plan as trained: a warm-up that converged early skipped its remaining epochs
        "config": {**cfg, "batch_size": history.batch_size or config.batch_size,
                   "used_feature_cache": history.used_feature_cache,
                   "images_per_second": history.images_per_second, "plan": history.plan or cfg.get("plan")},
    }


def status_of(stopped: str | None) -> str:
    """A run's final status from how its fit ended (``History.stopped``): an early stop finished."""
    return stopped if stopped in ("cancelled", "diverged") else "finished"


def ending(history) -> dict:
    """How the fit ended, for the record: ``stopped`` ("early", "cancelled", "diverged") and, with
    early stopping, ``best_epoch`` (the epoch whose weights the saved model has)."""
    out = {"stopped": history.stopped} if history.stopped else {}
    if history.best_epoch is not None:
        out["best_epoch"] = history.best_epoch
    return out


def _fit_info(store: RunStore, run_id: str) -> dict:
    """What fit said about itself when it started (the last start, after an out-of-memory retry)."""
    events, _ = store.read_events(run_id)
    starts = [e["info"] for e in events if e.get("event") == "fit_start"]
    return starts[-1] if starts else {}


def own_session() -> None:
    """Leave the server's session for one of this process's own. Linux (with autogroup, the default
    on most distributions) shares the CPU fairly between sessions first and between threads within
    a session second: a worker in the server's session got 2 threads' share of 2 cores against every
    other thread there, 27 s of CPU in 262 s while 20 pages were open. The worker still ends when
    the server does: its pipe closes, or the run sees its parent gone (``StopSignal``)."""
    try:
        os.setsid()
    except (AttributeError, OSError):  # not POSIX, or already a session leader
        pass


def serve(conn, threads: int) -> None:
    """A worker process's main loop: train each folder sent through ``conn``, answer its status."""
    own_session()
    torch.set_num_threads(max(1, int(threads)))
    parent = os.getppid()
    try:
        # Warm up what the first run needs, so a click on Train shows its first point quickly.
        backbones.load(backbones.DEFAULT_BACKBONE, pretrained=True)
    except Exception:  # an unusable default backbone is reported by the run that uses it
        pass
    conn.send(("ready", os.getpid()))
    while True:
        try:
            folder = conn.recv()
        except (EOFError, OSError):
            return
        if folder is None:
            return
        status = train_run_folder(folder, parent)
        try:
            conn.send(("done", status))
        except (BrokenPipeError, OSError):
            return
