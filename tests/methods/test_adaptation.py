"""Specifications of core.methods.adaptation: DAN training, its safeguards, and the plain-vs-DAN comparison."""

import math
import threading

import pytest
import torch

from core import data, models
from core.analysis import domain, mmd
from core.errors import ConfigError
from core.methods.adaptation import DANEpoch, adaptation_config, compare_adaptation, default_freeze, fit_dan
from core.runs.kinds.dan import start_comparison
from core.train.base import Callback

GROUPS = models.group_names(models.DEFAULT_BACKBONE)


@pytest.fixture(scope="module")
def start():
    base = models.load()

    def make():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return models.classifier(base, 4, classes=list(data.DEMO_CLASSES), image_size=32)

    return make


def config(**changes):
    return adaptation_config(**{"epochs": 1, "batch_size": 4, "image_size": 32, **changes})


def snapshot(model, prefix=""):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def mmd_at_head_input(model, source_sets, target, size):
    feats = [domain.extract_features(model, ds, [domain.HEAD_INPUT], size)[domain.HEAD_INPUT] for ds in source_sets]
    return mmd.mmd2(torch.cat(feats), domain.extract_features(model, target, [domain.HEAD_INPUT], size)[domain.HEAD_INPUT])


# ----------------------------------------------------------------------------- the point of it


def test_dan_lowers_the_mmd_at_the_adapted_layer_compared_with_plain_fine_tuning():
    source = data.demo_dataset("source", per_class=8)
    target = data.demo_dataset("target", per_class=8)
    train, val = data.split(source, 0.25, 0)
    cfg = adaptation_config(epochs=3, image_size=64)
    result = compare_adaptation(train, val, target, cfg, lam=1.0, keep_models=True)

    measured = {arm.name: mmd_at_head_input(arm.model, [train, val], target, 64) for arm in result.arms}
    assert measured["DAN"] < 0.8 * measured["plain"], measured
    assert measured["DAN"] < result.dan.mmd_before
    # what the histories report is what an independent pass over the trained models measures
    assert result.plain.mmd_after == pytest.approx(measured["plain"], rel=1e-4, abs=1e-6)
    assert result.dan.mmd_after == pytest.approx(measured["DAN"], rel=1e-4, abs=1e-6)
    assert result.plain.mmd_before == result.dan.mmd_before  # one starting model for both arms
    assert result.plain.lam == 0 and result.dan.lam == 1.0
    assert 0 <= result.plain.target_acc <= 1 and 0 <= result.dan.target_acc <= 1


def test_both_arms_start_from_the_same_model_and_differ_only_by_lambda(small_domains):
    train, val, target = small_domains
    result = compare_adaptation(train, val, target, config(epochs=1), lam=0.0, keep_models=True)
    for a, b in zip(result.plain.model.state_dict().values(), result.dan.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- safeguards


def test_adaptation_with_every_group_before_the_head_frozen_is_a_config_error(small_domains, start):
    train, val, target = small_domains
    frozen = config(freeze=default_freeze(GROUPS, trainable=0))
    with pytest.raises(ConfigError, match="(?i)adaptation needs trainable layers before the adapted layer"):
        fit_dan(start(), train, val, target, frozen, lam=0.5)
    with pytest.raises(ConfigError, match="(?i)adaptation needs trainable layers before the adapted layer"):
        start_comparison(train, val, target, frozen, lam=0.5)
    # a layer deep inside the frozen part cannot move either, whatever trains after it
    with pytest.raises(ConfigError, match="(?i)trainable layers before the adapted layer"):
        fit_dan(start(), train, val, target, config(), lam=0.5, layer="_blocks.3")
    # with λ = 0 nothing needs to move: plain training of the head alone is fine
    history = fit_dan(start(), train, val, target, frozen, lam=0.0)
    assert len(history.epochs) == 1


def test_a_negative_lambda_or_an_unknown_layer_is_a_config_error(small_domains, start):
    train, val, target = small_domains
    with pytest.raises(ConfigError, match="λ"):
        fit_dan(start(), train, val, target, config(), lam=-1.0)
    with pytest.raises(ConfigError, match="no layer"):
        fit_dan(start(), train, val, target, config(), lam=1.0, layer="_blocks.99")


# ----------------------------------------------------------------------------- the training loop


def test_fit_dan_puts_back_requires_grad_and_modes_and_removes_its_hooks(small_domains, start):
    train, val, target = small_domains
    model = start()
    model.train()
    model._bn0.eval()
    model._conv_stem.weight.requires_grad_(False)
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    fit_dan(model, train, val, target, config(), lam=1.0)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_frozen_groups_and_every_batchnorm_statistic_stay_exactly_as_they_were(small_domains, start):
    train, val, target = small_domains
    model = start()
    before = snapshot(model)
    fit_dan(model, train, val, target, config(epochs=2), lam=1.0)
    after = snapshot(model)
    frozen = default_freeze(GROUPS)
    frozen_modules = [m for g in model.layer_groups if g.name in frozen for m in g.modules]
    for key, value in before.items():
        if any(key.startswith(m + ".") for m in frozen_modules) or "running_" in key:
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    trained = [m for g in model.layer_groups if g.name not in frozen for m in g.modules]
    assert any(not torch.equal(after[k], before[k]) for k in before if any(k.startswith(m + ".") for m in trained))


def test_each_epoch_reports_the_loss_its_two_terms_and_both_accuracies(small_domains, start):
    train, val, target = small_domains
    history = fit_dan(start(), train, val, target, config(epochs=2), lam=0.5, target_eval=target)
    assert len(history.epochs) == 2 and all(isinstance(e, DANEpoch) for e in history.epochs)
    for e in history.epochs:
        assert e.train_loss == pytest.approx(e.ce + 0.5 * e.mmd, rel=1e-5)
        assert 0 <= e.val_acc <= 1 and 0 <= e.target_acc <= 1 and math.isfinite(e.layer_mmd)
    assert math.isfinite(history.mmd_before) and history.mmd_after == history.epochs[-1].layer_mmd
    unlabelled = fit_dan(start(), train, val, target, config(), lam=0.5)
    assert math.isnan(unlabelled.epochs[0].target_acc)


def test_plain_fine_tuning_still_reports_the_mmd_term_but_does_not_train_on_it(small_domains, start):
    train, val, target = small_domains
    history = fit_dan(start(), train, val, target, config(), lam=0.0)
    e = history.epochs[0]
    assert e.train_loss == pytest.approx(e.ce) and e.mmd != 0


class Steps(Callback):
    def __init__(self, stop=None):
        self.batches, self.train_steps, self.stop = set(), 0, stop

    def on_batch_end(self, progress):
        if progress.phase == "train":
            self.batches.add(progress.batches)
            self.train_steps += 1
            if self.stop is not None:
                self.stop.set()


def test_an_epoch_lasts_as_long_as_the_larger_set_cycling_the_smaller(small_domains, start):
    train, val, target = small_domains
    assert (len(train), len(target)) == (8, 12)
    steps = Steps()
    fit_dan(start(), train, val, target, config(batch_size=3), lam=1.0, callbacks=[steps])
    assert steps.batches == {4} and steps.train_steps == 4  # ceil(12 / 3): the source images are cycled
    steps = Steps()
    fit_dan(start(), train, val, target.subset(range(0, 12, 3)), config(batch_size=3), lam=1.0, callbacks=[steps])
    assert steps.batches == {3}  # ceil(8 / 3): now the 4 target images are cycled


def test_setting_stop_ends_the_run_within_one_batch(small_domains, start):
    train, val, target = small_domains
    stop = threading.Event()
    steps = Steps(stop)
    history = fit_dan(start(), train, val, target, config(epochs=3, batch_size=2), lam=1.0,
                      callbacks=[steps], stop=stop)
    assert history.stopped == "cancelled" and steps.train_steps == 1 and len(history.epochs) <= 1


def test_stop_is_heard_during_the_first_mmd_measurement_when_nothing_is_frozen(start):
    source = data.demo_dataset("source", per_class=4)
    target = data.demo_dataset("target", per_class=4)
    train, val = data.split(source, 0.25, 0)
    model = start()
    stop = threading.Event()
    seen = []

    def count(_module, _inputs, _output):
        seen.append(1)
        stop.set()  # Stop pressed while the first batch of the first measurement is in the model

    handle = model.get_classifier().register_forward_hook(count)  # DAN reads features, then the head
    try:
        history = fit_dan(model, train, val, target, config(freeze=[], epochs=2), lam=0.5, stop=stop)
    finally:
        handle.remove()
    assert history.stopped == "cancelled" and not history.epochs
    assert len(seen) == 1  # not one pass over every source, validation and target image first
