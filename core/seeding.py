"""Seeded sections that stay reproducible while other threads train.

torch's CPU generator is one per process: two sessions seeding it at the same time would
interleave their draws. Every seeded section holds one lock and restores the generator after.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["seeded", "reseed"]

_lock = threading.RLock()


@contextmanager
def seeded(seed: int, cuda_devices: list[int] = ()) -> Iterator[None]:
    """Run the block with torch's CPU generator (and these CUDA devices' generators) seeded, then
    put them back."""
    with _lock, torch.random.fork_rng(devices=list(cuda_devices)):
        torch.manual_seed(seed)
        yield


def reseed(seed: int) -> None:
    """Seed torch's global generator for a training run (dropout, stochastic depth) without
    landing in the middle of another thread's seeded section."""
    with _lock:
        torch.manual_seed(seed)
