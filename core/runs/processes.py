"""The processes that train: a pool of warm worker processes (one run each at a time), and
``torchrun`` for a run that trains with several data-parallel processes.

Workers are started with ``spawn``: forking a process whose torch thread pools are running can hang
the child. A worker that dies is replaced at once, so the pool keeps its size; the run it was
training is marked failed by whoever waited on it (``core.runs.jobs``).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import queue as queue_module
import signal
import subprocess
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable
from pathlib import Path

from core.runs.store import RunStore
from core.runs.worker import serve

__all__ = ["WorkerPool", "describe_exit", "run_under_torchrun"]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"it was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"it was killed by signal {-code}"
    return f"it exited with code {code}"


_spawn_lock = threading.Lock()


def _start_without_main(process) -> None:
    """Start a spawned process without re-running this process's ``__main__`` in it.

    ``spawn`` runs the parent's main module again in the child. Under Streamlit that module is
    the page script being run at that moment (app.py), which would start another pool inside the
    worker; under pytest it is pytest. The worker needs neither: its target is importable."""
    with _spawn_lock:
        saved = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            process.start()
        finally:
            sys.modules["__main__"] = saved


class _Worker:
    def __init__(self, process, conn):
        self.process, self.conn = process, conn


class WorkerPool:
    """Warm worker processes that train run folders (``core.runs.worker.serve``), one run each at a time.

    Workers are started with ``spawn``: forking a process whose torch thread pools are running can
    hang the child. A worker that dies is replaced at once, so the pool keeps its size.
    """

    def __init__(self, size: int, threads: int | None = None, method: str = "spawn",
                 recycle_mb: float | None = None):
        self.size = max(1, int(size))
        if recycle_mb is None:
            from core.settings import get_settings

            recycle_mb = get_settings().worker_recycle_mb
        self.recycle_mb = recycle_mb  # a worker above this after a run is replaced by a fresh, warm one
        self.memory: list[tuple[int, float]] = []  # (worker pid, resident MB) after each run, for measurements
        self.replaced = 0
        if threads is None:
            import torch

            # More threads than cores left for each worker makes OpenMP spin against itself: with
            # other work on the machine a run can get ten times slower. Honour the server's own
            # limit (OMP_NUM_THREADS, torch.set_num_threads) too.
            threads = min(torch.get_num_threads(), (os.cpu_count() or 2) // self.size)
        self.threads = max(1, int(threads))
        self._ctx = mp.get_context(method)
        self._idle: queue_module.Queue[_Worker] = queue_module.Queue()
        self._busy: dict[int, _Worker] = {}
        self._lock = threading.Lock()
        self._closed = False
        # At the server's exit multiprocessing terminates the workers, and a busy worker's death would
        # start a replacement whose spawn the exiting parent cuts short (a traceback in the log):
        # closing first stops replacements. atexit runs this before multiprocessing's own handler.
        pool = weakref.ref(self)
        atexit.register(lambda: (p := pool()) is not None and p.close())
        for _ in range(self.size):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=serve, args=(child, self.threads), daemon=True,
                                    name="transfer-lab-worker")
        _start_without_main(process)
        child.close()
        return _Worker(process, parent)

    def pids(self) -> list[int]:
        """Process ids of the workers (idle and busy)."""
        with self._lock:
            busy = [w.process.pid for w in self._busy.values()]
        return busy + [w.process.pid for w in list(self._idle.queue)]

    def wait_ready(self, timeout: float = 60) -> bool:
        """Block until every idle worker has imported torch and the engine (for measurements)."""
        deadline = time.monotonic() + timeout
        for w in list(self._idle.queue):
            while not getattr(w, "ready", False):
                left = deadline - time.monotonic()
                if left <= 0 or not w.conn.poll(left):
                    return False
                kind, _ = w.conn.recv()
                w.ready = kind == "ready"
        return True

    def run(self, folder: str | Path, on_start: Callable[[int], None] | None = None) -> tuple[str | None, str]:
        """Train the run in ``folder`` on an idle worker and wait for it.

        Returns (the run's final status, "") or (None, why the worker died) when it crashed or
        was killed; the dead worker is then replaced.
        """
        worker = self._idle.get()
        if not worker.process.is_alive():
            worker = self._spawn()
        with self._lock:
            self._busy[worker.process.pid] = worker
        try:
            if on_start is not None:
                on_start(worker.process.pid)
            worker.conn.send(str(folder))
            while True:
                if worker.conn.poll(0.1):
                    try:
                        kind, value, *memory = worker.conn.recv()
                    except (EOFError, OSError):
                        break
                    if kind == "ready":
                        worker.ready = True
                        continue
                    self._give_back(worker, memory[0] if memory else None)
                    return value, ""
                if not worker.process.is_alive() and not worker.conn.poll(0):
                    break
        except (BrokenPipeError, OSError):
            pass
        worker.process.join(1)
        why = describe_exit(worker.process.exitcode)
        worker.conn.close()
        with self._lock:
            self._busy.pop(worker.process.pid, None)
        if not self._closed:
            self._idle.put(self._spawn())
        return None, why

    def _give_back(self, worker: _Worker, resident_mb: float | None = None) -> None:
        with self._lock:
            self._busy.pop(worker.process.pid, None)
        if resident_mb is not None:
            self.memory.append((worker.process.pid, resident_mb))
        if resident_mb is not None and resident_mb > self.recycle_mb and not self._closed:
            # Still big after giving memory back (a run's peak that glibc could not return): a fresh
            # worker takes its place now, and warms up (torch, the default backbone) before the next run
            self._idle.put(self._spawn())
            self.replaced += 1
            self._retire(worker)
            return
        self._idle.put(worker)

    @staticmethod
    def _retire(worker: _Worker) -> None:
        try:
            worker.conn.send(None)
        except OSError:
            pass
        threading.Thread(target=worker.process.join, args=(10,), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue_module.Empty:
                break
            try:
                worker.conn.send(None)
            except OSError:
                pass
            worker.process.join(2)
            if worker.process.is_alive():
                worker.process.terminate()
        with self._lock:
            busy = list(self._busy.values())
        for worker in busy:
            worker.process.terminate()


def run_under_torchrun(folder, processes: int, on_start=None) -> tuple[str | None, str]:
    """Train a run folder with ``torchrun`` and ``processes`` data-parallel processes (one per GPU
    on a multi-GPU server; gloo on the CPU). Returns (final status, "") or (None, why it died)."""
    root = Path(__file__).resolve().parents[2]  # where ``python -m core.cli`` is found
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "core.cli", "train-folder", str(folder)]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if on_start is not None:
        on_start(process.pid)
    _, err = process.communicate()
    record = RunStore(Path(folder).parent.parent).get(Path(folder).name)
    if record is not None and record.done:
        return record.status, ""
    last = next((line for line in reversed(err.splitlines()) if line.strip()), "")
    return None, f"torchrun exited with code {process.returncode}{': ' + last[-300:] if last else ''}"
