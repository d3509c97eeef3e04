"""The divergence guard's starting loss is where the first epoch started, however few batches an epoch has."""

import torch
from torch import nn

from core.train.base import BatchProgress
from core.train.callbacks import DivergenceGuard


class FakeTrainer:
    def __init__(self):
        self.model = nn.Linear(2, 1)
        self.param_groups = [{"params": list(self.model.parameters())}]
        self.config = type("Config", (), {"lr": 0.1})()
        self.stop_reason, self.message = None, ""
        self.history = type("History", (), {"best_epoch": None})()

    def request_stop(self, reason, message=""):
        self.stop_reason, self.message = reason, message


def test_a_loss_growing_over_epochs_of_two_batches_is_caught_and_the_last_good_epoch_kept():
    guard, trainer = DivergenceGuard(), FakeTrainer()
    guard.trainer = trainer
    guard.on_fit_start(None)
    losses = {1: [1.0, 1.0], 2: [3.0, 3.0], 3: [8.0, 8.0], 4: [20.0, 20.0]}  # no validation set: train loss alone
    for epoch, batch_losses in losses.items():
        guard.on_epoch_start(epoch)
        with torch.no_grad():
            trainer.model.weight.fill_(float(epoch))  # what this epoch's weights look like
        for b, loss in enumerate(batch_losses):
            guard.on_batch_end(BatchProgress(epoch, b + 1, 2, loss, 0.0))
        guard.on_train_epoch_end(epoch)
        if trainer.stop_reason:
            break
        guard.on_epoch_end(type("Metrics", (), {"epoch": epoch, "val_loss": float("nan")})())
    # 20 is 20x where training started (1.0); the first five batches (1, 1, 3, 3, 8) said 3.2
    assert trainer.stop_reason == "diverged" and "epoch 4" in trainer.message
    assert trainer.model.weight.flatten().tolist() == [3.0, 3.0]  # epoch 3's weights, the last good ones
    assert trainer.history.best_epoch == 3  # and the run says it keeps epoch 3
