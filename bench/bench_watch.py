"""What recording pinned images (``TrainConfig.watch``) adds to a run: default feature extraction and a fine-tune.

Run from the repository root: ``python bench/bench_watch.py [--device cpu|cuda|auto] [--quick]``.

Each setting trains the same run (the demo set, EfficientNet-Lite0, 128 px, the strategy's preset)
with no pins and with 8 pins (one per class, then the next images), alternating, several times.
Two figures, both measured in this one process:

- the ratio of the median wall times with and without pins (on a busy shared machine, noise of
  +-20 % or more: runs of a minute see other people's work come and go);
- the recording's share of its own run: the time spent in the ``Watch`` callback over the rest of
  that run's time (both measured in the same run, so a busy machine slows both alike).

The issue's targets: at most 5 % for feature extraction, 10 % for a fine-tune.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_common_args, machine_line, resolve_device  # noqa: E402


def pins(val, n: int = 8) -> tuple[int, ...]:
    first = {}
    for i, label in enumerate(val.labels):
        first.setdefault(label, i)
    chosen = list(first.values())[:n]
    return tuple(chosen + [i for i in range(len(val)) if i not in chosen][:n - len(chosen)])


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a busy shared machine: 1)")
    parser.add_argument("--only", default="", help="run only the settings whose name contains this")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from core.data import demo_dataset
    from core.data.encoded import EncodedDataset, encode_images, labels_of
    from core.data.splits import split
    from core.models import backbones
    from core.models.heads import starting_model
    from core.train import fit
    from core.train import watch as watching
    from core.train.strategies import strategy_config

    spent = [0.0]

    def timed(method):
        def wrapper(self, *args):
            started = time.perf_counter()
            try:
                return method(self, *args)
            finally:
                spent[0] += time.perf_counter() - started
        return wrapper

    watching.Watch.on_fit_start = timed(watching.Watch.on_fit_start)
    watching.Watch.on_epoch_end = timed(watching.Watch.on_epoch_end)

    device = resolve_device(args.device)
    print(machine_line(device))
    ds = demo_dataset("source", per_class=8 if args.quick else 20, seed=0)
    train, val = split(ds, 0.2, seed=0)
    size = 128
    enc = {name: EncodedDataset(encode_images(d, size), labels_of(d).tolist(), ds.classes)
           for name, d in (("train", train), ("val", val))}
    groups = backbones.group_names("efficientnet_lite0")
    watched = pins(enc["val"])
    repeats = 1 if args.quick else 3
    epochs = 3 if args.quick else 6
    settings = {"feature extraction": strategy_config("feature_extraction", groups, image_size=size),
                "fine-tune (last stage)": strategy_config("last_stage", groups, image_size=size, epochs=epochs,
                                                          warmup_epochs=0),
                "fine-tune (all)": strategy_config("full", groups, image_size=size, epochs=epochs, warmup_epochs=0)}
    print(f"demo set: {len(enc['train'])} training, {len(enc['val'])} validation images; {len(watched)} pinned; "
          f"{torch.get_num_threads()} torch threads")
    for name, base in settings.items():
        if args.only not in name:
            continue
        base = replace(base, device=str(device))
        times: dict[bool, list[float]] = {False: [], True: []}
        shares = []
        for r in range(repeats + 1):
            for watch in (False, True) if r % 2 == 0 else (True, False):
                config = replace(base, watch=watched if watch else ())
                model = starting_model("efficientnet_lite0", ds.classes, seed=0, image_size=size)
                spent[0] = 0.0
                started = time.perf_counter()
                history = fit(model, enc["train"], enc["val"], config)  # no shared cache: each run computes its own
                took = time.perf_counter() - started
                if r:  # the first round warms up allocators and caches
                    times[watch].append(took)
                    if watch:
                        shares.append(spent[0] / (took - spent[0]))
                if watch and r == 1:
                    print(f"  {name}: {len(history.epochs)} epochs, {len(history.watch)} frames")
        plain, pinned = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name}: without pins {plain:.2f} s, with pins {pinned:.2f} s (median of {repeats}) -> "
              f"ratio {pinned / plain:.3f} ({(pinned / plain - 1) * 100:+.1f} %); the recording's own share of "
              f"its runs: {statistics.median(shares) * 100:.1f} % (median; each: "
              f"{', '.join(f'{x * 100:.1f}' for x in shares)} %)")


if __name__ == "__main__":
    main()
