"""Time left and speed of a run, estimated per phase (feature caching, then the epochs).

A run's phases go at very different speeds: computing a frozen backbone's features runs the
whole network on every image, while an epoch on cached features runs only the head, often a
thousand times faster per image. One rate over the whole run therefore mixes the two: while
caching, it overstates what is left (and climbs whenever caching stalls); once the epochs start
it says "50 s left" with 2 s to go. Here each phase gets its own rate, measured only while that
phase ran, and a phase that has not started yet is never guessed from another one's speed.

Pure and clock-free: callers pass the times, so the estimate is the same in a test as in a page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["PhaseEstimate", "ProgressTracker", "fit_phase_units"]


@dataclass(frozen=True)
class PhaseEstimate:
    """What to tell a person about a run in progress."""

    phase: str  # the phase running now
    phase_seconds_left: float | None  # until this phase ends; None until its speed is known
    seconds_left: float | None  # until the run ends; None while a later phase's speed is unknown
    images_per_second: float | None  # of the phase running now, measured over that phase only
    later_phases: tuple[str, ...] = ()  # phases still to come


@dataclass
class _PhaseSeen:
    first_time: float
    first_units: float
    last_change_time: float
    last_units: float


@dataclass
class ProgressTracker:
    """Observations of one run's progress; ``estimate`` turns them into per-phase figures.

    Args:
        phase_units: work units of each phase, in the order the phases run (e.g. cache batches,
            then training batches); ``fraction`` in ``observe`` is done units / all units.
        images_per_unit: images each unit of a phase processes (a batch: the batch size).
    """

    phase_units: dict[str, int]
    images_per_unit: dict[str, float] = field(default_factory=dict)
    _seen: dict[str, _PhaseSeen] = field(default_factory=dict)
    _phase: str | None = None
    _units: float = 0.0

    @property
    def total_units(self) -> int:
        return max(1, sum(self.phase_units.values()))

    def observe(self, time: float, fraction: float, phase: str) -> None:
        """Record that at ``time`` the run had done ``fraction`` of its work, in ``phase``."""
        units = min(1.0, max(0.0, float(fraction))) * self.total_units
        seen = self._seen.get(phase)
        if seen is None:
            self._seen[phase] = _PhaseSeen(time, units, time, units)
        elif units > seen.last_units:
            seen.last_change_time, seen.last_units = time, units
        self._phase, self._units = phase, units

    def _phase_end(self, phase: str) -> float:
        end = 0.0
        for name, units in self.phase_units.items():
            end += units
            if name == phase:
                return end
        return float(self.total_units)

    def estimate(self, now: float) -> PhaseEstimate | None:
        """Per-phase time left and speed at ``now``; None before the first observation."""
        phase = self._phase
        if phase is None:
            return None
        seen = self._seen[phase]
        names = list(self.phase_units)
        later = tuple(names[names.index(phase) + 1:]) if phase in names else ()
        done = seen.last_units - seen.first_units
        took = seen.last_change_time - seen.first_time
        if done <= 0 or took <= 0:
            return PhaseEstimate(phase, None, None, None, later)
        rate = done / took  # units per second, over this phase only
        left_units = max(0.0, self._phase_end(phase) - seen.last_units)
        # Count down from the last step instead of re-measuring the speed at every look: a stall
        # (one slow batch) then lowers the estimate towards 0 instead of making it climb.
        phase_left = max(0.0, left_units / rate - max(0.0, now - seen.last_change_time))
        # A later phase's speed is unknown until it runs; only its units count as time left once
        # it can no longer surprise, i.e. when nothing is left after this phase.
        later_units = sum(self.phase_units.get(name, 0) for name in later)
        seconds_left = phase_left if later_units == 0 else None
        per_unit = self.images_per_unit.get(phase)
        speed = rate * per_unit if per_unit else None
        return PhaseEstimate(phase, phase_left, seconds_left, speed, tuple(n for n in later
                                                                          if self.phase_units.get(n, 0) > 0))


def fit_phase_units(*, epochs: int, batches_per_epoch: int, n_train: int, n_val: int, batch_size: int,
                    cached_views: int = 0) -> dict[str, int]:
    """The units ``core.train.fit`` counts in its progress fraction, per phase.

    With a feature cache it first runs the frozen part once per cached view of every training
    image and once over the validation images (one unit per batch), then trains for ``epochs``
    of ``batches_per_epoch`` units. ``cached_views`` is 0 when nothing is cached.
    """
    cache = 0
    if cached_views > 0:
        cache = math.ceil(n_train / batch_size) * cached_views + math.ceil(n_val / batch_size)
    return {"cache": cache, "train": epochs * batches_per_epoch}
