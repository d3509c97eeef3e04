"""Few-shot transfer: the cost of one ANIL meta-training epoch, and the methods side by side.

Run from the repository root: ``python bench/bench_fewshot.py [--quick] [--table]`` (on the CPU:
the figures are about what a laptop without a GPU can do). On a loaded machine, run it with
``OMP_NUM_THREADS=1``: tiny inner-loop matrices on two contended threads ran 25x slower than on one.

1. One meta-training epoch of ANIL over 100 episodes (5-way 5-shot, body frozen, its features
   cached by the loop) on the pretrained default backbone; the target is under 10 s on 2 cores.
   The baseline, measured in the same process, is the prototypes evaluation of 100 episodes on
   the same cached features (no training at all): the ratio says what meta-training costs.
2. With ``--table``: every method × {1-shot, 5-shot}, 5-way, mean query accuracy ± the 95 %
   interval, on the generated demo and on scikit-learn's digits (10 classes: 5 base, 5 novel).
   MAML and first-order MAML adapt per episode through the top of the network, so they get
   fewer episodes (``--meta-episodes``).
"""

from __future__ import annotations

import argparse
import time

from common import machine_line, print_table  # first: it puts the repository on sys.path

from core import models
from core.data import demo_fewshot
from core.methods import fewshot


def anil_epoch(backbone, ds, split, episodes: int) -> None:
    t0 = time.perf_counter()
    model = fewshot.few_shot_model(backbone, 5)
    base = ds.subset([i for i, y in enumerate(ds.labels) if ds.classes[y] in split.base])
    history = fewshot.meta_train(model, base, 5, 5, fewshot.meta_config("anil", episodes=episodes))
    fit = time.perf_counter() - t0
    epoch = history.epochs[0].seconds
    # baseline: scoring as many episodes by prototypes, features cached beforehand (same process)
    fewshot.evaluate(backbone, ds, "prototypes", 5, 5, n_query=5, episodes=2, split=split)
    t0 = time.perf_counter()
    fewshot.evaluate(backbone, ds, "prototypes", 5, 5, n_query=5, episodes=episodes, split=split)
    proto = time.perf_counter() - t0
    print(f"ANIL meta-training, {episodes} episodes of 5-way 5-shot on cached features:")
    print(f"  one epoch {epoch:.2f} s (target < 10 s; the whole fit with its feature cache {fit:.1f} s)")
    print(f"  prototypes on {episodes} episodes {proto:.2f} s; ANIL epoch / prototypes = {epoch / proto:.1f}x")
    print(f"  query accuracy while meta-training: {history.epochs[0].train_acc:.3f}")


def table(backbone, sets, episodes: int, meta_episodes: int) -> None:
    rows = []
    for name, ds in sets:
        split = fewshot.split_classes(ds.classes, seed=0)
        for method in fewshot.METHODS:
            row = [f"{name}: {method}"]
            for k in (1, 5):
                n = meta_episodes if method in ("maml", "fomaml") else episodes
                r = fewshot.evaluate(backbone, ds, method, 5, k, n_query=5, episodes=n, split=split)
                row.append(f"{r.mean:.3f} ± {r.ci95:.3f} ({n} ep, {r.seconds:.0f} s)")
            rows.append(row)
            print(" | ".join(row), flush=True)
    print_table(["set: method", "5-way 1-shot", "5-way 5-shot"], rows, "Few-shot accuracy on novel classes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes, for a smoke run")
    parser.add_argument("--table", action="store_true", help="also the methods x shots table (minutes on a CPU)")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--meta-episodes", type=int, default=50)
    args = parser.parse_args()
    import torch

    print(machine_line(torch.device("cpu")))
    backbone = models.load()
    ds = demo_fewshot(n_classes=20, per_class=20)
    split = fewshot.split_classes(ds.classes, seed=0)
    anil_epoch(backbone, ds, split, 20 if args.quick else 100)
    if args.table:
        from core.data.samples import sample_dataset

        sets = [("demo", ds), ("digits", sample_dataset("digits", per_class=20, size=64))]
        episodes = 20 if args.quick else args.episodes
        table(backbone, sets, episodes, 5 if args.quick else args.meta_episodes)


if __name__ == "__main__":
    main()
