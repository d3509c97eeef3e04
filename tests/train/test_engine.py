"""The one training loop: its model contract, its callbacks and the engine bugs it fixed.

A tiny convolutional classifier (two BatchNorm blocks, dropout before the head, as
EfficientNet-Lite0 has) keeps every test well under a second of training.
"""

import copy
import math
import threading

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import ConfigError
from core.hooks import capture, preserved
from core.train import Callback, Classification, Trainer
from core.train.base import TrainConfig
from core.train.fitting import fit
from tests.toys import Toy, tiny

TRAIN, VAL = Toy(24, 0), Toy(8, 1)


def config(**changes) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=2, batch_size=8, lr=0.01, image_size=32, augment=False), **changes})


# --- the model contract ---------------------------------------------------------------------------


def test_forward_features_and_forward_head_compose_to_the_model_output():
    model = tiny()
    x = torch.randn(4, 3, 16, 16)
    features = model.forward_features(x)
    assert features.shape == (4, 8)
    assert torch.allclose(model.forward_head(features), model(x), atol=1e-6)
    assert model.get_classifier() is model.fc


def test_reset_classifier_gives_a_new_head_for_new_classes():
    model = tiny()
    model.reset_classifier(["a", "b", "c"])
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    assert model.classes == ["a", "b", "c"]
    assert model.get_classifier().out_features == 3


def test_capture_stops_early_and_preserved_puts_modes_flags_and_buffers_back():
    model = tiny()
    out = capture(model, "stem", torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 8, 16, 16)
    model.stem[0].weight.requires_grad_(False)
    before = model.stem[1].running_mean.clone()
    with pytest.raises(RuntimeError), preserved(model, buffers=True):
        model.train()
        model.stem[0].weight.requires_grad_(True)
        model(torch.randn(4, 3, 16, 16) + 3)
        raise RuntimeError("boom")
    assert not model.training and not model.block[1][0].training
    assert not model.stem[0].weight.requires_grad
    assert torch.equal(model.stem[1].running_mean, before)


# --- the bugs found in the audit ------------------------------------------------------------------


class Gate(nn.Module):
    """Holds the forward pass of one thread until released; every other thread passes."""

    def __init__(self):
        super().__init__()
        self.thread, self.entered, self.release = None, threading.Event(), threading.Event()

    def forward(self, x):
        if threading.get_ident() == self.thread:
            self.entered.set()
            self.release.wait(10)
        return x


def test_a_capture_in_one_thread_never_stops_another_threads_forward_pass_on_the_same_model():
    # the session's pages share a model, and a rerun can start while the last one is still capturing
    gate = Gate()
    model = nn.Sequential(gate, nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    got = {}

    def capturing():
        gate.thread = threading.get_ident()
        got["captured"] = capture(model, "1", x)

    t = threading.Thread(target=capturing)
    t.start()
    assert gate.entered.wait(10)  # the capture's hook is in place, its forward pass is held
    with torch.no_grad():
        out = model(x)  # this thread's pass runs to the end
    gate.release.set()
    t.join(10)
    assert out.shape == (2, 3) and torch.allclose(got["captured"], out)


def test_train_bn_updates_batchnorm_nested_inside_a_frozen_block():
    model = tiny()
    nested = model.block[1][0]  # a BatchNorm inside a Sequential inside the frozen group
    before = nested.running_mean.clone()
    fit(model, TRAIN, VAL, config(freeze=["stem", "block"], train_bn=True, cache_features=False, epochs=1))
    assert not torch.equal(nested.running_mean, before)
    frozen = tiny()
    before = frozen.block[1][0].running_mean.clone()
    fit(frozen, TRAIN, VAL, config(freeze=["stem", "block"], train_bn=False, epochs=1))
    assert torch.equal(frozen.block[1][0].running_mean, before)


class Modes(Callback):
    """At each training batch, which of the watched modules are in train mode."""

    def __init__(self, **watched):
        self.watched, self.seen = watched, []

    def on_batch_start(self, step):
        self.seen.append({name: m.training for name, m in self.watched.items()})


def test_every_epoch_trains_with_the_modes_its_plan_sets_after_each_evaluation():
    """Evaluation puts the model in eval mode between epochs, and an epoch whose groups are the
    same as the last one's puts back that epoch's modes instead of setting them all again: frozen
    modules (and their BatchNorm layers) stay in eval mode, a group trains from the epoch it thaws."""
    model = tiny()
    watch = Modes(stem=model.stem, stem_bn=model.stem[1], block_bn=model.block[1][0], drop=model.drop, fc=model.fc)
    fit(model, TRAIN, VAL, config(freeze=["stem"], epochs=3, cache_features=False), callbacks=[watch])
    assert len(watch.seen) == 9  # 3 batches in each of 3 epochs
    assert all(seen == dict(stem=False, stem_bn=False, block_bn=True, drop=True, fc=True) for seen in watch.seen)

    model = tiny()
    watch = Modes(stem_bn=model.stem[1], block_bn=model.block[1][0])
    fit(model, TRAIN, VAL, config(freeze=["stem", "block"], train_bn=True, epochs=3, cache_features=False),
        callbacks=[watch])
    assert all(seen == dict(stem_bn=True, block_bn=True) for seen in watch.seen)

    model = tiny()
    watch = Modes(stem_bn=model.stem[1], block_bn=model.block[1][0])
    history = fit(model, TRAIN, VAL, config(unfreeze_every=1, epochs=4, cache_features=False, early_stopping=0),
                  callbacks=[watch])
    by_epoch = [watch.seen[3 * e] for e in range(4)]
    assert len(history.epochs) == 4 and by_epoch == [
        dict(stem_bn=False, block_bn=False), dict(stem_bn=False, block_bn=True),
        dict(stem_bn=True, block_bn=True), dict(stem_bn=True, block_bn=True)]


def test_unknown_group_in_lr_multipliers_is_refused():
    with pytest.raises(ConfigError, match="blocks"):
        fit(tiny(), TRAIN, VAL, config(lr_multipliers={"blocks": 0.1}))


def test_head_cache_trains_the_same_model_as_the_plain_path_dropout_included():
    cached_model, plain_model = tiny(), tiny()
    cfg = config(freeze=["stem", "block"], epochs=3, lr=0.05)
    cached = fit(cached_model, TRAIN, VAL, cfg)
    plain = fit(plain_model, TRAIN, VAL, TrainConfig(**{**cfg.to_dict(), "cache_features": False}))
    assert cached.cache == "head" and plain.cache == ""
    # dropout before the head draws the same masks on both paths: the same model comes out
    assert torch.allclose(cached_model.fc.weight, plain_model.fc.weight, atol=1e-5)
    assert [e.train_loss for e in cached.epochs] == pytest.approx([e.train_loss for e in plain.epochs], abs=1e-5)


class Poison(Callback):
    """Makes a BatchNorm statistic NaN during the second epoch (the weights stay finite)."""

    def on_batch_end(self, progress):
        if progress.epoch == 2 and progress.phase == "train":
            self.trainer.model.block[1][0].running_var.fill_(float("nan"))


def test_non_finite_batchnorm_statistics_count_as_divergence_and_are_restored():
    model = tiny()
    history = fit(model, TRAIN, VAL, config(cache_features=False, epochs=3), callbacks=[Poison()])
    assert history.stopped == "diverged"
    assert "BatchNorm" in history.message
    assert len(history.epochs) == 1
    assert history.best_epoch == 1  # the weights put back are epoch 1's: the run says it keeps them
    assert all(torch.isfinite(b).all() for b in model.buffers())
    assert torch.isfinite(model(torch.randn(2, 3, 16, 16))).all()


def test_a_loss_that_explodes_without_nan_is_divergence():
    model = tiny()
    history = fit(model, TRAIN, VAL, config(optimizer="sgd", lr=10.0, momentum=0.9, epochs=4, cache_features=False))
    assert history.stopped == "diverged", [(e.train_loss, e.val_loss) for e in history.epochs]
    assert "learning rate" in history.message


class StopWhileCaching(Callback):
    def __init__(self, stop):
        self.stop, self.cache_batches = stop, 0

    def on_batch_end(self, progress):
        if progress.phase == "cache":
            self.cache_batches += 1
            self.stop.set()


def test_stop_is_honoured_while_features_are_cached():
    stop = threading.Event()
    watcher = StopWhileCaching(stop)
    history = fit(tiny(), Toy(64), VAL, config(freeze=["stem", "block"], batch_size=4, augment=True, cached_views=3),
                  callbacks=[watcher], stop=stop)
    assert history.stopped == "cancelled"
    assert watcher.cache_batches == 1
    assert history.epochs == []


class Phases(Callback):
    """The phase of every progress tick, and the cached views the trainer has at each epoch start."""

    def __init__(self):
        self.phases, self.views_at_epoch = [], []

    def on_batch_end(self, progress):
        self.phases.append(progress.phase)

    def on_epoch_start(self, epoch):
        self.views_at_epoch.append(self.trainer.filled_views["train"])


def test_the_first_point_comes_after_one_cached_view_and_the_others_join_one_per_epoch():
    watcher = Phases()
    history = fit(tiny(), Toy(32), VAL, config(freeze=["stem", "block"], batch_size=8, augment=True, cached_views=3,
                                               epochs=4, early_stopping=0), callbacks=[watcher])
    assert history.cache == "head" and len(history.epochs) == 4
    # one pass over the 32 training images (4 batches) before the first training batch, not 3 views + plain banks
    assert watcher.phases.index("train") == 4 and set(watcher.phases[:4]) == {"cache"}
    assert "cache" not in watcher.phases[4:]
    assert watcher.views_at_epoch == [1, 2, 3, 3]
    # the later views are real augmented views, and evaluating on the plain images still works
    again = fit(tiny(), Toy(32), VAL, config(freeze=["stem", "block"], batch_size=8, augment=True, cached_views=3,
                                             epochs=4, early_stopping=0))
    assert [e.train_loss for e in again.epochs] == [e.train_loss for e in history.epochs]
    assert all(math.isfinite(e.val_loss) for e in history.epochs)


def test_a_later_fit_reuses_the_frozen_features_of_an_earlier_one_and_trains_the_same_head():
    """A worker keeps cached features between runs (a class trains the same defaults on the same
    images): the second fit computes no backbone pass, and its history is the first one's."""
    shared = {}
    cfg = config(freeze=["stem", "block"], augment=True, cached_views=2, epochs=3, early_stopping=0)
    first = fit(tiny(), Toy(16), VAL, cfg, shared_cache=shared)
    assert first.cache == "head" and len(shared) == 3  # the training images themselves and one crop of each, plain val
    model, passes = tiny(), []
    model.get_submodule("stem").register_forward_hook(lambda module, inputs, out: passes.append(len(inputs[0])))
    second = fit(model, Toy(16), VAL, cfg, shared_cache=shared)
    assert passes == [1] and len(shared) == 3  # one image: the probe that sizes the cache
    assert [(e.train_loss, e.val_loss) for e in second.epochs] == [(e.train_loss, e.val_loss) for e in first.epochs]
    # other augmentation seeds (or images, or frozen weights) are other features: computed afresh
    fit(model, Toy(16), VAL, TrainConfig(**{**cfg.to_dict(), "seed": 1}), shared_cache=shared)
    # one new view (the crops); the training images themselves and the validation images were the same
    assert sum(passes) == 1 + 16 + 1 and len(shared) == 4


def test_an_early_stop_is_recorded_in_the_history_with_the_epoch_it_kept():
    history = fit(tiny(), TRAIN, VAL, config(freeze=["stem", "block"], epochs=60, lr=0.05, early_stopping=1))
    assert history.stopped == "early" and len(history.epochs) < 60
    assert history.best_epoch is not None and history.best_epoch < len(history.epochs)


class WarmupWatcher(Callback):
    """Per epoch: the cache the trainer used, whether the stem trained, and the head's weights at
    the epoch's start and end."""

    def __init__(self):
        self.cache, self.stem_trains, self.head_at_start, self.head_at_end = [], [], [], []
        self.first_lr = []  # each group's learning rate at each epoch's first step

    def on_batch_start(self, step):
        if len(self.first_lr) < len(self.cache):
            self.first_lr.append({g["name"]: g["lr"] for g in self.trainer.optimizer.param_groups})

    def on_epoch_start(self, epoch):
        model = self.trainer.model
        self.cache.append(self.trainer.cache_mode)
        self.stem_trains.append(all(p.requires_grad for p in model.stem.parameters()))
        self.head_at_start.append(model.fc.weight.detach().clone())

    def on_epoch_end(self, metrics):
        self.head_at_end.append(self.trainer.model.fc.weight.detach().clone())


def test_the_head_warms_up_on_cached_features_until_it_converges_then_everything_fine_tunes():
    """LP-FT: the warm-up is linear probing on the cache, ended by early stopping; fine-tuning then
    starts from the warm-up's best head, with the whole network, and the skipped warm-up epochs go."""
    watcher = WarmupWatcher()
    model = tiny()
    history = fit(model, TRAIN, VAL, config(epochs=23, warmup_epochs=20, early_stopping=2, lr=1.0),
                  callbacks=[watcher])
    warm = [c == "head" for c in watcher.cache].index(False)  # the first fine-tuning epoch (0-based)
    assert history.cache == "warmup"
    assert 0 < warm < 20, "early stopping ends the warm-up once the head converged"
    assert watcher.cache[:warm] == ["head"] * warm and not any(watcher.stem_trains[:warm])
    assert watcher.cache[warm:] == [None] * (len(watcher.cache) - warm) and all(watcher.stem_trains[warm:])
    # the skipped warm-up epochs are gone from the plan: at most 3 fine-tuning epochs follow
    assert len(history.plan) == warm + 3 and len(history.epochs) <= warm + 3
    assert all(e["stem"] == 0 for e in history.plan[:warm]) and history.plan[warm]["stem"] > 0
    # fine-tuning starts from the best warm-up head, not the last one
    losses = [e.val_loss for e in history.epochs[:warm]]
    best = int(np.argmin(losses))
    assert best < warm - 1, "the warm-up ran past its best epoch before it ended"
    assert losses[best] < losses[-1]
    assert torch.equal(watcher.head_at_start[warm], watcher.head_at_end[best])
    # fine-tuning has a schedule of its own: the head starts it at its full rate, the body ramps up
    # over its first epoch (tests/train/test_join.py)
    assert watcher.first_lr[warm]["stem"] < 0.5 < watcher.first_lr[warm]["head"] <= 1.0


def test_a_warm_up_on_the_cache_trains_the_same_head_as_one_without_it():
    cached = fit(tiny(), TRAIN, VAL, config(epochs=4, warmup_epochs=3, early_stopping=0))
    plain = fit(tiny(), TRAIN, VAL, config(epochs=4, warmup_epochs=3, early_stopping=0, cache_features=False))
    assert cached.cache == "warmup" and plain.cache == ""
    assert [e.train_loss for e in cached.epochs[:3]] == pytest.approx([e.train_loss for e in plain.epochs[:3]],
                                                                     rel=1e-4)
    assert len(cached.epochs) == len(plain.epochs) == 4


def test_keep_bn_stats_trains_batchnorm_scales_but_leaves_its_pretrained_statistics():
    for keep in (False, True):
        model = tiny()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        fit(model, TRAIN, VAL, config(freeze=[], keep_bn_stats=keep, cache_features=False))
        after = model.state_dict()
        stats = [k for k in before if "running_mean" in k or "running_var" in k]
        scales = [k.replace("running_mean", "weight") for k in stats if "running_mean" in k]
        assert len(stats) == 4 and len(scales) == 2
        assert all(torch.equal(before[k], after[k]) for k in stats) == keep
        assert not any(torch.equal(before[k], after[k]) for k in scales)  # the affine part trains either way


class RunsOutOfMemoryOnce(Callback):
    def __init__(self):
        self.starts = []

    def on_fit_start(self, info):
        self.starts.append(self.trainer.config.batch_size)

    def on_batch_end(self, progress):
        if len(self.starts) == 1 and progress.phase == "train":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")


def test_running_out_of_gpu_memory_retries_once_at_half_the_batch_from_the_start():
    model, twin = tiny(), tiny()
    probe = RunsOutOfMemoryOnce()
    history = fit(model, TRAIN, VAL, config(cache_features=False), callbacks=[probe])
    assert probe.starts == [8, 4]
    assert "batch size 4" in history.message and history.stopped is None
    reference = fit(twin, TRAIN, VAL, config(cache_features=False, batch_size=4))
    assert [e.train_loss for e in history.epochs] == pytest.approx([e.train_loss for e in reference.epochs])


def test_float16_is_chosen_on_gpus_without_native_bfloat16(monkeypatch):
    from core import devices

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulated on a T4
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    assert devices.autocast_dtype(torch.device("cuda")) is torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))
    assert devices.autocast_dtype(torch.device("cuda")) is torch.bfloat16


# --- one loop for every kind of training -----------------------------------------------------------


def test_every_trainer_goes_through_one_backward_call():
    import pathlib
    import re

    core = pathlib.Path(__file__).resolve().parents[2] / "core"
    # the Microscope's feature visualization optimises an image, never a model's weights
    calls = [f"{path.relative_to(core)}:{i}" for path in core.rglob("*.py") if path.name != "microscope.py"
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\.backward\(", line) and not line.strip().startswith("#")]
    assert calls == ["train/loop.py:" + calls[0].split(":")[1]] and len(calls) == 1, calls


def test_the_lr_sweep_is_a_callback_that_ends_the_fit():
    from core.methods.lr_finder import find_lr

    model = tiny()
    before = copy.deepcopy(model.state_dict())
    result = find_lr(model, TRAIN, config(freeze=["stem", "block"]), steps=12)
    assert 5 <= len(result.lrs) <= 12
    assert result.lrs == sorted(result.lrs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # it ran on a copy


def test_a_custom_objective_plugs_into_the_same_loop():
    class Doubled(Classification):
        def loss(self, trainer, batch):
            loss, stats = super().loss(trainer, batch)
            return 2 * loss, stats

    # with SGD and no weight decay, twice the loss at half the rate is the very same training
    sgd = dict(optimizer="sgd", momentum=0.9, weight_decay=0.0, cache_features=False)
    a, b = tiny(), tiny()
    plain = Trainer(a, Classification(), config(lr=0.02, **sgd)).fit({"train": TRAIN, "val": VAL})
    doubled = Trainer(b, Doubled(), config(lr=0.01, **sgd)).fit({"train": TRAIN, "val": VAL})
    assert torch.allclose(a.fc.weight, b.fc.weight, atol=1e-6)
    assert [2 * e.train_loss for e in plain.epochs] == pytest.approx([e.train_loss for e in doubled.epochs])
