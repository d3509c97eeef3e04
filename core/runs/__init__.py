"""Runs: the only floor that knows processes and folders.

- ``store``: one folder per run (``run.json``, weights, encoded inputs, events) and the disk cap;
- ``tasks``: the task primitive (status, snapshot, cancel) and the server's one queue;
- ``processes``: the warm worker pool, and ``torchrun`` for data-parallel runs;
- ``worker``: what runs inside a worker process; ``recording``: what a run writes while it trains;
- ``registry`` and ``kinds``: which code trains which kind of run, and how each kind is queued;
- ``jobs``: queueing a run and following it through its folder; ``uploads``: weights files people bring.

``RunStore`` and ``RunRecord`` are importable from here (``core.runs.RunStore``).
"""

from core.runs.store import (
    EVENTS,
    FINISHED,
    IN_VIEW_SECONDS,
    RECENT_SECONDS,
    RunRecord,
    RunStore,
    is_run_id,
    new_run_id,
)

__all__ = ["RunRecord", "RunStore", "new_run_id", "is_run_id", "FINISHED", "RECENT_SECONDS", "IN_VIEW_SECONDS",
           "EVENTS"]
