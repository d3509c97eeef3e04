"""N-way K-shot episodes: which classes an episode draws, its labelled support images and the query
images it is scored on. Base classes are for meta-training, novel classes for evaluation, and no
episode mixes them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError, DataError

__all__ = ["ClassSplit", "Episode", "split_classes", "sample_episodes", "largest_ways"]


@dataclass(frozen=True)
class ClassSplit:
    """Class names for meta-training (``base``) and for evaluation (``novel``); never both."""

    base: tuple[str, ...]
    novel: tuple[str, ...]


def split_classes(classes: Sequence[str], novel: Sequence[str] | None = None, n_novel: int | None = None,
                  seed: int = 0) -> ClassSplit:
    """Base and novel classes: the ones named in ``novel``, else ``n_novel`` (half by default) at random."""
    classes = [str(c) for c in classes]
    if novel is not None:
        novel = [str(c) for c in novel]
        unknown = sorted(set(novel) - set(classes))
        if unknown:
            raise DataError(f"Novel class {unknown[0]!r} is not among the dataset's classes.")
        chosen = set(novel)
    else:
        n_novel = len(classes) // 2 if n_novel is None else int(n_novel)
        if not 1 <= n_novel < len(classes):
            raise ConfigError(f"Choose between 1 and {len(classes) - 1} novel classes.")
        order = np.random.default_rng([int(seed) & 0xFFFFFFFF, 11]).permutation(len(classes))
        chosen = {classes[i] for i in order[:n_novel]}
    return ClassSplit(tuple(c for c in classes if c not in chosen), tuple(c for c in classes if c in chosen))


def largest_ways(labels: Sequence[int], classes: Sequence[int], n_query: int, shots: Sequence[int] = (1, 5),
                 most: int = 5) -> dict[int, int]:
    """{K: the largest N (at most ``most``) of N-way K-shot episodes with ``n_query`` queries per class that
    dataset classes ``classes`` allow}; K is left out when fewer than two classes have K + n_query images."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=max(classes, default=-1) + 1)
    sizes = counts[list(classes)] if len(classes) else np.zeros(0, dtype=int)
    ways = {int(k): min(most, int((sizes >= k + n_query).sum())) for k in shots}
    return {k: n for k, n in ways.items() if n >= 2}


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot task: dataset indices of the support and query images, their labels in
    0..N-1 (way ``i`` is dataset class ``classes[i]``)."""

    classes: tuple[int, ...]
    support: np.ndarray
    support_y: np.ndarray
    query: np.ndarray
    query_y: np.ndarray


def _by_class(labels: Sequence[int], classes: Sequence[int]) -> dict[int, np.ndarray]:
    labels = np.asarray(labels)
    return {int(c): np.flatnonzero(labels == c) for c in classes}


def sample_episodes(labels: Sequence[int], classes: Sequence[int], n_way: int, k_shot: int, n_query: int,
                    count: int, seed: int = 0, names: Sequence[str] | None = None) -> list[Episode]:
    """``count`` episodes drawn only from dataset classes ``classes``; the same seed gives the same episodes.

    Args:
        labels: every image's class, as in ``ImageDataset.labels``.
        names: class names, for messages.
    """
    for what, value, low in (("N (ways)", n_way, 2), ("K (shots)", k_shot, 1), ("queries per class", n_query, 1),
                             ("episodes", count, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"The number of {what} must be a whole number of at least {low}.")
    pools = _by_class(labels, classes)
    if n_way > len(pools):
        raise ConfigError(f"{n_way}-way episodes need {n_way} classes, but only {len(pools)} are available: "
                          "choose a smaller N or add classes.")
    need = k_shot + n_query
    usable = [c for c, idx in pools.items() if len(idx) >= need]
    if len(usable) < n_way:
        short = min(pools, key=lambda c: len(pools[c]))
        label = names[short] if names is not None else str(short)
        raise DataError(f"Class {label!r} has only {len(pools[short])} images, and only {len(usable)} classes have "
                        f"the {need} that {k_shot}-shot episodes with {n_query} queries need: lower K or the "
                        "queries, or add images.")
    usable = np.asarray(sorted(usable))
    episodes = []
    for e in range(count):
        # one generator per episode: asking for more episodes never changes the first ones
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 5, e])
        chosen = rng.choice(usable, size=n_way, replace=False)
        support, query = [], []
        for c in chosen:
            picked = rng.choice(pools[int(c)], size=need, replace=False)
            support.append(picked[:k_shot])
            query.append(picked[k_shot:])
        ways = np.arange(n_way)
        episodes.append(Episode(tuple(int(c) for c in chosen), np.concatenate(support), np.repeat(ways, k_shot),
                                np.concatenate(query), np.repeat(ways, n_query)))
    return episodes
