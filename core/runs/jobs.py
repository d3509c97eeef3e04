"""Training runs as tasks: queued in the server, trained in a worker process, seen through their folder.

``start_run`` checks the run's budget (its images once encoded, ``Settings.max_run_inputs_mb``),
writes ``run.json`` and queues a ``TrainingRun`` task that holds only references to the session's
images. When a slot is free the task writes those pictures to the folder, hands it to a warm worker
process (``core.runs.worker``), which encodes them at the run's size, and waits; a page's ``snapshot()`` is read from the folder's ``events.jsonl``.
Reruns, page switches and closed browsers do not stop a run; a worker that dies marks its run
failed and is replaced, and the server goes on. No model lives in the server's memory.
"""

from __future__ import annotations

import threading
import time
from dataclasses import fields

import torch

from core.data.encoded import Pending, check_input_budget, labels_of
from core.errors import UserInputError
from core.models.backbones import group_names
from core.runs.processes import run_under_torchrun
from core.runs.store import RunRecord, RunStore, new_run_id
from core.runs.tasks import Snapshot, Task, TaskQueue, get_queue
from core.settings import get_settings
from core.train.base import EpochMetrics, FitInfo, TrainConfig, training_plan
from core.train.multitask import MultiTaskEpochMetrics

__all__ = ["TrainingRun", "JobSnapshot", "start_run", "start_folder_run", "new_record", "create_run", "encode_inputs",
           "get_job", "get_queue", "snapshot_of", "cancel_waiting", "RunView"]

JobSnapshot = Snapshot  # the name pages and scripts know


def _known(cls, data: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _epoch_metrics(event: dict) -> EpochMetrics:
    """An epoch event as metrics; a multi-task run's keep their per-task figures (curves per task)."""
    if "val_acc_by_task" in event:
        return MultiTaskEpochMetrics(**_known(MultiTaskEpochMetrics, event))
    return EpochMetrics(**_known(EpochMetrics, event))


class RunView:
    """A run's live state, read from its folder's events.jsonl a little more at each refresh.

    For a run that trains several models in turn (``EventLog.arm``), the snapshot's ``epochs``
    is {arm: tuple of dicts of that arm's epoch metrics}, ``progress`` is over all arms, and
    ``extra`` holds the arm training now (``arm``, ``epoch``) and what ``update`` events said."""

    def __init__(self, store: RunStore, run_id: str):
        self.store, self.run_id = store, run_id
        self._offset = 0
        self.epochs: list[EpochMetrics] = []
        self.batch_losses: list[tuple[float, float]] = []
        self.progress = 0.0
        self.phase = "queued"
        self.message = ""
        self.info: FitInfo | None = None
        self.started: float | None = None
        self.first_point: float | None = None
        # a run that trains several models in turn (see EventLog.arm): epochs per arm, as dicts
        # of the arm's own metrics (a DAN epoch has more fields than EpochMetrics)
        self.arms: dict[str, list[dict]] = {}
        self.arm: str | None = None
        self._arm_at = (0, 1)  # (index, of): where the arm's progress sits in the whole run
        self.epoch = 0  # the epoch the last batch was in
        self.extra: dict = {}  # what a kind of run adds with "update" events (a teacher's accuracy, ...)

    def refresh(self, created: float) -> None:
        events, self._offset = self.store.read_events(self.run_id, self._offset)
        for e in events:
            kind = e.get("event")
            if kind == "status":
                self.phase = e.get("status", self.phase)
            elif kind == "fit_start":
                self.info = FitInfo(**_known(FitInfo, e["info"]))
                if self.started is None or self.arm is None:  # time left counts from the first arm's start
                    self.started = e["t"]
                self.phase = "train"
            elif kind == "arm":
                self.arm, self._arm_at = e["arm"], (e.get("index", 0), max(1, e.get("of", 1)))
                self.arms[self.arm] = []
                self.progress = self._arm_at[0] / self._arm_at[1]
            elif kind == "update":
                self.extra.update({k: v for k, v in e.items() if k not in ("event", "t")})
            elif kind == "batch":
                index, of = self._arm_at
                self.progress, self.phase = (index + e["fraction"]) / of, e.get("phase", "train")
                self.epoch = e.get("epoch", self.epoch)
                if self.phase == "train":
                    self.batch_losses.append((e["epoch"] - 1 + e["batch"] / e["batches"], e["loss"]))
                    if self.first_point is None:
                        self.first_point = e["t"] - created
            elif kind == "epoch":
                self.epochs.append(_epoch_metrics(e))
                if self.arm is not None:
                    self.arms[self.arm].append({k: v for k, v in e.items() if k not in ("event", "t")})
                if self.first_point is None:
                    self.first_point = e["t"] - created
            elif kind == "retry":
                self.epochs.clear()
                self.batch_losses.clear()
                if self.arm is not None:
                    self.arms[self.arm] = []
                self.message = e.get("message", "")

    def snapshot(self, record: RunRecord, status: str | None = None, queue_position: int | None = None) -> Snapshot:
        self.refresh(record.created)
        if record.done:
            status = record.status
        elif status is None or status not in ("queued",):
            status = "running" if self.info is not None else "preparing"
        seconds_left = None
        if status == "running" and self.started is not None and 0.02 < self.progress < 1:
            elapsed = time.time() - self.started
            seconds_left = elapsed * (1 - self.progress) / self.progress
        now = record.finished if record.done and record.finished else time.time()
        return Snapshot(
            id=record.id, status=status, progress=1.0 if status == "finished" else self.progress,
            phase=self.phase if status != "queued" else "queued",
            message=record.message or self.message, seconds=now - record.created,
            queue_position=queue_position if status == "queued" else None,
            epochs={arm: tuple(rows) for arm, rows in self.arms.items()} if self.arms else tuple(self.epochs),
            batch_losses=tuple(self.batch_losses), seconds_left=seconds_left, info=self.info,
            started=self.started, first_point_after=self.first_point,
            extra={**self.extra, "arm": self.arm, "epoch": self.epoch} if self.arms else dict(self.extra),
        )


class TrainingRun(Task):
    """One training run: its body waits for a slot, then for the worker process that trains it."""

    kind = "run"

    def __init__(self, store: RunStore, record: RunRecord, queue: TaskQueue, inputs):
        super().__init__(name="train", queue=queue, owner=record.owner, task_id=record.id)
        self.store, self.record, self.run_id = store, record, record.id
        self._inputs = inputs  # tensors and Pending images; dropped once written, so no dataset stays here
        self._view = RunView(store, record.id)
        self._view_lock = threading.Lock()
        self.worker_pid: int | None = None

    def start(self) -> TrainingRun:
        self._thread.start()  # admitted by start_run, before its folder was made
        return self

    def cancel(self) -> None:
        self.stop.set()
        self.store.request_stop(self.run_id)

    def snapshot(self) -> Snapshot:
        record = self.store.get(self.run_id) or self.record
        with self._lock:
            status = self._status
        position = self._queue.position(self.run_id) if status == "queued" else None
        with self._view_lock:
            return self._view.snapshot(record, "queued" if status == "queued" else None, position)

    def _finish(self, status: str, message: str = "", result=None) -> None:
        super()._finish(status, message, result)
        record = self.store.get(self.run_id)
        if record is not None and not record.done:  # cancelled in the queue, or the worker died
            self.store.save(RunRecord(**{**record.__dict__, "status": status, "message": message,
                                         "finished": time.time(), "worker_pid": None}))
            self.store.drop_inputs(self.run_id)

    def _body(self) -> None:
        if self.stop.is_set():
            self._finish("cancelled", "Cancelled while waiting in the queue.")
            return
        with self._lock:
            self._status = "preparing"
        # only now, with a slot: the pictures go to the folder and the worker encodes them
        inputs, self._inputs = self._inputs, None
        self.store.save_inputs(self.run_id, inputs)
        del inputs

        def started(pid: int) -> None:
            self.worker_pid = pid

        processes = get_settings().processes_per_run
        if processes > 1:
            status, why = run_under_torchrun(self.store.folder(self.run_id), processes, started)
        else:
            status, why = self._queue.worker_pool().run(self.store.folder(self.run_id), on_start=started)
        if status is None:
            self._finish("failed", f"The training process stopped unexpectedly ({why}), so this run failed. "
                                   "The server is fine: start the run again.")
        else:
            self._finish(status)
        self.store.enforce_cap(keep=frozenset({self.run_id}))


_registry_lock = threading.Lock()
_jobs: dict[str, TrainingRun] = {}


def get_job(run_id: str) -> TrainingRun | None:
    with _registry_lock:
        return _jobs.get(run_id)


def snapshot_of(store: RunStore, run_id: str) -> Snapshot | None:
    """A run's state from its folder alone (a run this process did not start, e.g. from the CLI)."""
    job = get_job(run_id)
    if job is not None:
        return job.snapshot()
    record = store.get(run_id)
    return None if record is None else RunView(store, run_id).snapshot(record, record.status)


def cancel_waiting(owner: str, queue: TaskQueue | None = None) -> int:
    """Cancel every run of ``owner`` still waiting for a slot; returns how many."""
    return (queue or get_queue()).cancel_waiting(owner)


def encode_inputs(train_ds, val_ds, size: int) -> dict[str, torch.Tensor | Pending]:
    """What a worker needs of the two splits: their labels, and their images to encode at ``size``
    (``Pending``: the worker encodes them, see ``RunStore.load_inputs``)."""
    return {"train_images": Pending(train_ds, size), "train_labels": labels_of(train_ds),
            "val_images": Pending(val_ds, size), "val_labels": labels_of(val_ds)}


def check_budget(inputs: dict) -> None:
    """Refuse a run whose images, once encoded, would exceed the server's ``max_run_inputs_mb``."""
    check_input_budget(inputs, get_settings().max_run_inputs_mb * 2**20)


def new_record(train_ds, val_ds, *, backbone: str, pretrained: bool, config: TrainConfig, weights_path=None,
               head: str = "linear", owner: str = "", label: str = "", dataset: str = "") -> RunRecord:
    """A queued run's record, after checking that the run can start at all."""
    config.validate()
    classes = list(train_ds.classes)
    if len(classes) < 2:
        raise UserInputError("Training needs at least two classes: add another class on the Data page.")
    if len(train_ds) < 2:
        raise UserInputError("Training needs at least two training images.")
    return RunRecord(
        id=new_run_id(), status="queued", created=time.time(), backbone=backbone,
        pretrained=bool(pretrained or weights_path), classes=classes,
        config={**config.to_dict(), "head": head, "n_train": len(train_ds), "n_val": len(val_ds),
                "weights_file": str(weights_path) if weights_path else None,
                "plan": training_plan(group_names(backbone), config)},
        owner=owner, label=label or f"{backbone} {'pretrained' if pretrained else 'scratch'}", dataset=dataset,
    )


def create_run(store: RunStore, train_ds, val_ds, **options) -> RunRecord:
    """Write a run's folder (record and encoded images) without queueing it: whoever calls
    ``core.runs.worker.train_run_folder`` on it trains it (a test, a command line)."""
    record = new_record(train_ds, val_ds, **options)
    inputs = encode_inputs(train_ds, val_ds, int(options["config"].image_size))
    check_budget(inputs)
    store.create(record)
    store.save_inputs(record.id, inputs)
    return record


def start_run(store: RunStore, train_ds, val_ds, *, backbone: str, pretrained: bool, config: TrainConfig,
              weights_path=None, head: str = "linear", owner: str = "", label: str = "",
              dataset: str = "", queue: TaskQueue | None = None) -> TrainingRun:
    """Queue a run that builds a fresh classifier for ``train_ds``'s classes and trains it in a
    worker process. Raises ``QueueFullError`` when ``owner`` already has their share queued."""
    record = new_record(train_ds, val_ds, backbone=backbone, pretrained=pretrained, config=config,
                        weights_path=weights_path, head=head, owner=owner, label=label, dataset=dataset)
    size = int(config.image_size)
    return start_folder_run(store, record, lambda: encode_inputs(train_ds, val_ds, size), queue=queue)


def start_folder_run(store: RunStore, record: RunRecord, inputs, queue: TaskQueue | None = None) -> TrainingRun:
    """Queue any kind of run (``record.config["kind"]``, see ``core.runs.registry.KINDS``): ``inputs()``
    returns what its worker reads (``RunStore.load_inputs``): tensors, and images as ``Pending``,
    which the worker encodes once the run has a slot. Called at once, so it must not encode.
    Raises a ConfigError when the encoded images would exceed the server's budget for a run, and
    ``QueueFullError`` when ``record.owner`` already has their share queued; either before any work."""
    queue = queue or get_queue()
    inputs = inputs() if callable(inputs) else inputs
    check_budget(inputs)
    job = TrainingRun(store, record, queue, inputs)
    queue.admit(job)
    try:
        store.create(record)
    except BaseException:
        queue.forget(job.id)
        raise
    with _registry_lock:
        _jobs[record.id] = job
        # Forget finished runs beyond the newest few hundred; they stay on disk, and hold no model.
        if len(_jobs) > 300:
            for old_id in [k for k, j in _jobs.items() if not j.alive][:100]:
                _jobs.pop(old_id, None)
    return job.start()
