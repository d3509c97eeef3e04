import numpy as np
import pytest
import torch

from core import models
from core.errors import ConfigError
from core.methods.lr_finder import find_lr, smooth, suggest_lr
from core.train.base import TrainConfig
from tests.toys import Shapes


@pytest.fixture(scope="module")
def shapes():
    return Shapes(24, 0, size=32)


def body(model):
    return [g.name for g in model.layer_groups if g.name != "head"]


def test_the_callers_model_is_untouched_weights_flags_and_modes(lite0, shapes):
    model = models.classifier(lite0, 2, image_size=32)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(batch_size=8, image_size=32, freeze=body(model)[:-2])  # the top and head train
    result = find_lr(model, shapes, config, start=1e-4, end=1e-1, steps=6)
    assert len(result.lrs) >= 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_the_learning_rates_grow_geometrically_from_start_to_end(lite0, shapes):
    model = models.classifier(lite0, 2, image_size=32)
    result = find_lr(model, shapes, TrainConfig(batch_size=8, image_size=32, freeze=body(model)),
                     start=1e-5, end=1e-2, steps=10)
    lrs = np.array(result.lrs)
    assert len(lrs) == 10 and not result.stopped_early
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-2)
    assert np.allclose(lrs[1:] / lrs[:-1], 10 ** (3 / 9))
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert result.smoothed == pytest.approx(smooth(result.losses, 0.05))


def test_on_an_easy_problem_the_suggestion_lies_inside_the_sweep(lite0, shapes):
    model = models.classifier(lite0, 2, image_size=32)
    result = find_lr(model, shapes, TrainConfig(batch_size=8, image_size=32, freeze=body(model)), steps=30)
    assert result.lrs[0] < result.suggestion < result.lrs[-1]
    assert result.suggestion in result.lrs
    assert min(result.smoothed) < result.smoothed[0]  # the loss did fall somewhere in the sweep


def test_the_sweep_stops_once_the_loss_blows_up(lite0, shapes):
    model = models.classifier(lite0, 2, image_size=32)
    config = TrainConfig(batch_size=8, image_size=32, freeze=body(model), optimizer="sgd")
    result = find_lr(model, shapes, config, start=1e-3, end=1e6, steps=40)
    assert result.stopped_early and len(result.lrs) < 40
    assert result.suggestion < result.lrs[-1]


def test_smoothing_is_bias_corrected_so_a_flat_loss_stays_flat():
    assert smooth([2.0, 2.0, 2.0], 0.05) == pytest.approx([2.0, 2.0, 2.0])
    ema = smooth([1.0, 3.0], 0.5)
    assert ema == pytest.approx([1.0, (0.5 * 0.5 * 1 + 0.5 * 3) / (1 - 0.25)])


def test_the_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-6, 0, 61)
    x = np.log10(lrs)
    loss = 2 - np.tanh((x + 3) * 2) + np.where(x > -1, (x + 1) ** 2 * 20, 0)  # falls fastest at 1e-3
    lr, method = suggest_lr(lrs, loss)
    assert method == "steepest" and lr == pytest.approx(1e-3, rel=0.15)


def test_one_noisy_dip_on_the_flat_start_does_not_outrank_the_real_descent():
    lrs = np.logspace(-6, 0, 60)
    x = np.log10(lrs)
    loss = 2 - np.tanh((x + 3) * 1.5) + np.where(x > -1, (x + 1) ** 2 * 20, 0)  # falls fastest at 1e-3
    loss[8] -= 0.3  # a lucky batch at 5e-6
    lr, method = suggest_lr(lrs, loss)
    assert method == "steepest" and lr == pytest.approx(1e-3, rel=0.3)


def test_a_curve_that_only_rises_falls_back_to_a_tenth_of_its_minimum():
    lrs = np.logspace(-4, 0, 9)
    lr, method = suggest_lr(lrs, np.linspace(1, 5, 9))
    assert method == "minimum / 10" and lr == lrs[0]
    coarse = np.array([1e-6, 1e-4, 1e-2, 1.0])
    lr, method = suggest_lr(coarse, [3.0, 2.0, 5.0, 9.0])  # falls once, then rises: no slope to pick
    assert method == "minimum / 10" and lr == pytest.approx(1e-5)


def test_impossible_sweeps_are_refused(lite0, shapes):
    model = models.classifier(lite0, 2, image_size=32)
    with pytest.raises(ConfigError, match="start < end"):
        find_lr(model, shapes, TrainConfig(image_size=32), start=1.0, end=1e-3)


def test_a_sweep_retried_after_running_out_of_memory_starts_over_instead_of_mixing_two_sweeps():
    from types import SimpleNamespace

    from core.methods.lr_finder import LRSweep
    from core.train.base import BatchProgress

    sweep = LRSweep(1e-5, 1.0, 10, 0.05)
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.01}])
    sweep.trainer = SimpleNamespace(config=SimpleNamespace(lr=0.01), optimizer=optimizer,
                                    request_stop=lambda why: None)

    def attempt(steps):
        sweep.on_fit_start(None)
        for step in range(steps):
            sweep.on_batch_start(step)
            sweep.on_batch_end(BatchProgress(epoch=1, batch=step + 1, batches=10, loss=1.0, phase="train",
                                             fraction=step / 10))

    attempt(4)  # the first attempt ran out of GPU memory after 4 steps
    attempt(10)  # the retry at half the batch
    assert len(sweep.lrs) == 10 and sweep.lrs == sorted(sweep.lrs)
