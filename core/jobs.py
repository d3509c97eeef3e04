"""Training runs in worker threads, behind one server-wide queue.

A job never touches the UI: pages read ``job.snapshot()`` on a timer. Reruns, page switches and
closed browsers do not stop a job; it finishes, saves its run to disk and stays findable by id.
"""

from __future__ import annotations

import gc
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from core.backbones import Classifier
from core.errors import UserInputError
from core.runs import RunRecord, RunStore
from core.training import BatchProgress, Callback, EpochMetrics, FitInfo, History, TrainConfig, fit

__all__ = ["TrainingQueue", "TrainingJob", "JobSnapshot", "submit", "get_job", "get_queue"]


class TrainingQueue:
    """At most ``slots`` runs train at once; the others wait in arrival order."""

    def __init__(self, slots: int):
        self.slots = max(1, int(slots))
        self._cond = threading.Condition()
        self._running: set[str] = set()
        self._waiting: deque[str] = deque()

    def position(self, job_id: str) -> int | None:
        """1-based place in the waiting line, or None when not waiting."""
        with self._cond:
            try:
                return self._waiting.index(job_id) + 1
            except ValueError:
                return None

    def acquire(self, job_id: str, cancelled: threading.Event) -> bool:
        with self._cond:
            self._waiting.append(job_id)
            try:
                while not (len(self._running) < self.slots and self._waiting[0] == job_id):
                    if cancelled.is_set():
                        return False
                    self._cond.wait(timeout=0.2)
                self._running.add(job_id)
                return True
            finally:
                self._waiting.remove(job_id)
                self._cond.notify_all()

    def release(self, job_id: str) -> None:
        with self._cond:
            self._running.discard(job_id)
            self._cond.notify_all()

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)


@dataclass(frozen=True)
class JobSnapshot:
    """What a page needs to draw a run, copied so the worker can go on."""

    run_id: str
    status: str  # queued, preparing, running, finished, failed, cancelled, diverged
    epochs: tuple[EpochMetrics, ...]
    batch_losses: tuple[tuple[float, float], ...]  # (fractional epoch, loss)
    progress: float
    seconds_left: float | None
    message: str
    queue_position: int | None
    info: FitInfo | None
    phase: str
    started: float | None
    first_point_after: float | None  # seconds from submit to the first point on the curve

    @property
    def done(self) -> bool:
        return self.status in ("finished", "failed", "cancelled", "diverged")


class _Recorder(Callback):
    def __init__(self, job: "TrainingJob"):
        self.job = job

    def on_fit_start(self, info: FitInfo) -> None:
        with self.job._lock:
            self.job._info = info
            self.job._status = "running"
            self.job._fit_started = time.perf_counter()

    def on_batch_end(self, progress: BatchProgress) -> None:
        job = self.job
        with job._lock:
            job._progress = progress.fraction
            job._phase = progress.phase
            if progress.phase == "train":
                x = progress.epoch - 1 + progress.batch / progress.batches
                job._batch_losses.append((x, progress.loss))
                if job._first_point is None:
                    job._first_point = time.perf_counter() - job._submitted

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        job = self.job
        with job._lock:
            job._epochs.append(metrics)
            if job._first_point is None:
                job._first_point = time.perf_counter() - job._submitted
        job._persist()


class TrainingJob:
    """One training run: builds its own model, trains it in a thread, saves it to the store."""

    def __init__(self, record: RunRecord, store: RunStore, build_model: Callable[[], Classifier],
                 train_ds, val_ds, config: TrainConfig, queue: TrainingQueue):
        self.record = record
        self.run_id = record.id
        self.store = store
        self.config = config
        self._build_model = build_model
        self._train_ds, self._val_ds = train_ds, val_ds
        self._queue = queue
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._status = "queued"
        self._epochs: list[EpochMetrics] = []
        self._batch_losses: list[tuple[float, float]] = []
        self._progress = 0.0
        self._phase = "queued"
        self._message = ""
        self._info: FitInfo | None = None
        self._submitted = time.perf_counter()
        self._fit_started: float | None = None
        self._first_point: float | None = None
        self.model: Classifier | None = None
        self.history: History | None = None
        self._thread = threading.Thread(target=self._run, name=f"train-{self.run_id}", daemon=True)

    def start(self) -> "TrainingJob":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            seconds_left = None
            if self._fit_started is not None and 0.02 < self._progress < 1:
                elapsed = time.perf_counter() - self._fit_started
                seconds_left = elapsed * (1 - self._progress) / self._progress
            return JobSnapshot(
                run_id=self.run_id,
                status=self._status,
                epochs=tuple(self._epochs),
                batch_losses=tuple(self._batch_losses),
                progress=self._progress,
                seconds_left=seconds_left,
                message=self._message,
                queue_position=self._queue.position(self.run_id) if self._status == "queued" else None,
                info=self._info,
                phase=self._phase,
                started=self._fit_started,
                first_point_after=self._first_point,
            )

    def _persist(self, **changes) -> None:
        with self._lock:
            self.record = replace(
                self.record,
                epochs=[e.__dict__.copy() for e in self._epochs],
                message=self._message,
                info=self._info.__dict__.copy() if self._info else {},
                **changes,
            )
            record = self.record
        self.store.save(record)

    def _set(self, status: str, message: str = "") -> None:
        with self._lock:
            self._status = status
            if message:
                self._message = message

    def _run(self) -> None:
        if not self._queue.acquire(self.run_id, self._stop):
            self._set("cancelled", "Cancelled while waiting in the queue.")
            self._persist(status="cancelled", finished=time.time())
            return
        try:
            self._set("preparing")
            with self._lock:
                self._phase = "preparing"
            self._persist(status="running")
            self._train_with_oom_retry()
        except UserInputError as exc:
            self._set("failed", str(exc))
            self._persist(status="failed", finished=time.time())
        except Exception as exc:  # a crash must reach the Train page, not kill the server
            traceback.print_exc()
            self._set("failed", f"The run crashed: {type(exc).__name__}: {exc}")
            self._persist(status="failed", finished=time.time())
        finally:
            self._queue.release(self.run_id)
            self._train_ds = self._val_ds = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _train_with_oom_retry(self) -> None:
        config = self.config
        for attempt in range(2):
            model = self._build_model()
            if attempt == 0:
                self.store.save_start(self.run_id, model, self.record.pretrained)
            try:
                history = fit(model, self._train_ds, self._val_ds, config, [_Recorder(self)], self._stop)
                break
            except torch.cuda.OutOfMemoryError:
                del model
                gc.collect()
                torch.cuda.empty_cache()
                if attempt == 1 or config.batch_size == 1:
                    raise UserInputError(
                        f"The GPU ran out of memory even with batch size {config.batch_size}. "
                        "Choose a smaller input size, a smaller batch or freeze more layers."
                    ) from None
                config = replace(config, batch_size=max(1, config.batch_size // 2))
                with self._lock:
                    self._epochs.clear()
                    self._batch_losses.clear()
                    self._message = f"The GPU ran out of memory; retrying with batch size {config.batch_size}."
        self.model, self.history = model, history
        status = {"cancelled": "cancelled", "diverged": "diverged"}.get(history.stopped or "", "finished")
        if history.epochs:
            self.store.save_model(self.run_id, model)
        self._set(status, history.message)
        self._persist(status=status, finished=time.time(),
                      config={**self.record.config, "batch_size": config.batch_size,
                              "used_feature_cache": history.used_feature_cache,
                              "images_per_second": history.images_per_second})
        self.store.enforce_cap(keep=frozenset({self.run_id}))


_registry_lock = threading.Lock()
_jobs: dict[str, TrainingJob] = {}
_queue: TrainingQueue | None = None


def get_queue(slots: int | None = None) -> TrainingQueue:
    """The one queue of this server process."""
    global _queue
    with _registry_lock:
        if _queue is None:
            from core.settings import get_settings

            _queue = TrainingQueue(slots or get_settings().max_concurrent_runs)
        return _queue


def submit(record: RunRecord, store: RunStore, build_model: Callable[[], Classifier], train_ds, val_ds,
           config: TrainConfig, queue: TrainingQueue | None = None) -> TrainingJob:
    """Save the run's record and start training it as soon as the queue allows."""
    config.validate()
    store.create(record)
    job = TrainingJob(record, store, build_model, train_ds, val_ds, config, queue or get_queue())
    with _registry_lock:
        _jobs[record.id] = job
        # Forget finished jobs beyond the newest few hundred; their runs stay on disk.
        if len(_jobs) > 300:
            for old_id in [k for k, j in _jobs.items() if not j._thread.is_alive()][:100]:
                _jobs.pop(old_id, None)
    return job.start()


def get_job(run_id: str) -> TrainingJob | None:
    with _registry_lock:
        return _jobs.get(run_id)




def start_run(store: RunStore, train_ds, val_ds, *, backbone: str, pretrained: bool, config: TrainConfig,
              weights_path=None, head: str = "linear", owner: str = "", label: str = "",
              dataset: str = "", queue: TrainingQueue | None = None) -> TrainingJob:
    """Queue a run that builds a fresh classifier for ``train_ds``'s classes and trains it."""
    from core import backbones
    from core.runs import new_run_id
    from core.training import training_plan

    config.validate()
    classes = list(train_ds.classes)
    if len(classes) < 2:
        raise UserInputError("Training needs at least two classes: add another class on the Data page.")
    if len(train_ds) < 2:
        raise UserInputError("Training needs at least two training images.")

    def build() -> Classifier:
        return backbones.starting_model(backbone, classes, pretrained=pretrained, seed=config.seed,
                                        image_size=config.image_size, head=head, weights_path=weights_path)

    record = RunRecord(
        id=new_run_id(), status="queued", created=time.time(), backbone=backbone,
        pretrained=bool(pretrained or weights_path), classes=classes,
        config={**config.to_dict(), "head": head, "n_train": len(train_ds), "n_val": len(val_ds),
                "weights_file": str(weights_path) if weights_path else None,
                "plan": training_plan(backbones.group_names(backbone), config)},
        owner=owner, label=label or f"{backbone} {'pretrained' if pretrained else 'scratch'}", dataset=dataset,
    )
    return submit(record, store, build, train_ds, val_ds, config, queue)


__all__.append("start_run")
