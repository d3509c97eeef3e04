import copy
import math
import threading

import pytest
import torch

from core import models
from core.errors import ConfigError
from core.train.base import Callback, TrainConfig, build_param_groups, discriminative_multipliers, training_plan
from core.train.fitting import fit
from tests.toys import Shapes


@pytest.fixture(scope="module")
def data():
    return Shapes(24, 0), Shapes(8, 1)


def body_groups(model):
    return [g.name for g in model.layer_groups if g.name != "head"]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_frozen_groups_stay_exactly_as_they_were_batchnorm_statistics_too(lite0, data):
    model = models.classifier(lite0, 2, image_size=48)
    before = snapshot(model)
    frozen = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5"]
    fit(model, *data, TrainConfig(epochs=1, batch_size=8, freeze=frozen, image_size=48))
    after = model.state_dict()
    frozen_modules = [m for g in model.layer_groups if g.name in frozen for m in g.modules]
    for key in before:
        in_frozen = any(key.startswith(m + ".") for m in frozen_modules)
        if in_frozen:
            assert torch.equal(before[key], after[key]), key
    # trained groups moved: weights and BatchNorm statistics alike
    assert not torch.equal(before["_blocks.15._bn2.running_mean"], after["_blocks.15._bn2.running_mean"])
    assert not torch.equal(before["_conv_head.weight"], after["_conv_head.weight"])
    assert all(p.requires_grad for p in model.parameters())  # fit puts requires_grad back


def test_param_groups_carry_each_groups_learning_rate(lite0):
    model = models.classifier(lite0, 2)
    config = TrainConfig(lr=0.01, freeze=["stem", "stage1"], lr_multipliers={"stage7": 0.1, "top": 0.5, "stage2": 0})
    groups = {g["name"]: g for g in build_param_groups(model, config)}
    assert "stem" not in groups and "stage1" not in groups and "stage2" not in groups
    assert groups["stage7"]["lr"] == pytest.approx(0.001)
    assert groups["top"]["lr"] == pytest.approx(0.005)
    assert groups["head"]["lr"] == pytest.approx(0.01)
    assert not any(p.requires_grad for p in model.get_submodule("_blocks.1").parameters())


def test_training_only_the_head_uses_cached_features_and_matches_the_plain_path(data):
    base = models.load("resnet18", pretrained=False)
    torch.manual_seed(0)
    model = models.classifier(base, 2, image_size=32)
    twin = copy.deepcopy(model)
    config = TrainConfig(epochs=3, batch_size=8, freeze=body_groups(model), augment=False, image_size=32)
    cached = fit(model, *data, config)
    plain = fit(twin, *data, TrainConfig(**{**config.to_dict(), "cache_features": False}))
    assert cached.used_feature_cache and not plain.used_feature_cache
    assert torch.allclose(model.fc.weight, twin.fc.weight, atol=1e-5)
    assert [round(e.val_acc, 4) for e in cached.epochs] == [round(e.val_acc, 4) for e in plain.epochs]


def test_stop_ends_the_run_within_one_batch(lite0, data):
    stop = threading.Event()
    seen_after_stop = []

    class StopAtFirstBatch(Callback):
        def on_batch_end(self, progress):
            if stop.is_set():
                seen_after_stop.append(progress)
            if progress.phase == "train":
                stop.set()

    model = models.classifier(lite0, 2, image_size=48)
    history = fit(model, *data, TrainConfig(epochs=5, batch_size=4, freeze=[], image_size=48),
                  [StopAtFirstBatch()], stop)
    assert history.stopped == "cancelled"
    assert seen_after_stop == []
    assert len(history.epochs) <= 1


def test_a_loss_that_blows_up_stops_with_a_message_and_keeps_the_last_good_weights(lite0, data):
    good = {}

    class BlowUpInEpochTwo(Callback):
        """Stands in for a learning rate so high that the weights overflow in epoch 2."""

        def on_epoch_end(self, metrics):
            good.update(snapshot(model))

        def on_batch_end(self, progress):
            if progress.epoch == 2 and progress.batch == 1:
                with torch.no_grad():
                    model.head.weight.fill_(float("inf"))

    model = models.classifier(lite0, 2, image_size=48)
    history = fit(model, *data, TrainConfig(epochs=4, batch_size=8, freeze=body_groups(model), image_size=48),
                  [BlowUpInEpochTwo()])
    assert history.stopped == "diverged"
    assert len(history.epochs) == 1
    assert "NaN or infinite" in history.message and "learning rate" in history.message
    for key, value in model.state_dict().items():
        assert torch.equal(value, good[key]), key


def test_a_last_batch_of_one_does_not_break_batchnorm(lite0):
    model = models.classifier(lite0, 2, image_size=32)
    history = fit(model, Shapes(9, 3), Shapes(4, 4), TrainConfig(epochs=1, batch_size=8, freeze=[], image_size=32))
    assert len(history.epochs) == 1 and math.isfinite(history.epochs[0].train_loss)


@pytest.mark.parametrize(
    "config, message",
    [
        (TrainConfig(freeze=["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top", "head"]),
         "Every layer group is frozen"),
        (TrainConfig(freeze=["layer9"]), "Unknown layer groups"),
        (TrainConfig(lr=float("nan")), "learning rate"),
        (TrainConfig(epochs=0), "Epochs"),
        (TrainConfig(optimizer="adam9"), "optimizer"),
        (TrainConfig(image_size=8), "input size"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_a_reason(lite0, data, config, message):
    model = models.classifier(lite0, 2, image_size=32)
    with pytest.raises(ConfigError, match=message):
        fit(model, *data, config)


def test_one_training_image_is_refused(lite0):
    model = models.classifier(lite0, 2, image_size=32)
    with pytest.raises(ConfigError, match="two training images"):
        fit(model, Shapes(1, 0), Shapes(2, 1), TrainConfig(image_size=32))


@pytest.mark.slow
def test_feature_extraction_on_the_demo_set_is_well_above_chance(lite0):
    from core.data import demo_dataset, split

    train_ds, val_ds = split(demo_dataset("source", per_class=15, seed=0), 0.25, seed=0)
    model = models.classifier(lite0, len(train_ds.classes), image_size=96)
    history = fit(model, train_ds, val_ds, TrainConfig(epochs=3, freeze=body_groups(model), image_size=96))
    chance = 1 / len(train_ds.classes)
    assert history.used_feature_cache
    assert history.epochs[-1].val_acc >= chance + 0.4, history.epochs


def test_a_frozen_prefix_is_cached_and_trains_exactly_like_the_plain_path(data):
    torch.manual_seed(0)
    model = models.classifier(models.load("resnet18", pretrained=False), 2, image_size=32)
    twin = copy.deepcopy(model)
    config = TrainConfig(epochs=2, batch_size=8, freeze=["stem", "layer1", "layer2"], augment=False, image_size=32)
    cached = fit(model, *data, config)
    plain = fit(twin, *data, TrainConfig(**{**config.to_dict(), "cache_features": False}))
    assert cached.cache == "prefix" and plain.cache == ""
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    assert [round(e.val_loss, 5) for e in cached.epochs] == [round(e.val_loss, 5) for e in plain.epochs]
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), twin(x), atol=1e-5)  # the prefix computes normally again


def test_progressive_unfreezing_plans_the_top_group_first_then_one_more_every_k_epochs():
    groups = ["stem", "stage1", "stage2", "top", "head"]
    plan = training_plan(groups, TrainConfig(epochs=7, freeze=["stem"], unfreeze_every=2,
                                             lr_multipliers={"stage1": 0.1}))
    trainable = [[g for g in groups if epoch[g] > 0] for epoch in plan]
    assert trainable == [["head"], ["head"], ["top", "head"], ["top", "head"],
                         ["stage2", "top", "head"], ["stage2", "top", "head"], ["stage1", "stage2", "top", "head"]]
    assert plan[-1]["stage1"] == pytest.approx(0.1) and plan[-1]["stem"] == 0
    constant = training_plan(groups, TrainConfig(epochs=3))
    assert all(epoch == constant[0] for epoch in constant) and all(v == 1.0 for v in constant[0].values())


def test_fit_follows_the_unfreezing_plan(lite0, data):
    model = models.classifier(lite0, 2, image_size=32)
    changed_by_epoch = []
    start = snapshot(model)

    class Watch(Callback):
        def on_epoch_end(self, metrics):
            now = model.state_dict()
            changed_by_epoch.append({g.name for g in model.layer_groups for m in g.modules
                                     for k in now if k.startswith(m + ".") and not torch.equal(now[k], start[k])})

    frozen = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6"]
    history = fit(model, *data, TrainConfig(epochs=3, batch_size=8, freeze=frozen, unfreeze_every=1, image_size=32),
                  [Watch()])
    assert changed_by_epoch == [{"head"}, {"head", "top"}, {"head", "top", "stage7"}]
    assert history.cache == "prefix"
    assert [sorted(g for g, m in e.items() if m > 0) for e in history.plan] == [
        ["head"], ["head", "top"], ["head", "stage7", "top"]]


def test_discriminative_learning_rates_spread_geometrically_from_the_stem_to_the_head():
    mults = discriminative_multipliers(["stem", "a", "b", "head"], lowest=0.001)
    assert mults["stem"] == pytest.approx(0.001) and mults["head"] == pytest.approx(1.0)
    assert mults["a"] == pytest.approx(0.01) and mults["b"] == pytest.approx(0.1)


@pytest.mark.slow
def test_pretrained_features_beat_training_from_scratch_on_the_demo_set(lite0):
    from core.data import demo_dataset, split

    train_ds, val_ds = split(demo_dataset("source", per_class=20, seed=0), 0.25, seed=0)  # 15 a class to train
    assert min(train_ds.counts().values()) == 15
    frozen = models.classifier(lite0, len(train_ds.classes), image_size=96)
    pretrained = fit(frozen, train_ds, val_ds, TrainConfig(epochs=5, freeze=body_groups(frozen), image_size=96))
    scratch_model = models.starting_model("efficientnet_lite0", train_ds.classes, pretrained=False, image_size=96)
    scratch = fit(scratch_model, train_ds, val_ds, TrainConfig(epochs=5, image_size=96))
    assert pretrained.epochs[-1].val_acc >= 0.85
    assert pretrained.epochs[-1].val_acc - scratch.epochs[-1].val_acc >= 0.3
