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

__all__ = ["PhaseEstimate", "ProgressTracker", "RunClock", "fit_phase_units"]


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


# Per image, an epoch that trains the body costs about this many times a cached forward pass
# (forward and backward, where caching ran forward alone), before any such epoch has been timed:
# 3.0 predicted 18 s for "Fine-tune all"'s first body epoch on the demo set, which took 19-27 s.
BODY_EPOCH_COST = 3.0


@dataclass
class RunClock:
    """Time left of one fit, from what each kind of work in it has taken so far.

    ``ProgressTracker`` spreads one rate over the units planned at the start, which misleads on the
    runs people train most: a head's warm-up on cached features runs a hundred times faster than the
    fine-tuning epochs after it ("5 s left" with 48 s to go), the augmented views of a frozen
    backbone are cached one per epoch inside the first epochs, and early stopping ends runs long
    before their planned epochs. Here caching has its own rate, which also prices the views still to
    be cached and (times ``BODY_EPOCH_COST``) the body's epochs until one has been timed; each kind of
    epoch (the head's, the body's) is timed by the clock between the looks that saw epochs end; and
    the epochs still to come are those early stopping is likely to allow: the patience it has left,
    plus as many again for one more improvement. Pure: callers pass the times.
    """

    cache_units: int  # progress units the loop counts for caching (one view when views are cached lazily)
    view_units: int  # units of one pass over the training images
    epochs: int  # planned
    total_units: int = 1  # all the units the loop counts: caching, then every planned epoch's batches
    views: int = 1  # augmented views cached, one per epoch after the first when ``lazy``
    lazy: bool = False
    warmup: int = 0  # planned warm-up epochs (the head alone on cached features); 0: none
    patience: int = 0
    warmup_patience: int = 0
    body_images: float = 0.0  # training images x BODY_EPOCH_COST + validation images, per body epoch
    images_per_unit: float = 32.0
    head_only: bool = False
    _first: tuple[float, float] | None = None  # (time, units) of the first look
    _cache: _PhaseSeen | None = None
    _phase: str = ""
    _done: int = 0  # epochs ended
    _seconds: dict = field(default_factory=dict)  # epoch number -> wall seconds, from the looks
    _ended: list = field(default_factory=list)
    _last: tuple[float, int] | None = None  # (time, epochs ended) when the count last changed

    @classmethod
    def for_fit(cls, info: dict, config: dict, head_patience: int) -> RunClock:
        """The clock of a fit from its ``FitInfo`` (as a dict), its settings (``TrainConfig`` as a dict)
        and the warm-up's own patience (``core.train.base.HEAD_PATIENCE``)."""
        batch = int(config.get("batch_size", 32))
        cache = info.get("cache", "")
        views = int(config.get("cached_views", 3)) if config.get("augment") else 1
        per_view = math.ceil(info["n_train"] / batch)
        lazy = cache in ("head", "warmup")  # core.train.caches: a frozen body caches a view per epoch
        units = per_view if lazy else (per_view * views + math.ceil(info["n_val"] / batch) if cache else 0)
        patience = int(config.get("early_stopping", 0))
        return cls(units, per_view, info["epochs"], units + info["batches_per_epoch"] * info["epochs"],
                   views=views, lazy=lazy,
                   warmup=int(config.get("warmup_epochs", 0)) if cache == "warmup" else 0,
                   patience=patience, warmup_patience=max(patience, head_patience) if patience else 0,
                   body_images=BODY_EPOCH_COST * info["n_train"] + info["n_val"], images_per_unit=batch,
                   head_only=cache == "head")

    def observe(self, time: float, fraction: float, phase: str, epochs: list[dict]) -> None:
        """At ``time`` the fit had done ``fraction`` of its units, in ``phase``, and ended ``epochs``."""
        units = min(1.0, max(0.0, float(fraction))) * max(1, self.total_units)
        if self._first is None:
            self._first = (time, 0.0 if phase == "cache" else units)
        if phase == "cache":
            if self._cache is None:
                self._cache = _PhaseSeen(*self._first, *self._first)
            if units > self._cache.last_units:
                self._cache.last_change_time, self._cache.last_units = time, units
        if phase != "cache" and self._last is None:
            self._last = (time, len(epochs))  # the epochs begin
        elif self._last is not None and len(epochs) > self._last[1]:
            took = (time - self._last[0]) / (len(epochs) - self._last[1])
            for number in range(self._last[1] + 1, len(epochs) + 1):
                self._seconds[number] = took
            self._last = (time, len(epochs))
        self._phase, self._done, self._ended = phase, len(epochs), list(epochs)

    def _view_seconds(self) -> float | None:
        """One pass over the training images at caching's speed (units per second, that phase only)."""
        seen = self._cache
        if seen is None or seen.last_units <= seen.first_units or seen.last_change_time <= seen.first_time:
            return None
        return self.view_units * (seen.last_change_time - seen.first_time) / (seen.last_units - seen.first_units)

    def _warmup_end(self) -> int:
        """The warm-up's last epoch: planned, or sooner when an ended epoch already ran the body."""
        head = [self._seconds[n] for n in range(self.views + 1, min(self.warmup, self._done) + 1) if n in self._seconds]
        for k in range(1, len(head)):
            if head[k] > 10 * max(0.05, min(head[:k])):
                return self.views + k
        return self.warmup

    def _kind(self, number: int) -> str:
        if not self.head_only and number > self._warmup_end():
            return "body"
        return "view" if self.lazy and 2 <= number <= self.views else "head"

    def _cost(self, kind: str) -> float | None:
        """Seconds one epoch of this kind takes: the last ones timed, or a guess from caching's speed."""
        # the first epoch also fills the validation features' cache: never the time of a head epoch
        timed = [s for n, s in sorted(self._seconds.items()) if self._kind(n) == kind and (n > 1 or kind != "head")]
        if timed:
            recent = sorted(timed[-3:])
            return recent[len(recent) // 2]
        view = self._view_seconds()
        if kind == "head":
            return 0.0  # the head on cached features: negligible beside caching and the body
        if view is None:
            return None
        return view if kind == "view" else view * self.body_images / (self.view_units * self.images_per_unit)

    def _expected(self, left: int, patience: int, since: list[dict]) -> int:
        """Of ``left`` planned epochs, those early stopping with ``patience`` likely allows: what it
        has left before stopping, plus as many again for one more improvement."""
        if not patience or left <= 0:
            return max(0, left)
        losses = [e.get("val_loss", math.nan) for e in since]
        finite = [(k, v) for k, v in enumerate(losses) if math.isfinite(v)]
        waited = len(losses) - 1 - min(finite, key=lambda kv: kv[1])[0] if finite else 0
        return min(left, max(1, patience - waited) + patience)

    def seconds_left(self, now: float) -> float | None:
        """Seconds until the fit ends, or None while a part still to come cannot be priced."""
        total, done = 0.0, self._done
        if self._phase == "cache":
            view = self._view_seconds()
            if view is None:
                return None
            left = max(0.0, self.cache_units - self._cache.last_units) * view / self.view_units
            total += max(0.0, left - max(0.0, now - self._cache.last_change_time))
        end = self.epochs if self.head_only else self._warmup_end()
        plan = [n for n in range(done + 1, self.epochs + 1)]
        head = [n for n in plan if n <= end]
        body = [n for n in plan if n > end]
        keep_head = self._expected(len(head), self.patience if self.head_only else self.warmup_patience,
                                   self._ended)
        keep_body = self._expected(len(body), self.patience, self._ended[end:])
        for number in head[:keep_head] + body[:keep_body]:
            cost = self._cost(self._kind(number))
            if cost is None:
                return None
            total += cost
        if self._phase != "cache" and self._last is not None and done < self.epochs:
            current = self._cost(self._kind(done + 1)) or 0.0
            total -= min(max(0.0, now - self._last[0]), current)  # the epoch under way has run this long
        return max(0.0, total)
