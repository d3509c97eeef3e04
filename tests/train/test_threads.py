"""Two fits in threads of one process train as each would alone (dropout draws from torch's one
global generator)."""

from __future__ import annotations

import threading

import torch

from core.train.base import TrainConfig
from core.train.fitting import fit
from tests.toys import Toy, tiny


def _config() -> TrainConfig:
    # Nothing frozen and nothing cached, so every step runs the dropout layer; no augmentation,
    # so dropout is the only random draw of a step.
    return TrainConfig(epochs=3, batch_size=4, lr=0.05, image_size=32, augment=False, seed=7,
                       cache_features=False, early_stopping=0)


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_two_fits_in_threads_with_one_seed_each_train_as_they_would_alone():
    train, val = Toy(24, seed=1), Toy(8, seed=2)
    solo = tiny(seed=3)
    fit(solo, train, val, _config())
    models = [tiny(seed=3), tiny(seed=3)]
    errors: list[BaseException] = []

    def train_one(model):
        try:
            fit(model, train, val, _config())
        except BaseException as error:  # a failure in a thread must fail the test
            errors.append(error)

    threads = [threading.Thread(target=train_one, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for model in models:
        assert torch.equal(_weights(model), _weights(solo))
