"""Background work: one task primitive, one server-wide queue, and the worker processes that train.

Every long piece of work (a training run, a DAN comparison, a distillation, a long analysis) is a
``Task``: one status set, one ``Snapshot`` type, ``cancel()``, ``join()``, and a slot of the one
``TaskQueue`` when it trains. A task's body runs in a thread of the server; a training run's
thread only hands the run's folder to a ``WorkerPool`` process and waits (see ``core.runs.jobs``), so
training never shares the server's GIL or torch's global random generator with another run.
A page polls ``snapshot()`` and cannot tell which kind of body it is.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import UserInputError
from core.runs.processes import WorkerPool
from core.runs.store import new_run_id
from core.settings import get_settings

__all__ = [
    "STATUSES",
    "DONE",
    "QueueFullError",
    "Snapshot",
    "TaskQueue",
    "Task",
    "get_queue",
    "get_pool",
    "reset",
]

STATUSES = ("queued", "preparing", "running", "finished", "failed", "cancelled", "diverged", "interrupted")
DONE = ("finished", "failed", "cancelled", "diverged", "interrupted")


class QueueFullError(UserInputError):
    """One person already has as many runs queued as the server allows per person."""


@dataclass(frozen=True)
class Snapshot:
    """What a page needs to draw a task, copied so the task can go on."""

    id: str
    status: str
    progress: float = 0.0  # of the whole task, in [0, 1]
    phase: str = ""  # what it is doing now, in words or as a phase name ("cache", "train", ...)
    message: str = ""
    seconds: float = 0.0  # since the task was created
    queue_position: int | None = None
    epochs: Any = ()  # tuple of EpochMetrics, or {arm: tuple} for tasks that train several models
    batch_losses: tuple = ()  # (fractional epoch, loss)
    seconds_left: float | None = None
    info: Any = None  # the training's FitInfo, once known
    started: float | None = None  # wall-clock time training began
    first_point_after: float | None = None  # seconds from submit to the first point on the curve
    extra: dict = field(default_factory=dict)  # what one kind of task adds (teacher accuracy, λ, ...)

    @property
    def done(self) -> bool:
        return self.status in DONE

    @property
    def run_id(self) -> str:
        return self.id

    def __getattr__(self, name: str):
        # kind-specific fields read like the others: snap.teacher_val_acc, snap.temperature
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(name)


# ----------------------------------------------------------------------------- the queue


class TaskQueue:
    """At most ``slots`` tasks train at once; the others wait in arrival order.

    ``per_person`` limits how many tasks one owner may have queued or training at once, so one
    person's twenty clicks cannot make everyone else wait (tasks without an owner, e.g. from
    scripts, are not limited). ``pool`` is the worker pool the queue's training runs use.
    """

    def __init__(self, slots: int, per_person: int | None = None, pool: WorkerPool | None = None,
                 pool_factory: Callable[[], WorkerPool] | None = None):
        self.slots = max(1, int(slots))
        self.per_person = per_person
        self.pool = pool
        self._pool_factory = pool_factory
        self._cond = threading.Condition()
        self._running: set[str] = set()
        self._waiting: deque[str] = deque()
        self._owners: dict[str, str] = {}  # task id -> owner, while queued or training
        self._tasks: dict[str, Task] = {}

    def worker_pool(self) -> WorkerPool:
        """The pool this queue's training runs use, started on first use (or the server's)."""
        with self._cond:
            if self.pool is None and self._pool_factory is not None:
                self.pool = self._pool_factory()
            if self.pool is not None:
                return self.pool
        return get_queue().worker_pool()

    # --- admission -----------------------------------------------------------------------
    def room_for(self, owner: str) -> int | None:
        """How many more tasks ``owner`` may queue now (None: no limit)."""
        if not owner or self.per_person is None:
            return None
        with self._cond:
            mine = sum(1 for o in self._owners.values() if o == owner)
        return max(0, self.per_person - mine)

    def admit(self, task: Task, count: int = 1) -> None:
        """Count ``task`` against its owner's share; QueueFullError when there is no room."""
        with self._cond:
            if task.owner and self.per_person is not None:
                mine = sum(1 for o in self._owners.values() if o == task.owner)
                if mine + count > self.per_person:
                    raise QueueFullError(self.full_message())
            self._owners[task.id] = task.owner
            self._tasks[task.id] = task

    def full_message(self) -> str:
        n = self.per_person or 0
        return (f"You already have {n} run{'s' if n != 1 else ''} training or waiting, the most one person may "
                "queue at once so that everyone gets a turn. Wait for one to finish, or cancel your waiting runs.")

    def mine(self, owner: str) -> list[Task]:
        """``owner``'s tasks that are queued or training, oldest first."""
        with self._cond:
            return [self._tasks[i] for i, o in self._owners.items() if o == owner and i in self._tasks]

    def cancel_waiting(self, owner: str) -> int:
        """Cancel every task of ``owner`` still waiting for a slot; returns how many."""
        with self._cond:
            waiting = [self._tasks[i] for i in self._waiting if self._owners.get(i) == owner and i in self._tasks]
            admitted = [t for i, t in self._tasks.items()
                        if self._owners.get(i) == owner and i not in self._running and i not in self._waiting]
        victims = [t for t in waiting + admitted if t.snapshot().status == "queued"]
        for task in victims:
            task.cancel()
        return len(victims)

    def forget(self, task_id: str) -> None:
        with self._cond:
            self._owners.pop(task_id, None)
            self._tasks.pop(task_id, None)
            self._cond.notify_all()

    # --- slots ---------------------------------------------------------------------------
    def position(self, task_id: str) -> int | None:
        """1-based place in the waiting line, or None when not waiting."""
        with self._cond:
            try:
                return self._waiting.index(task_id) + 1
            except ValueError:
                return None

    def acquire(self, task_id: str, cancelled: threading.Event) -> bool:
        with self._cond:
            self._waiting.append(task_id)
            try:
                while True:
                    if cancelled.is_set():  # cancelled before or while waiting: never starts
                        return False
                    if len(self._running) < self.slots and self._waiting[0] == task_id:
                        break
                    self._cond.wait(timeout=0.2)
                self._running.add(task_id)
                return True
            finally:
                self._waiting.remove(task_id)
                self._cond.notify_all()

    def release(self, task_id: str) -> None:
        with self._cond:
            self._running.discard(task_id)
            self._cond.notify_all()

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)


# ----------------------------------------------------------------------------- tasks


class Task:
    """One piece of background work; a page polls ``snapshot()`` and never waits on it.

    The body is ``target(task)``, run in a thread. It reports with ``task.report(fraction, text)``
    and should end early once ``task.stop`` is set; a ``UserInputError`` becomes the task's
    message as is. With ``queue``, the body runs only once the task holds one of its slots.
    """

    kind = "task"

    def __init__(self, target: Callable[[Task], Any] | None = None, name: str = "task", *,
                 queue: TaskQueue | None = None, owner: str = "", task_id: str | None = None,
                 arms: tuple[str, ...] = ()):
        self.id = task_id or new_run_id()
        self.name = name
        self.owner = owner
        self._target = target
        self._queue = queue
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._status = "queued"
        self._progress = 0.0
        self._text = ""
        self._message = ""
        self._result: Any = None
        self._extra: dict = {}
        self._epochs: dict[str, list] = {arm: [] for arm in arms}  # "" for a task that trains one model
        self._created = time.perf_counter()
        self._ended: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-{self.id}", daemon=True)

    # --- what callers use ----------------------------------------------------------------
    def start(self) -> Task:
        if self._queue is not None:
            self._queue.admit(self)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self.snapshot().done

    @property
    def result(self) -> Any:
        with self._lock:
            return self._result

    def snapshot(self) -> Snapshot:
        with self._lock:
            end = self._ended if self._ended is not None else time.perf_counter()
            queued = self._status == "queued" and self._queue is not None
            epochs = {arm: tuple(e) for arm, e in self._epochs.items()}
            return Snapshot(self.id, self._status, self._progress, self._text, self._message,
                            end - self._created, self._queue.position(self.id) if queued else None,
                            epochs=epochs.get("", ()) if set(epochs) <= {""} else epochs, extra=dict(self._extra))

    # --- what bodies use -----------------------------------------------------------------
    def report(self, fraction: float, text: str = "") -> None:
        with self._lock:
            self._status = "running"
            self._progress = float(min(1.0, max(0.0, fraction)))
            if text:
                self._text = text

    def add_epoch(self, metrics, arm: str = "") -> None:
        """One more epoch of the model ``arm`` this task trains (for its curves)."""
        with self._lock:
            self._epochs.setdefault(arm, []).append(metrics)

    def update(self, **extra) -> None:
        """Set kind-specific fields of the snapshot (``Snapshot.extra``)."""
        with self._lock:
            self._extra.update(extra)

    def _finish(self, status: str, message: str = "", result: Any = None) -> None:
        with self._lock:
            self._status, self._result = status, result
            if message:
                self._message = message
            self._ended = time.perf_counter()
            if status == "finished":
                self._progress = 1.0

    def _prepare(self) -> None:
        """Work done before waiting for a slot (e.g. writing a run's inputs to its folder)."""

    def _body(self) -> Any:
        return self._target(self)

    def _guarded(self, step: Callable[[], Any]) -> tuple[bool, Any]:
        """Run one step; an error ends the task as failed with a message a person can read."""
        try:
            return True, step()
        except UserInputError as exc:
            self._finish("failed", str(exc))
        except Exception as exc:  # a crash must reach the page, not kill the server
            traceback.print_exc()
            self._finish("failed", f"The {self.kind} crashed: {type(exc).__name__}: {exc}")
        return False, None

    def _run(self) -> None:
        queue = self._queue
        try:
            ok, _ = self._guarded(self._prepare)
            if not ok:
                return
            if queue is not None and not queue.acquire(self.id, self.stop):
                self._finish("cancelled", "Cancelled while waiting for a free training slot.")
                return
            try:
                ok, result = self._guarded(self._body)
                if ok and self._ended is None:
                    self._finish("cancelled" if self.stop.is_set() else "finished", "", result)
            finally:
                if queue is not None:
                    queue.release(self.id)
        finally:
            if queue is not None:
                queue.forget(self.id)


# ----------------------------------------------------------------------------- the server's own

_lock = threading.Lock()
_queue: TaskQueue | None = None


def get_queue() -> TaskQueue:
    """The one queue of this server process, with its warm worker pool (started on first use)."""
    global _queue
    with _lock:
        if _queue is None:
            settings = get_settings()
            slots = settings.max_concurrent_runs
            _queue = TaskQueue(slots, settings.max_queued_per_person, pool_factory=lambda: WorkerPool(slots))
        return _queue


def get_pool() -> WorkerPool:
    """The server's warm worker pool: call it at start-up so the first click trains at once."""
    return get_queue().worker_pool()


def reset() -> None:
    """Close this process's pool and forget its queue (tests, shutdown)."""
    global _queue
    with _lock:
        if _queue is not None and _queue.pool is not None:
            _queue.pool.close()
        _queue = None
