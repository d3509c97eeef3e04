"""The join after the head's warm-up: each suspect of the validation loss's jump, one at a time.

A fine-tuning preset warms the head up on cached features, then the body joins. This runs the
preset on one real set and, for each variant that changes one thing at the join, prints the
validation loss at the warm-up's best epoch, at its last epoch and at the first fine-tuning epoch,
their ratio (first fine-tuning / warm-up best), the first fine-tuning epoch's training accuracy,
and the validation accuracy of the weights the run keeps. The unchanged preset in the same process
is the baseline. Fine-tuning is cut to ``--ft-epochs`` epochs: the join is what is measured.

    python bench/bench_join.py [--set scenes] [--strategy full] [--variants as-is,no-aug,...]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from bench_defaults import real_set
from common import add_common_args, machine_line, print_table, resolve_device


def variants():
    """name -> (config overrides, Trainer subclass hook or None): one change each."""
    from core.train.loop import Trainer

    class NoRamp(Trainer):
        """The fine-tuning schedule restarts at full rate for every group (no ramp)."""

        def _start_phase(self, epochs):
            for group, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = lr
                group.pop("initial_lr", None)
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, self.steps * max(1, epochs))

    class FreshOptimizer(Trainer):
        """The optimizer forgets everything at the join (the head's moments too)."""

        def _start_phase(self, epochs):
            self.optimizer.state.clear()
            super()._start_phase(epochs)

    class NoStochasticDepth(Trainer):
        """The body's blocks run in eval mode while they train (no drop-connect; BatchNorm as kept)."""

        def _begin_epoch(self, epoch):
            super()._begin_epoch(epoch)
            head = self.model.layer_groups[-1]
            for g in self.model.layer_groups:
                if g is not head:
                    for m in g.modules:
                        self.model.get_submodule(m).eval()

    class HeadRests(Trainer):
        """Only the body trains after the join: the head's rate is 0 in the fine-tuning epochs."""

        def _start_phase(self, epochs):
            super()._start_phase(epochs)
            self.optimizer.param_groups[-1]["lr"] = 0.0
            self.base_lrs[-1] = 0.0
            self.scheduler.base_lrs[-1] = 0.0

    class HeadKeepsRate(Trainer):
        """The head goes on at the rate its warm-up ended with; only the body's schedule starts."""

        def _start_phase(self, epochs):
            end = self.optimizer.param_groups[-1]["lr"]
            super()._start_phase(epochs)
            lam = self.scheduler.lr_lambdas[-1]
            self.scheduler.lr_lambdas[-1] = lambda step: end / self.base_lrs[-1]
            del lam

    class NothingMoves(Trainer):
        """Every rate is 0 after the join: the first fine-tuning epoch's loss is the warm-up head's,
        measured through the live model instead of the cache (any gap is not learning)."""

        def _start_phase(self, epochs):
            super()._start_phase(epochs)
            for group in self.optimizer.param_groups:
                group["lr"] = 0.0
            self.base_lrs = [0.0] * len(self.base_lrs)
            self.scheduler.base_lrs = [0.0] * len(self.scheduler.base_lrs)

    class Ramp2(Trainer):
        ramp_epochs = 2.0

    class Ramp3(Trainer):
        ramp_epochs = 3.0

    class PreciseBN(Trainer):
        """After each fine-tuning epoch's steps, BatchNorm's running statistics are recomputed on the
        training images (torch.optim.swa_utils.update_bn) before validation."""

        def _train_epoch(self, epoch):
            sums = super()._train_epoch(epoch)
            if self.cache_mode is None:
                from core.data.encoded import normalise
                images = self.images["train"]
                batches = [normalise(images[i:i + 32].to(self.device), self.mean, self.std)
                           for i in range(0, len(images), 32)]
                mode = self.model.training
                torch.optim.swa_utils.update_bn(batches, self.model)
                self.model.train(mode)
                self._epoch_modes = None
            return sums

    return {
        "as-is": ({}, None),
        "ramp-2": ({}, Ramp2),
        "onecycle": ({"schedule": "onecycle"}, None),
        "ramp-3": ({}, Ramp3),
        "precise-bn": ({}, PreciseBN),
        "nothing-moves": ({}, NothingMoves),
        "head-rests": ({}, HeadRests),
        "head-keeps-rate": ({}, HeadKeepsRate),
        "no-ramp": ({}, NoRamp),
        "fresh-optimizer": ({}, FreshOptimizer),
        "no-aug": ({"augment": False}, None),
        "batch-32": ({"batch_size": 32}, None),
        "bn-stats-move": ({"keep_bn_stats": False}, None),
        "bn-stats-kept": ({"keep_bn_stats": True}, None),
        "no-drop-connect": ({}, NoStochasticDepth),
        "body-rates-x0.1": ("body*0.1", None),
        "body-rates-x0.3": ("body*0.3", None),
        "sgd": ({"optimizer": "sgd", "lr": 2e-2}, None),
    }


def join_figures(history, warmup_end: int) -> dict:
    epochs = history.epochs
    warm = [e.val_loss for e in epochs[:warmup_end]]
    first = epochs[warmup_end] if len(epochs) > warmup_end else None
    best = min(warm) if warm else math.nan
    return {"best": best, "last": warm[-1] if warm else math.nan,
            "first": first.val_loss if first else math.nan,
            "first_train_acc": first.train_acc if first else math.nan,
            "ft": " ".join(f"{e.val_loss:.2f}" for e in epochs[warmup_end:])}


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--set", default="scenes")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--variants", default=",".join(variants()))
    parser.add_argument("--ft-epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = resolve_device(args.device)

    from core import models
    from core.analysis.evaluation import evaluate_dataset
    from core.data import split
    from core.train.loop import Trainer
    from core.train.objectives import Classification
    from core.train.strategies import strategy_config

    print(machine_line(device))
    groups = models.group_names(models.DEFAULT_BACKBONE)
    ds = real_set(args.set, seed=args.seed)
    train, val = split(ds, 0.25, seed=args.seed)
    shared: dict = {}
    rows = []
    table = variants()
    for name in args.variants.split(","):
        overrides, cls = table[name]
        base = strategy_config(args.strategy, groups, device=str(device), seed=args.seed,
                               **({"image_size": args.size} if args.size else {}))
        if isinstance(overrides, str):  # "body*k": the body's multipliers times k
            k = float(overrides.split("*")[1])
            overrides = {"lr_multipliers": {g: m * (k if g != groups[-1] else 1.0)
                                            for g, m in base.lr_multipliers.items()}}
        config = strategy_config(args.strategy, groups, device=str(device), seed=args.seed,
                                 **({"image_size": args.size} if args.size else {}), **overrides)
        config.epochs = config.warmup_epochs + args.ft_epochs
        model = models.starting_model(models.DEFAULT_BACKBONE, ds.classes, seed=args.seed,
                                      image_size=config.image_size)
        trainer = (cls or Trainer)(model, Classification(), config, shared_cache=shared)
        started = time.perf_counter()
        history = trainer.fit({"train": train, "val": val})
        seconds = time.perf_counter() - started
        warmup_end = trainer.warmup_end
        f = join_figures(history, warmup_end)
        acc = evaluate_dataset(model, val, device).accuracy
        rows.append([name, f"{f['best']:.3f}", f"{f['last']:.3f}", f"{f['first']:.3f}",
                     f"{f['first'] / f['best']:.2f}", f"{f['first_train_acc']:.2f}", warmup_end,
                     history.best_epoch, f"{acc:.3f}", f"{seconds:.0f}", f["ft"]])
        print(" | ".join(map(str, rows[-1])), flush=True)
    print_table(["variant", "warm-up best val loss", "last warm-up", "first fine-tuning", "ratio",
                 "first FT train acc", "warm-up epochs", "kept epoch", "kept val acc", "seconds",
                 "fine-tuning val losses"], rows,
                title=f"{args.set}, {args.strategy}, {len(train)} train / {len(val)} val")


if __name__ == "__main__":
    main()
