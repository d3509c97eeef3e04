"""Seeded sections that stay reproducible while other threads train.

torch's CPU generator is one per process: two sessions seeding it at the same time would
interleave their draws. Every seeded section holds one lock and restores the generator after.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["seeded"]

_lock = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded, then put the generator back."""
    with _lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
