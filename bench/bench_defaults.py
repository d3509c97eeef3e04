"""Accuracy at the defaults on real image sets: every preset strategy against a linear probe.

For each real set (``PER_CLASS``: pictures that ship inside scikit-learn and scikit-image, at least
150 images each, nothing downloaded), each split seed (``--seeds``, three by default: a validation
set of 40 images moves 2.5 points an image, so one split cannot tell a 2-point gap; digits' probe
is 0.925, 0.900 and 0.850 on the three splits) and each preset strategy, one run of ``fit`` at
``strategy_config``'s defaults, beside a scikit-learn ``LogisticRegression`` probe on the very same
frozen features, its C in {0.01, 0.1, 1, 10} chosen by cross-validation on the training split alone.
Prints per set and strategy, as means over the seeds: the validation accuracy of the kept weights,
the gap to the probe (in points), the epochs trained and the one kept, how many runs' validation
loss rose over the last three epochs before the kept one, the validation loss at the warm-up's best
and last epochs and at the first fine-tuning epoch (with its ratio to the warm-up's best, mean and
largest), and the time. The probe is the
baseline of the same process; each set's frozen features are computed once for all its presets.
``--quick`` runs feature extraction only.

    python bench/bench_defaults.py [--sets digits,faces] [--strategies feature_extraction,full] [--size 64]

Issue 12's speed check, a default feature-extraction run on 400 images of 64 px (digits, 40 per
class, 300 of them trained on) in under 30 s on 2 cores, is
``--sets digits --per-class 40 --strategies feature_extraction --size 64 --seeds 0``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from common import add_common_args, machine_line, print_table, resolve_device

# Images per class of each real set: at least 150 images a set, as few as that allows (CPU time).
PER_CLASS = {"digits": 30, "faces": 75, "textures": 50, "photos": 22, "scenes": 30}
# "scenes": which of five grayscale photographs (scikit-image) a patch comes from, five classes of
# 30 like the held-out grayscale set of issue 28; built here, not in core.data.samples, as a
# benchmark set only.
_SCENES = ("camera", "moon", "coins", "cell", "text")


def scenes(per_class: int, seed: int = 0, size: int = 64):
    import numpy as np
    from PIL import Image
    from skimage import data

    from core.data import ImageDataset

    rng = np.random.default_rng(seed)
    items = []
    for label in _SCENES:
        image = getattr(data, label)()
        patch = min(image.shape[:2]) // 3
        h, w = image.shape
        for k in range(per_class):
            y, x = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
            crop = Image.fromarray(image[y:y + patch, x:x + patch]).resize((size, size), Image.BICUBIC)
            items.append((crop.convert("RGB"), label, f"{label}-{k + 1}"))
    return ImageDataset.from_items(items)


def real_set(name: str, seed: int = 0, per_class: int | None = None):
    """One real set by name (``PER_CLASS``): pictures that ship inside installed packages."""
    from core.data.samples import sample_dataset

    per_class = per_class or PER_CLASS[name]
    if name == "scenes":
        return scenes(per_class, seed)
    return sample_dataset(name, per_class=per_class, seed=seed)


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
    """Validation accuracy of a logistic regression whose C in {0.01, 0.1, 1, 10} is chosen by
    cross-validation on the training split alone: the probe never sees the validation set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    folds = int(min(5, np.bincount(train_y).min()))
    search = GridSearchCV(LogisticRegression(max_iter=3000), {"C": [0.01, 0.1, 1.0, 10.0]},
                          cv=StratifiedKFold(folds, shuffle=True, random_state=0)).fit(train_f, train_y)
    return float((search.predict(val_f) == val_y).mean())


def rising_at_the_end(history) -> bool:
    """Whether the validation loss rose over the last three epochs of the model the run kept (with
    early stopping, the best epoch's weights: the epochs after it were trained, then undone)."""
    kept = history.best_epoch or len(history.epochs)
    losses = [e.val_loss for e in history.epochs[:kept]]
    return len(losses) >= 4 and losses[-1] > losses[-2] > losses[-3] > losses[-4]


def warmup_epochs(history, group_names) -> int:
    """Epochs the head trained alone before the body joined (0 for feature extraction)."""
    body = group_names[:-1]
    for i, plan in enumerate(history.plan[:len(history.epochs)]):
        if any(plan.get(g, 0) > 0 for g in body):
            return i
    return 0


def join_losses(history, group_names) -> tuple[float, float, float]:
    """(best warm-up validation loss, last warm-up one, first fine-tuning one); NaN where absent."""
    end = warmup_epochs(history, group_names)
    if not end or len(history.epochs) <= end:
        return math.nan, math.nan, math.nan
    warm = [e.val_loss for e in history.epochs[:end]]
    return min(warm), warm[-1], history.epochs[end].val_loss


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--sets", default=",".join(PER_CLASS))
    parser.add_argument("--strategies", default="feature_extraction,last_stage,progressive,full")
    parser.add_argument("--per-class", type=int, default=0, help="images per class (default: PER_CLASS's)")
    parser.add_argument("--seeds", default="0,1,2",
                        help="split (and run) seeds; each figure is their mean: one image of a 40-image "
                             "validation set is 2.5 points, so one split cannot tell a 2-point gap")
    parser.add_argument("--size", type=int, default=0,
                        help="input size in pixels for every run and the probe (default: each preset's own)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    strategies = ["feature_extraction"] if args.quick else args.strategies.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]

    from core import models
    from core.analysis.evaluation import evaluate_dataset
    from core.data import split
    from core.data.encoded import labels_of
    from core.train.fitting import fit
    from core.train.strategies import strategy_config

    print(machine_line(device))
    base = models.load()
    groups = [g.name for g in base.layer_groups]
    rows = []
    for name in args.sets.split(","):
        size = args.size or strategy_config("feature_extraction", groups).image_size
        # per strategy: validation accuracies, join losses and seconds, one entry per seed
        found: dict[str, list] = {"probe": []}
        ds = real_set(name, per_class=args.per_class or None)  # one set, split three ways
        for seed in seeds:
            train, val = split(ds, 0.25, seed=seed)
            started = time.perf_counter()
            probe_model = models.classifier(base, len(ds.classes), classes=ds.classes, image_size=size)
            probe = probe_accuracy(pooled_features(probe_model, train, size, device), labels_of(train).numpy(),
                                   pooled_features(probe_model, val, size, device), labels_of(val).numpy())
            found["probe"].append((probe, (math.nan,) * 3, time.perf_counter() - started, None))
            print(f"{name} seed {seed}: probe {probe:.3f} ({len(train)} / {len(val)} images)", flush=True)
            shared: dict = {}  # the frozen body's features, computed once for every preset of this split
            for strategy in strategies:
                config = strategy_config(strategy, groups, device=str(device), seed=seed,
                                         **({"image_size": args.size} if args.size else {}))
                model = models.starting_model(base.name, ds.classes, seed=seed, image_size=config.image_size)
                started = time.perf_counter()
                history = fit(model, train, val, config, shared_cache=shared)
                seconds = time.perf_counter() - started
                acc = evaluate_dataset(model, val, device).accuracy
                found.setdefault(strategy, []).append((acc, join_losses(history, groups), seconds, history))
                best, _, first = join_losses(history, groups)
                print(f"{name} seed {seed}: {strategy} {acc:.3f} ({100 * (acc - probe):+.1f}), "
                      f"{len(history.epochs)} / {history.best_epoch or len(history.epochs)} epochs, "
                      f"join {first / best:.2f}x, {seconds:.0f} s", flush=True)
        probe = float(np.mean([r[0] for r in found["probe"]]))
        rows.append([name, f"probe ({len(seeds)} splits)", f"{probe:.3f}", "", "", "", "", "", "", "",
                     f"{sum(r[2] for r in found['probe']):.0f}"])
        for strategy in strategies:
            runs = found[strategy]
            acc = float(np.mean([r[0] for r in runs]))
            best, last, first = (float(np.mean([r[1][i] for r in runs])) for i in range(3))
            ratios = [r[1][2] / r[1][0] for r in runs]
            rows.append([name, strategy, f"{acc:.3f}", f"{100 * (acc - probe):+.1f}",
                         " ".join(f"{len(r[3].epochs)}/{r[3].best_epoch or len(r[3].epochs)}" for r in runs),
                         f"{sum(rising_at_the_end(r[3]) for r in runs)} of {len(runs)}",
                         "" if math.isnan(best) else f"{best:.3f}", "" if math.isnan(last) else f"{last:.3f}",
                         "" if math.isnan(first) else f"{first:.3f}",
                         "" if math.isnan(first) else f"{np.mean(ratios):.2f}x (max {max(ratios):.2f}x)",
                         f"{sum(r[2] for r in runs):.0f}"])
    print_table(["set", "strategy", "val acc (mean)", "gap to the probe (points)", "epochs trained/kept per seed",
                 "val loss rising before the kept epoch", "warm-up best val loss", "last warm-up",
                 "first fine-tuning", "first fine-tuning / warm-up best", "seconds (all seeds)"], rows)


if __name__ == "__main__":
    main()
