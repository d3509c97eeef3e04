"""The join after the head's warm-up: the body's rates ramp up over its first epoch, the head goes on
with the optimizer state it warmed up with."""

import pytest
import torch

from core.train import Callback
from core.train.base import TrainConfig
from core.train.fitting import fit
from tests.toys import Toy, tiny

TRAIN, VAL = Toy(24, 0), Toy(8, 1)  # 24 images in batches of 8: 3 steps an epoch


def config(**changes) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=4, warmup_epochs=2, early_stopping=0, batch_size=8, lr=0.01, image_size=32,
                                 augment=False, freeze=[]), **changes})


class Rates(Callback):
    """Each group's learning rate at every step, by group name."""

    def __init__(self):
        self.steps = []

    def on_batch_start(self, step):
        self.steps.append({g["name"]: g["lr"] for g in self.trainer.optimizer.param_groups})


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_body_ramps_up_to_its_full_rate_over_its_first_epoch_while_the_head_goes_on(schedule):
    rates = Rates()
    fit(tiny(), TRAIN, VAL, config(schedule=schedule), callbacks=[rates])
    tuning = rates.steps[6:]  # the warm-up's two epochs are steps 0-5
    assert len(tuning) == 6
    body = [step["stem"] / step["head"] for step in tuning]  # equal multipliers: the ramp alone
    assert body == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    if schedule == "constant":
        assert [step["head"] for step in tuning] == pytest.approx([0.01] * 6)
        assert [step["block"] for step in tuning] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01, 0.01, 0.01])
    else:
        assert tuning[0]["head"] == pytest.approx(0.01)  # the head starts its new schedule at once


def test_a_group_that_joins_later_ramps_up_over_its_own_first_epoch():
    rates = Rates()
    fit(tiny(), TRAIN, VAL, config(epochs=5, schedule="constant", unfreeze_every=1), callbacks=[rates])
    tuning = rates.steps[6:]
    # progressive unfreezing: the head's first epoch after the warm-up, the block joins the next one,
    # the stem one epoch later
    ramp = [0.01 / 3, 0.02 / 3, 0.01]
    assert [step["block"] for step in tuning[3:6]] == pytest.approx(ramp)
    assert [step["stem"] for step in tuning[6:9]] == pytest.approx(ramp)
    assert [step["block"] for step in tuning[6:9]] == pytest.approx([0.01] * 3)
    assert [step["head"] for step in tuning] == pytest.approx([0.01] * 9)


class HeadState(Callback):
    """The optimizer's state of the head's weight at the end of each epoch and at each step's start."""

    def __init__(self):
        self.at_epoch_end, self.at_step = [], []

    def _state(self):
        t = self.trainer
        state = t.optimizer.state.get(t.model.fc.weight, {})
        return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}

    def on_batch_start(self, step):
        self.at_step.append(self._state())

    def on_train_epoch_end(self, epoch):
        self.at_epoch_end.append(self._state())


def test_the_head_keeps_its_optimizer_state_across_the_join():
    watcher = HeadState()
    fit(tiny(), TRAIN, VAL, config(), callbacks=[watcher])
    warmed, first_tuning_step = watcher.at_epoch_end[1], watcher.at_step[6]
    assert int(warmed["step"]) == 6
    assert int(first_tuning_step["step"]) == 6, "the head's Adam moments and step count carry on"
    assert torch.equal(first_tuning_step["exp_avg"], warmed["exp_avg"])
    assert torch.equal(first_tuning_step["exp_avg_sq"], warmed["exp_avg_sq"])


def test_a_longer_ramp_reaches_the_full_rate_after_the_steps_it_is_given():
    from core.train.loop import join_ramps

    plan = [{"head": 1.0}, {"head": 1.0, "body": 1.0}]
    groups = [{"name": "body"}, {"name": "head"}]
    body, head = join_ramps(groups, plan, start=1, steps=4, ramp_steps=10)
    assert [round(body(s), 2) for s in (0, 4, 9, 30)] == [0.1, 0.5, 1.0, 1.0]
    assert head(0) == 1.0
