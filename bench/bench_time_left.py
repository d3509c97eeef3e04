"""How close the Train page's "about N s left" is to the truth, on the demo run and on a fine-tune.

Run from the repository root: ``python bench/bench_time_left.py [--quick] [--traces DIR]``.

Each run is trained once with ``core.train.fit`` (the app's settings: the demo set, feature
extraction's preset and "Fine-tune all"'s), recording every batch's progress and time. The page's
estimator is then replayed on that trace as the page sees it (one look a second) and, at 10 %, 20 %
... 80 % of the run's real duration, its estimate is compared with the time that was really left:
the ratio estimate / truth (1.0 is perfect; the goal is within 0.5-2.0 from 20 % on). The same
trace drives the previous estimator (one rate per phase, over the planned epochs) as the baseline.
Traces are kept in ``--traces`` so the estimators can be compared again without training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_line, print_table  # noqa: E402

from core.progress import ProgressTracker, RunClock, fit_phase_units  # noqa: E402
from core.train.base import HEAD_PATIENCE, Callback  # noqa: E402

CHECKS = (0.1, 0.2, 0.3, 0.5, 0.8)


class Trace(Callback):
    """Every batch's (seconds since the start, fraction, phase) and every epoch's end."""

    def __init__(self):
        self.start, self.points, self.epochs, self.info = time.perf_counter(), [], [], None

    def on_fit_start(self, info) -> None:
        from dataclasses import asdict

        self.info = asdict(info)  # the page sees the run start: nothing done yet, caching or training
        self.points.append((time.perf_counter() - self.start, 0.0, "cache" if info.cache else "train"))

    def on_batch_end(self, progress) -> None:
        self.points.append((time.perf_counter() - self.start, progress.fraction, progress.phase))

    def on_epoch_end(self, metrics) -> None:
        from dataclasses import asdict

        self.epochs.append((time.perf_counter() - self.start, asdict(metrics)))


def record(strategy: str, quick: bool) -> dict:
    from dataclasses import asdict

    from core.data import demo_dataset, split
    from core.models import backbones
    from core.models.heads import starting_model
    from core.train.fitting import fit
    from core.train.strategies import strategy_config

    ds = demo_dataset("source", per_class=10 if quick else 20, seed=0)
    train_ds, val_ds = split(ds, 0.2, 0)
    config = strategy_config(strategy, backbones.group_names("efficientnet_lite0"), image_size=128)
    model = starting_model("efficientnet_lite0", list(ds.classes), image_size=128)
    trace = Trace()
    fit(model, train_ds, val_ds, config, [trace])
    total = time.perf_counter() - trace.start
    return {"strategy": strategy, "config": asdict(config), "info": trace.info, "points": trace.points,
            "epochs": trace.epochs, "total": total}


def _looks(trace: dict):
    """What the page sees, once a second: (t, fraction, phase, epochs ended so far)."""
    points, epochs, t, i, j = trace["points"], trace["epochs"], 1.0, 0, 0
    while t < trace["total"]:
        while i + 1 < len(points) and points[i + 1][0] <= t:
            i += 1
        while j < len(epochs) and epochs[j][0] <= t:
            j += 1
        if points and points[i][0] <= t:
            yield t, points[i][1], points[i][2], [e for _, e in epochs[:j]]
        t += 1.0


def previous(trace: dict):
    """The page's estimator before: one rate per phase, over the epochs planned at the start."""
    info, config = trace["info"], trace["config"]
    batch = int(config["batch_size"])
    views = (int(config.get("cached_views", 3)) if config.get("augment") else 1) if info["cache"] else 0
    units = fit_phase_units(epochs=info["epochs"], batches_per_epoch=info["batches_per_epoch"], n_train=info["n_train"],
                            n_val=info["n_val"], batch_size=batch, cached_views=views)
    tracker = ProgressTracker(units, {"cache": batch, "train": batch})

    def estimate(t, fraction, phase, epochs):
        tracker.observe(t, fraction, phase)
        e = tracker.estimate(t)
        return None if e is None else e.seconds_left
    return estimate


def current(trace: dict):
    """The page's estimator now (``core.progress.RunClock``)."""
    info, config = trace["info"], trace["config"]
    clock = RunClock.for_fit(info, config, HEAD_PATIENCE)

    def estimate(t, fraction, phase, epochs):
        clock.observe(t, fraction, phase, epochs)
        return clock.seconds_left(t)
    return estimate


def replay(trace: dict, make) -> dict[float, float | None]:
    """At each check (a share of the real duration), the estimate / the real time left."""
    estimate, out, checks = make(trace), {}, list(CHECKS)
    for t, fraction, phase, epochs in _looks(trace):
        said = estimate(t, fraction, phase, epochs)
        while checks and t >= checks[0] * trace["total"]:
            truth = trace["total"] - t
            out[checks.pop(0)] = None if said is None else said / truth
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="half the demo images")
    parser.add_argument("--traces", default="", help="a folder to keep the traces in (reused when there)")
    args = parser.parse_args()
    import torch

    print(machine_line(torch.device("cpu")))
    rows = []
    for strategy, name in (("feature_extraction", "demo run (feature extraction)"), ("full", "Fine-tune all")):
        path = Path(args.traces) / f"{strategy}.json" if args.traces else None
        if path is not None and path.is_file():
            trace = json.loads(path.read_text())
        else:
            trace = record(strategy, args.quick)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(trace))
        for label, make in (("before (one rate per phase)", previous), ("now (RunClock)", current)):
            ratios = replay(trace, make)
            rows.append([name, f"{trace['total']:.1f}", label]
                        + ["—" if ratios.get(c) is None else f"{ratios[c]:.2f}" for c in CHECKS])
    print_table(["run", "seconds", "estimator"] + [f"at {c:.0%}" for c in CHECKS], rows)
    print("Each cell: estimated seconds left / real seconds left at that share of the run (— : no estimate shown).")


if __name__ == "__main__":
    main()
