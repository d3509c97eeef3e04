"""Speed and memory of core.train.fit: overhead, feature caches, throughput per backbone, peak RSS.

Run from the repository root: ``python bench/bench_training.py [--device cpu|cuda|auto] [--quick]``.

1. ``fit`` (and ``fit`` inside a run's worker process) against a bare PyTorch loop doing the same steps.
2. Frozen backbone: epochs after the first (features cached) against the first and against no cache.
3. Last stage fine-tuned with and without a cache of the frozen prefix's activations.
4. Images per second of every backbone at every input size, frozen and fully fine-tuned.
5. Peak resident memory and wall time of one epoch on 10,000 images, each in its own process.
6. A head-only run (the default demo run's settings) against a bare head loop on the same features.

Every ratio compares numbers measured in this one process, one after the other; the machine is
shared, so read them as +-10 % at best. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_common_args,
    fmt_ratio,
    machine_line,
    peak_rss_mib,
    print_table,
    resolve_device,
    ru_maxrss_mib,
    run_child,
    time_once,
)

from core.train.base import Callback

LITE0 = "efficientnet_lite0"
BACKBONES = (LITE0, "resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")
SIZES = (96, 128, 160, 224)
TARGET_OVERHEAD = 1.10
TARGET_CACHE_SPEEDUP = 20.0


# --- shared pieces ---------------------------------------------------------------------------


def _model(name: str, classes, size: int):
    """A fresh classifier; only Lite0 has offline weights, and speed does not depend on them."""
    from core.models.heads import starting_model

    return starting_model(name, list(classes), pretrained=name == LITE0, seed=0, image_size=size)


def _amp(device, config=None):
    """The autocast dtype fit would use on ``device`` (None on the CPU)."""
    from core.devices import autocast_dtype

    if config is not None and not config.mixed_precision:
        return None
    return autocast_dtype(device)


def _last_stage_freeze(group_names: list[str]) -> list[str]:
    """Every group below the last stage (``stageN`` / ``layerN``): what 'fine-tune the last stage' keeps frozen."""
    stages = [i for i, g in enumerate(group_names) if g.startswith(("stage", "layer"))]
    return group_names[: stages[-1]] if stages else group_names[:-1]


class Clock(Callback):
    """Stamps the end of the cache pass and of each epoch, to split fit's time into its parts."""

    def __init__(self):
        self.fit_start = None
        self.cache_end = None
        self.cache_batches = 0
        self.epoch_ends: list[float] = []
        self.setup = 0.0  # from the call of fit to on_fit_start: encoding the images, the cache probe

    def on_fit_start(self, info):
        self.fit_start = time.perf_counter()

    def on_batch_end(self, progress):
        if progress.phase == "cache":
            self.cache_batches += 1
            self.cache_end = time.perf_counter()

    def on_epoch_end(self, metrics):
        self.epoch_ends.append(time.perf_counter())

    def cache_seconds(self) -> float:
        return (self.cache_end - self.fit_start) if self.cache_end else 0.0

    def epoch_walls(self) -> list[float]:
        """Wall seconds of each epoch, evaluation included; the first counts from on_fit_start,
        so it includes the cache pass."""
        marks = [self.fit_start] + self.epoch_ends
        return [b - a for a, b in pairwise(marks)]


def _timed_fit(model, train, val, config):
    from core.train.fitting import fit

    clock = Clock()
    start = time.perf_counter()
    history = fit(model, train, val, config, [clock])
    total = time.perf_counter() - start
    clock.setup = clock.fit_start - start
    return history, clock, total


# --- 1. fit vs a bare loop -------------------------------------------------------------------


def bare_loop(model, images, labels, config, device) -> float:
    """What fit does per step, and nothing else: the last loss, to force the work to finish."""
    import torch
    import torch.nn.functional as F

    from core.data.encoded import normalise

    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        images = images.pin_memory()
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    amp = _amp(device, config)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    shuffler = torch.Generator().manual_seed(config.seed)
    bs = config.batch_size
    model.train()
    loss = torch.zeros(())
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=shuffler)
        for b in range(math.ceil(len(images) / bs)):
            idx = order[b * bs:(b + 1) * bs]
            x = normalise(images[idx].to(device, non_blocking=True), mean, std)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    return float(loss.detach())


def section_overhead(device, quick: bool) -> dict:
    import torch

    from core.data import demo_dataset
    from core.data.encoded import encode_images
    from core.runs import RunStore
    from core.runs.jobs import start_run
    from core.runs.processes import WorkerPool
    from core.runs.tasks import TaskQueue
    from core.train.base import TrainConfig
    from core.train.fitting import fit

    size, per_class, repeats = 128, (8 if quick else 16), (1 if quick else 3)
    ds = demo_dataset("source", per_class=per_class, seed=0, size=size)
    no_val = ds.subset([])  # the bare loop evaluates nothing, so fit evaluates nothing either
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-3, augment=False, schedule="constant",
                         device=device.type, seed=0)
    images = encode_images(ds, size)
    labels = torch.as_tensor(ds.labels)
    steps = config.epochs * math.ceil(len(ds) / config.batch_size)
    template = _model(LITE0, ds.classes, size)

    print(f"## 1. fit vs a bare PyTorch loop: {LITE0} pretrained, every layer trained, {len(ds)} images at "
          f"{size} px, {config.epochs} epochs x {steps // config.epochs} steps of {config.batch_size}, AdamW, "
          f"no augmentation, constant lr, no validation set; median of {repeats} after a warm-up\n")

    tmp = tempfile.TemporaryDirectory(prefix="bench-training-")
    pool = WorkerPool(1, threads=torch.get_num_threads())
    store, queue = RunStore(tmp.name), TaskQueue(1, pool=pool)

    def run_bare(in_thread: bool = False):
        model = copy.deepcopy(template)
        if not in_thread:
            return time_once(lambda: bare_loop(model, images, labels, config, device), device)
        # the same loop in a fresh thread, as a job gets: separates what a new thread costs
        # (torch's per-thread state, a new OpenMP team) from what our job code costs
        worker = threading.Thread(target=bare_loop, args=(model, images, labels, config, device))
        return time_once(lambda: (worker.start(), worker.join()), device)

    def run_fit():
        model = copy.deepcopy(template)
        out = {}
        seconds = time_once(lambda: out.setdefault("h", fit(model, ds, no_val, config)), device)
        return seconds, [e.seconds for e in out["h"].epochs]

    def run_job():
        # a real run: the app writes its folder, a warm worker process builds the same model and trains
        out = {}

        def go():
            job = start_run(store, ds, no_val, backbone=LITE0, pretrained=True, config=config, queue=queue)
            job.join()
            snap = out["snap"] = job.snapshot()
            if snap.status != "finished":
                raise RuntimeError(f"the benchmark job ended as {snap.status}: {snap.message}")

        seconds = time_once(go, device)
        return seconds, [e.seconds for e in out["snap"].epochs]

    try:
        run_bare(), run_bare(True), run_fit(), run_job()  # warm-up: allocator, oneDNN kernels, imports
        runs = {"bare": [], "bare_thread": [], "fit": [], "job": []}
        epochs = {"fit": [], "job": []}
        for _ in range(repeats):  # interleaved, so a burst of load hits every variant alike
            runs["bare"].append(run_bare())
            runs["bare_thread"].append(run_bare(True))
            for name, fn in (("fit", run_fit), ("job", run_job)):
                seconds, per_epoch = fn()
                runs[name].append(seconds)
                epochs[name].append(per_epoch)
    finally:
        pool.close()
        tmp.cleanup()
    b, bt, f, j = (statistics.median(runs[k]) for k in ("bare", "bare_thread", "fit", "job"))
    fe, je = (statistics.median(sum(e) for e in epochs[k]) for k in ("fit", "job"))
    target = f"target <= {TARGET_OVERHEAD:.2f}x"
    rows = [
        ("bare loop", f"{b:.3f}", f"{1000 * b / steps:.0f}", "1.00x", ""),
        ("fit (whole call)", f"{f:.3f}", f"{1000 * f / steps:.0f}", fmt_ratio(f / b), target),
        ("  of which epochs", f"{fe:.3f}", f"{1000 * fe / steps:.0f}", fmt_ratio(fe / b), "fit's own epoch timer"),
        ("a run in a worker process", f"{j:.3f}", f"{1000 * j / steps:.0f}", fmt_ratio(j / b), target),
        ("  of which epochs", f"{je:.3f}", f"{1000 * je / steps:.0f}", fmt_ratio(je / b), "fit's own epoch timer"),
        ("bare loop in a fresh thread", f"{bt:.3f}", f"{1000 * bt / steps:.0f}", fmt_ratio(bt / b),
         f"job / this: {fmt_ratio(j / bt)}"),
    ]
    print_table(("variant", "seconds", "ms/step", "vs bare", "note"), rows)
    print("all runs (s): " + " | ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in runs.items()))
    print("epoch seconds per run: " + " | ".join(
        f"{k} " + " ".join("/".join(f"{x:.2f}" for x in e) for e in v) for k, v in epochs.items()) + "\n")
    return {"fit/bare": f / b, "job/bare": j / b, "job/thread": j / bt}


# --- 2. frozen backbone: the feature cache ----------------------------------------------------


def _training_data(quick: bool):
    from core.data import demo_dataset, split

    ds = demo_dataset("source", per_class=8 if quick else 20, seed=0, size=128)
    train, val = split(ds, 0.2, seed=0)
    return ds, train, val


def section_frozen(device, quick: bool) -> dict:
    from core.train.base import TrainConfig

    size = 128
    ds, train, val = _training_data(quick)
    template = _model(LITE0, ds.classes, size)
    names = [g.name for g in template.layer_groups]
    base = dict(batch_size=16, lr=3e-3, freeze=names[:-1], augment=False, device=device.type, seed=0,
                image_size=size)
    cached_cfg = TrainConfig(epochs=3 if quick else 6, cache_features=True, **base)
    plain_cfg = TrainConfig(epochs=2 if quick else 3, cache_features=False, **base)
    print(f"## 2. frozen backbone (only the head trains): {LITE0}, {len(ds)} images ({len(train)} train / "
          f"{len(val)} val) at {size} px, batch 16, no augmentation (so one cached view)\n")

    _timed_fit(copy.deepcopy(template), train, val, TrainConfig(**{**base, "epochs": 1}))  # warm-up
    hist_c, clock_c, total_c = _timed_fit(copy.deepcopy(template), train, val, cached_cfg)
    hist_p, clock_p, total_p = _timed_fit(copy.deepcopy(template), train, val, plain_cfg)
    if not hist_c.used_feature_cache:
        print("!! fit did not use the feature cache for a frozen backbone; the comparison below is void\n")

    walls_c, walls_p = clock_c.epoch_walls(), clock_p.epoch_walls()
    cache_s = clock_c.cache_seconds()
    later_c = statistics.median(walls_c[1:])
    # the uncached trainer has nothing to build in epoch 1, but the first epoch still pays warm-up
    per_epoch_p = statistics.median(walls_p[1:]) if len(walls_p) > 1 else walls_p[0]
    rows = [
        ("cached: setup before on_fit_start (encode images, probe)", f"{clock_c.setup:.3f}", ""),
        (f"cached: feature cache ({clock_c.cache_batches} batches, phase 'cache')", f"{cache_s:.3f}", ""),
        ("cached: epoch 1, cache included", f"{walls_c[0]:.3f}", ""),
        ("cached: epoch 1, training only (EpochMetrics.seconds)", f"{hist_c.epochs[0].seconds:.4f}", ""),
        (f"cached: epochs 2-{len(walls_c)}, median", f"{later_c:.4f}",
         " ".join(f"{w * 1000:.1f}ms" for w in walls_c[1:])),
        (f"no cache: epochs {'2-' + str(len(walls_p)) if len(walls_p) > 1 else '1'}, median", f"{per_epoch_p:.3f}",
         " ".join(f"{w:.3f}s" for w in walls_p)),
    ]
    print_table(("measure", "seconds", "each"), rows)
    speedup = per_epoch_p / later_c
    first = walls_c[0] / later_c
    print(f"per epoch, no cache / cached later epoch: {fmt_ratio(speedup, 1)} (target >= {TARGET_CACHE_SPEEDUP:.0f}x)")
    print(f"cached, epoch 1 (with cache) / later epoch: {fmt_ratio(first, 1)}\n")
    return {"frozen speedup": speedup, "first/later": first, "cache_s": cache_s, "later_s": later_c,
            "plain_s": per_epoch_p}


# --- 3. last stage: the prefix cache ----------------------------------------------------------


def section_last_stage(device, quick: bool) -> dict:
    from core.train.base import TrainConfig

    size = 128
    ds, train, val = _training_data(quick)
    template = _model(LITE0, ds.classes, size)
    names = [g.name for g in template.layer_groups]
    freeze = _last_stage_freeze(names)
    trained = [n for n in names if n not in freeze]
    epochs = 2 if quick else 3
    base = dict(epochs=epochs, batch_size=16, lr=1e-3, freeze=freeze, augment=False, device=device.type,
                seed=0, image_size=size)
    print(f"## 3. last stage fine-tuned ({', '.join(trained)} train; {freeze[0]}..{freeze[-1]} frozen): {LITE0}, "
          f"{len(train)} train / {len(val)} val at {size} px, {epochs} epochs\n")

    off = {"cache_features": False}
    hist_n, clock_n, _ = _timed_fit(copy.deepcopy(template), train, val, TrainConfig(**base, **off))
    walls_n = clock_n.epoch_walls()
    per_n = statistics.median(walls_n[1:])
    rows = [("last stage trained, no cache", f"{clock_n.setup:.3f}", "-", f"{walls_n[0]:.3f}", f"{per_n:.3f}", "1.00x")]

    on = {"cache_features": True}  # with frozen leading groups, fit caches their output
    hist_c, clock_c, _ = _timed_fit(copy.deepcopy(template), train, val, TrainConfig(**base, **on))
    how = "cache_features=True"
    result = {"prefix speedup": None}
    if hist_c.cache == "prefix":
        walls_c = clock_c.epoch_walls()
        per_c = statistics.median(walls_c[1:])
        result["prefix speedup"] = per_n / per_c
        rows.append((f"with prefix cache ({how})", f"{clock_c.setup:.3f}", f"{clock_c.cache_seconds():.3f}",
                     f"{walls_c[0]:.3f}", f"{per_c:.4f}", fmt_ratio(per_n / per_c, 1)))
        note = "ratio = no-cache epoch / cached epoch (epochs after the first)"
    else:
        rows.append((f"with prefix cache ({how})", "", "", "", "", "n/a (prefix cache not implemented)"))
        note = f"fit reported cache={hist_c.cache!r} for this configuration, so there is nothing to compare"
    print_table(("variant", "setup s", "cache s", "epoch 1 s", "later epoch s", "speed-up"), rows)
    print(note + "\n")
    return result


# --- 4. throughput per backbone and size ------------------------------------------------------


def section_throughput(device, quick: bool) -> None:
    import torch
    import torch.nn.functional as F

    names = (LITE0, "resnet18") if quick else BACKBONES
    sizes = (128,) if quick else SIZES
    n = 10 if device.type == "cuda" else 2
    amp = _amp(device)
    print(f"## 4. images/s, frozen = forward only (inference_mode, batch 32); fine-tuned = forward + backward "
          f"+ AdamW step on every parameter (train mode, batch 16). Each cell: {n} timed batches after 1 "
          f"warm-up batch{', bf16/fp16 autocast and channels_last as fit uses' if amp else ''}\n")
    rows = []
    for name in names:
        model = _model(name, ["a", "b", "c", "d"], 224).to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        for size in sizes:
            fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
            x32 = torch.randn(32, 3, size, size, device=device).contiguous(memory_format=fmt)
            x16, y16 = x32[:16].contiguous(memory_format=fmt), torch.randint(0, 4, (16,), device=device)

            def forward(model=model, x32=x32):
                with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    model(x32)

            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(model=model, x16=x16, y16=y16, optimizer=optimizer):
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = F.cross_entropy(model(x16).float(), y16)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            model.eval()
            forward()
            frozen = 32 * n / time_once(lambda: [forward() for _ in range(n)], device)
            model.train()
            step()
            tuned = 16 * n / time_once(lambda: [step() for _ in range(n)], device)
            del optimizer
            rows.append((name, size, f"{frozen:.1f}", f"{tuned:.1f}", fmt_ratio(frozen / tuned, 1)))
            print(f"   {name} @ {size}: {frozen:.1f} / {tuned:.1f} img/s", flush=True)
        del model
    print()
    print_table(("backbone", "size", "frozen img/s", "fine-tuned img/s", "frozen/tuned"), rows)


# --- 5. peak memory of one epoch on many images ----------------------------------------------


def memory_child(mode: str, n_images: int, size: int, device_name: str) -> None:
    """In a fresh process: generate the images, train one epoch, print one JSON line."""
    from core.data import demo_dataset, split
    from core.train.base import TrainConfig
    from core.train.fitting import fit

    after_imports = peak_rss_mib()
    start = time.perf_counter()
    ds = demo_dataset("source", per_class=n_images // 4, seed=0, size=size)
    train, val = split(ds, 0.1, seed=0)
    data_s = time.perf_counter() - start
    model = _model(LITE0, ds.classes, size)
    names = [g.name for g in model.layer_groups]
    freeze = names[:-1] if mode == "frozen" else _last_stage_freeze(names)
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-3, freeze=freeze, augment=False, device=device_name,
                         seed=0, image_size=size)
    before_fit = peak_rss_mib()
    start = time.perf_counter()
    history = fit(model, train, val, config)
    fit_s = time.perf_counter() - start
    print(json.dumps({
        "after_imports_mib": after_imports, "before_fit_mib": before_fit, "peak_mib": peak_rss_mib(),
        "ru_maxrss_mib": ru_maxrss_mib(),
        "data_s": data_s, "fit_s": fit_s, "n_train": len(train), "n_val": len(val), "cache": history.cache,
        "val_acc": history.epochs[-1].val_acc if history.epochs else None,
    }))


def section_memory(device, quick: bool) -> None:
    n, size = (1000 if quick else 10_000), 96
    print(f"## 5. peak memory of one epoch at {size} px on {n:,} generated images (demo_dataset, 10% held out "
          f"for validation), {LITE0}, batch 16, no augmentation; each row is its own process\n")
    rows, maxrss = [], []
    for mode, label in (("frozen", "feature extraction (head only)"), ("last_stage", "last stage fine-tuned")):
        r = run_child([str(Path(__file__).resolve()), "--memory-child", mode, str(n), str(size), device.type],
                      timeout=1800)
        if "error" in r:
            rows.append((label, "failed: " + r["error"], "", "", "", "", "", "", ""))
            continue
        rows.append((label, r["cache"] or "none", f"{r['after_imports_mib']:.0f}", f"{r['before_fit_mib']:.0f}",
                     f"{r['peak_mib']:.0f}", f"{r['peak_mib'] - r['before_fit_mib']:.0f}", f"{r['data_s']:.1f}",
                     f"{r['fit_s']:.1f}", f"{r['wall_s']:.1f}"))
        maxrss.append(f"{r['ru_maxrss_mib']:.0f}")
        print(f"   {label}: done in {r['wall_s']:.0f} s", flush=True)
    print()
    print_table(("run", "cache", "after imports MiB", "before fit MiB", "peak MiB", "fit added MiB",
                 "make data s", "fit s", "process s"), rows)
    print("MiB columns: the child's VmHWM (its own peak resident memory) at that point. Its ru_maxrss read "
          f"{' and '.join(maxrss) or 'n/a'} MiB, but on Linux that is at least the parent's size when the child "
          f"was spawned (this process: {peak_rss_mib():.0f} MiB now), so it is not used.")
    uint8 = n * 3 * size * size
    print(f"for context: the uint8 image tensor fit builds is N x 3 x S x S = {n:,} x 3 x {size} x {size} = "
          f"{uint8 / 2**20:.0f} MiB, and the decoded PIL images the dataset holds are as large again.\n")


# --- 6. a head-only run: what each epoch costs beyond the head's own arithmetic ----------------


def bare_head_loop(features, labels, val_features, val_labels, classes: int, epochs: int, lr: float,
                   batch_size: int) -> float:
    """A linear head trained on features computed once, evaluated after every epoch: the work a
    feature-extraction run's epochs have to do, and nothing else."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    head = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    shuffler = torch.Generator().manual_seed(0)
    loss = torch.zeros(())
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=shuffler)
        for b in range(math.ceil(len(features) / batch_size)):
            idx = order[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(head(features[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.inference_mode():
            F.cross_entropy(head(val_features), val_labels).item()
    return float(loss.detach())


def section_head_run(device, quick: bool) -> dict:
    """The default demo run trains only the head, on cached features, for up to 60 epochs: a few
    milliseconds of arithmetic per epoch, so whatever else an epoch does (modes, copies of the best
    weights, the run's record) is most of what a click on Train waits for."""
    from dataclasses import replace

    import torch

    from core import data, models
    from core.runs import RunStore
    from core.runs.jobs import create_run
    from core.runs.worker import train_run_folder
    from core.train.base import TrainConfig
    from core.train.fitting import fit
    from core.train.strategies import strategy_config

    epochs, repeats = (10, 2) if quick else (40, 5)
    train, val = data.split(data.demo_dataset("source", per_class=20, seed=0), 0.25, seed=0)
    preset = strategy_config("feature_extraction", models.group_names(LITE0))
    config = replace(TrainConfig(), freeze=list(preset.freeze), lr_multipliers=dict(preset.lr_multipliers),
                     epochs=epochs, early_stopping=0, device=device.type)
    model = models.starting_model(LITE0, train.classes, pretrained=True, seed=0, image_size=config.image_size)
    size = config.image_size
    print(f"## 6. a head-only run: the default demo run's settings ({LITE0}, {len(train)} train / {len(val)} "
          f"val images at {size} px, {config.cached_views} cached views), {epochs} epochs without early "
          f"stopping; median of {repeats} after a warm-up that fills the feature cache\n")

    def features(ds):
        from core.data.encoded import encode_images, normalise

        x = normalise(encode_images(ds, size).to(device), torch.tensor(model.mean, device=device).view(1, 3, 1, 1),
                      torch.tensor(model.std, device=device).view(1, 3, 1, 1))
        with torch.inference_mode():
            return model.to(device).eval().forward_features(x).float().clone()

    f_train, f_val = features(train), features(val)
    y_train, y_val = torch.as_tensor(train.labels, device=device), torch.as_tensor(val.labels, device=device)
    tmp = tempfile.TemporaryDirectory(prefix="bench-training-")
    store = RunStore(tmp.name)

    def run_bare():
        return time_once(lambda: bare_head_loop(f_train, y_train, f_val, y_val, len(train.classes), epochs,
                                                config.lr, config.batch_size), device)

    shared: dict = {}  # the frozen body's features, kept across fits as a worker keeps them

    def run_fit():
        fresh = models.starting_model(LITE0, train.classes, pretrained=True, seed=0, image_size=size)
        return time_once(lambda: fit(fresh, train, val, config, shared_cache=shared), device)

    def run_folder():
        record = create_run(store, train, val, backbone=LITE0, pretrained=True, config=config)
        return time_once(lambda: train_run_folder(store.folder(record.id)), device)

    try:
        run_bare(), run_fit(), run_folder()  # warm-up: the features of every view are cached now
        runs = {"bare": [], "fit": [], "run": []}
        for _ in range(repeats):
            for name, fn in (("bare", run_bare), ("fit", run_fit), ("run", run_folder)):
                runs[name].append(fn())
    finally:
        tmp.cleanup()
    b, f, r = (statistics.median(runs[k]) for k in ("bare", "fit", "run"))
    rows = [("bare head loop", f"{b:.3f}", f"{1000 * b / epochs:.1f}", "1.00x"),
            ("fit on a fresh model (cache hits, no record)", f"{f:.3f}", f"{1000 * f / epochs:.1f}", fmt_ratio(f / b)),
            ("a run from its folder (record, events, best weights)", f"{r:.3f}", f"{1000 * r / epochs:.1f}",
             fmt_ratio(r / b))]
    print_table(("variant", "seconds", "ms/epoch", "vs bare"), rows)
    print("all runs (s): " + " | ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in runs.items()) + "\n")
    return {"fit/bare": f / b, "run/bare": r / b, "run ms/epoch": 1000 * r / epochs}


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--sections", default="1,2,3,4,5,6", help="comma-separated subset, e.g. 2,3")
    parser.add_argument("--memory-child", nargs=4, metavar=("MODE", "N", "SIZE", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFER_LAB_DATA_DIR", tempfile.mkdtemp(prefix="bench-training-data-"))
    if args.memory_child:
        mode, n, size, device_name = args.memory_child
        memory_child(mode, int(n), int(size), device_name)
        return

    device = resolve_device(args.device)
    sections = {int(s) for s in args.sections.split(",") if s.strip()}
    started = time.perf_counter()
    print(f"# bench_training{' --quick' if args.quick else ''} on {device.type}")
    print(machine_line(device) + "\n")
    summary = []
    if 1 in sections:
        r = section_overhead(device, args.quick)
        summary.append(f"fit/bare {fmt_ratio(r['fit/bare'])}, job/bare {fmt_ratio(r['job/bare'])} "
                       f"(target <= {TARGET_OVERHEAD:.2f}x); job / bare loop in a fresh thread "
                       f"{fmt_ratio(r['job/thread'])}")
    if 2 in sections:
        r = section_frozen(device, args.quick)
        summary.append(f"frozen backbone, no cache / cached epoch {fmt_ratio(r['frozen speedup'], 1)} "
                       f"(target >= {TARGET_CACHE_SPEEDUP:.0f}x)")
    if 3 in sections:
        r = section_last_stage(device, args.quick)
        summary.append("last stage, no cache / prefix cache "
                       + (fmt_ratio(r["prefix speedup"], 1) if r["prefix speedup"] else "n/a (prefix cache not implemented)"))
    if 4 in sections:
        section_throughput(device, args.quick)
    if 5 in sections:
        section_memory(device, args.quick)
    if 6 in sections:
        r = section_head_run(device, args.quick)
        summary.append(f"head-only run: fit/bare head loop {fmt_ratio(r['fit/bare'])}, run/bare "
                       f"{fmt_ratio(r['run/bare'])} ({r['run ms/epoch']:.1f} ms per epoch)")
    if summary:
        print("## summary\n" + "\n".join("- " + s for s in summary))
    print(f"\nbench_training took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
