"""What runs inside a worker process: train one run folder, reading and writing nothing else.

The folder holds ``run.json`` (record and config) and ``inputs.safetensors`` (the training and
validation images, uint8 at the run's size, and their labels). The worker builds the starting
model, trains it with ``core.train.fit``, appends one JSON line per event to ``events.jsonl``
(flushed at once, so a page can tail it), writes the best weights so far as epochs end (at most
every few seconds, ``BestKeeper``) and the final ones at the end (each atomically), and the final
record. A ``stop`` file in the folder ends the run after the current batch. ``train_run_folder``
also runs in-process (tests, a CLI).
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from core.errors import UserInputError
from core.models.backbones import DEFAULT_BACKBONE, load
from core.runs.recording import EventLog, Silent
from core.runs.registry import kind_function
from core.runs.store import EVENTS, RunStore

__all__ = ["StopSignal", "train_run_folder", "crash_message", "own_session", "serve", "resident_mb", "give_memory_back"]


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
    log = (log or EventLog(folder / EVENTS)) if main else Silent()
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


def resident_mb(pid: int | str = "self") -> float:
    """A process's resident memory now, in MB (Linux: /proc; elsewhere NaN)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def give_memory_back() -> None:
    """Between runs: free what the last run left and hand glibc's free pages back to the system.
    Without ``malloc_trim`` a worker's memory only went up (1.0 GB to 2.45 GB over 10 fine-tunes)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the pool replaces a worker that stays big
        pass


def serve(conn, threads: int) -> None:
    """A worker process's main loop: train each folder sent through ``conn``, answer its status."""
    own_session()
    torch.set_num_threads(max(1, int(threads)))
    parent = os.getppid()
    try:
        # Warm up what the first run needs, so a click on Train shows its first point quickly.
        load(DEFAULT_BACKBONE, pretrained=True)
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
        give_memory_back()
        try:
            conn.send(("done", status, resident_mb()))
        except (BrokenPipeError, OSError):
            return
