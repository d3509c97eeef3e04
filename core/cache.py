"""Keys and a small shared store for computed tensors: what a cache needs to know a hit is exact.

``tensor_key`` digests a tensor's shape, dtype and values, so a key changes whenever the data
does (an object's ``id`` does not notice in-place training). ``FeatureCache`` is a thread-safe LRU
bounded in items and bytes; the training loop keeps frozen layers' activations in one, the
domain-shift analysis its pooled features in another.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch

__all__ = ["tensor_key", "FeatureCache"]


def tensor_key(tensor: torch.Tensor) -> str:
    """A short digest of a tensor's shape, dtype and values, for use in cache keys."""
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{tuple(data.shape)}|{data.dtype}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """A small thread-safe LRU, keyed e.g. by (model key, layer, image key), holding the newest items.

    ``get_or_compute`` runs ``compute`` outside the lock, so two threads missing the same key at
    once may both compute it; the last one stored wins. The caller picks keys that change when a
    model changes (``id(model)`` alone does not notice in-place training). With ``max_bytes`` the
    tensors it holds stay under that many bytes too (the newest item is kept whatever its size).
    """

    def __init__(self, max_items: int = 64, max_bytes: int | None = None):
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors held."""
        with self._lock:
            return sum(self._sizes.values())

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def __getitem__(self, key: Hashable) -> Any:
        with self._lock:
            value = self._items[key]
            self._items.move_to_end(key)
            return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            self._sizes[key] = value.nbytes if isinstance(value, torch.Tensor) else 0
            while len(self._items) > self.max_items or (
                    self.max_bytes is not None and len(self._items) > 1 and sum(self._sizes.values()) > self.max_bytes):
                old, _ = self._items.popitem(last=False)
                self._sizes.pop(old, None)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._sizes.clear()

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached value for ``key``, computing and storing it on a miss."""
        missing = object()
        value = self.get(key, missing)
        if value is missing:
            value = compute()
            self[key] = value
        return value
