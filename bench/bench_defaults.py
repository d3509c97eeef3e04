"""Accuracy at the defaults on real image sets: every preset strategy against a linear probe.

For each real set (core.data.samples: pictures that ship inside scikit-learn and scikit-image) and
each preset strategy, one run of ``fit`` at ``strategy_config``'s defaults, beside a scikit-learn
``LogisticRegression`` probe on the very same frozen features (best of C in {0.01, 0.1, 1, 10}).
Prints per set and strategy: the probe, our default, the gap (ours − probe, in points), the epochs
trained and the one kept, whether the validation loss rose over the last three epochs before the
kept one, and the time. The probe is the baseline of
the same process. ``--quick`` runs feature extraction only.

    python bench/bench_defaults.py [--sets digits,faces] [--strategies feature_extraction,full] [--size 64]

Issue 12's speed check, a default feature-extraction run on 400 images of 64 px (digits, 40 per
class, 300 of them trained on) in under 30 s on 2 cores, is
``--sets digits --strategies feature_extraction --size 64``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import add_common_args, machine_line, print_table, resolve_device


def pooled_features(model, ds, size: int, device) -> np.ndarray:
    from core.data.encoded import encode_images, normalise

    images = encode_images(ds, size)
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    model.eval().to(device)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            out.append(model.forward_features(normalise(images[start:start + 64].to(device), mean, std)).float().cpu())
    return torch.cat(out).numpy()


def probe_accuracy(train_f, train_y, val_f, val_y) -> float:
    """The best validation accuracy of a logistic regression over C in {0.01, 0.1, 1, 10}."""
    from sklearn.linear_model import LogisticRegression

    best = 0.0
    for c in (0.01, 0.1, 1.0, 10.0):
        clf = LogisticRegression(C=c, max_iter=3000).fit(train_f, train_y)
        best = max(best, float((clf.predict(val_f) == val_y).mean()))
    return best


def rising_at_the_end(history) -> bool:
    """Whether the validation loss rose over the last three epochs of the model the run kept (with
    early stopping, the best epoch's weights: the epochs after it were trained, then undone)."""
    kept = history.best_epoch or len(history.epochs)
    losses = [e.val_loss for e in history.epochs[:kept]]
    return len(losses) >= 4 and losses[-1] > losses[-2] > losses[-3] > losses[-4]


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--sets", default="digits,faces,textures,photos")
    parser.add_argument("--strategies", default="feature_extraction,last_stage,progressive,full")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=0,
                        help="input size in pixels for every run and the probe (default: each preset's own)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    strategies = ["feature_extraction"] if args.quick else args.strategies.split(",")

    from core import models
    from core.data import split
    from core.data.encoded import labels_of
    from core.data.samples import sample_dataset
    from core.train.fitting import fit
    from core.train.strategies import strategy_config

    print(machine_line(device))
    base = models.load()
    groups = [g.name for g in base.layer_groups]
    rows = []
    for name in args.sets.split(","):
        ds = sample_dataset(name, per_class=args.per_class, seed=args.seed)
        train, val = split(ds, 0.25, seed=args.seed)
        size = args.size or strategy_config("feature_extraction", groups).image_size
        started = time.perf_counter()
        probe_model = models.classifier(base, len(ds.classes), classes=ds.classes, image_size=size)
        probe = probe_accuracy(pooled_features(probe_model, train, size, device), labels_of(train).numpy(),
                               pooled_features(probe_model, val, size, device), labels_of(val).numpy())
        rows.append([name, "logistic-regression probe", f"{probe:.3f}", "", "", "", f"{time.perf_counter() - started:.1f}"])
        for strategy in strategies:
            config = strategy_config(strategy, groups, device=str(device), seed=args.seed,
                                     **({"image_size": args.size} if args.size else {}))
            model = models.starting_model(base.name, ds.classes, seed=args.seed, image_size=config.image_size)
            started = time.perf_counter()
            history = fit(model, train, val, config)
            seconds = time.perf_counter() - started
            from core.analysis.evaluation import evaluate_dataset

            acc = evaluate_dataset(model, val, device).accuracy
            rows.append([name, strategy, f"{acc:.3f}", f"{100 * (acc - probe):+.1f}",
                         f"{len(history.epochs)} / {history.best_epoch or len(history.epochs)}",
                         "yes" if rising_at_the_end(history) else "no", f"{seconds:.1f}"])
            print(" | ".join(rows[-1]), flush=True)
    print_table(["set", "strategy", "val acc", "gap (points)", "epochs (trained / kept)",
                 "val loss rising before the kept epoch", "seconds"], rows)


if __name__ == "__main__":
    main()
