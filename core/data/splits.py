"""Training and validation splits, and the checks that say in plain words what a dataset lacks."""

from __future__ import annotations

import numpy as np

from core.data.datasets import ImageDataset
from core.data.names import described, look_alike_groups, some
from core.errors import ConfigError, DataError

__all__ = ["MIN_IMAGES_PER_CLASS", "split", "check_split", "dataset_warnings", "grayscale_share",
           "augmentation_note", "spread"]

MIN_IMAGES_PER_CLASS = 5
_IMBALANCE_RATIO = 3.0


def split(
    ds: ImageDataset, val_fraction: float = 0.2, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Training and validation sets, stratified by class and the same for the same seed.

    A class with two or more images gets at least one image on each side; a class with a
    single image goes to training. Both halves keep every class.
    """
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 < val_fraction < 1
    ):
        raise ConfigError(
            f"The validation share must be between 0 and 1 (e.g. 0.2), not {val_fraction!r}."
        )
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(ds.labels):
        by_class.setdefault(label, []).append(i)
    train, val = [], []
    for label, indices in sorted(by_class.items()):
        # One stream per class: a class's split does not depend on the other classes.
        # a multi-task set's first task may have gaps (label -1): they are a stratum of their own
        order = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(label) & 0xFFFFFFFF]).permutation(len(indices))
        shuffled = [indices[k] for k in order]
        n_val = 0 if len(indices) < 2 else min(max(round(len(indices) * val_fraction), 1), len(indices) - 1)
        val += shuffled[:n_val]
        train += shuffled[n_val:]
    return ds.subset(sorted(train)), ds.subset(sorted(val))


def check_split(train: ImageDataset, val: ImageDataset) -> None:
    """Refuse a split that training cannot be judged on, saying why and what to do.

    ``split`` puts a class with a single image into training, so a dataset of one-image classes
    has an empty validation set: a run on it would "finish" with no validation accuracy at all.
    """
    if len(val) == 0:
        raise DataError(
            "The validation split is empty: every class has a single image, and a class's only "
            "image goes to training, so nothing would measure how well the model does. Add at "
            "least one more image to some classes (two or more per class) and train again."
        )


def dataset_warnings(ds: ImageDataset) -> list[str]:
    """Plain-words problems with a dataset that training would suffer from.

    One message per kind of problem, however many classes have it.
    """
    counts = ds.counts()
    filled = {c: n for c, n in counts.items() if n > 0}
    result = []
    if not filled:
        return ["The dataset is empty: add images for at least two classes."]
    if len(filled) == 1:
        only = next(iter(filled))
        result.append(f"Only one class ({only!r}) has images: training needs at least two classes.")
    empty = [c for c, n in counts.items() if n == 0]
    if len(empty) == 1:
        result.append(f"Class {empty[0]!r} has no images yet; add some or remove the class.")
    elif empty:
        result.append(f"{len(empty):,} classes have no images yet ({some(empty)}); add some or remove them.")
    few = [c for c, n in counts.items() if 0 < n < MIN_IMAGES_PER_CLASS]
    if len(few) == 1:
        n = counts[few[0]]
        result.append(
            f"Class {few[0]!r} has only {n} image{'s' if n != 1 else ''}; aim for at least "
            f"{MIN_IMAGES_PER_CLASS} (more is better)."
        )
    elif few:
        singles = sum(1 for c in few if counts[c] == 1)
        result.append(
            f"{len(few):,} classes have fewer than {MIN_IMAGES_PER_CLASS} images ({some(few)})"
            + (f"; {singles:,} of them have a single image, which can only go to training, so "
               "nothing checks the model on them" if singles else "")
            + f". Aim for at least {MIN_IMAGES_PER_CLASS} per class (more is better)."
        )
    by_fold: dict[str, list[str]] = {}
    for c in counts:
        by_fold.setdefault(c.casefold(), []).append(c)
    alike = [names for names in by_fold.values() if len(names) > 1]
    if alike:
        pairs = "; ".join(" / ".join(repr(n) for n in names) for names in alike[:5])
        result.append(
            f"Some class names differ only in upper and lower case ({pairs}"
            + (f"; and {len(alike) - 5:,} more" if len(alike) > 5 else "")
            + "): they are separate classes. If they mean the same thing, give their images one "
            "folder (one class name)."
        )
    result += _look_alike_warnings(counts)
    if len(filled) >= 2:
        big = max(filled, key=filled.get)
        small = min(filled, key=filled.get)
        if filled[big] > _IMBALANCE_RATIO * filled[small]:
            result.append(
                f"The classes are unbalanced: {big!r} has {filled[big]} images but {small!r} only "
                f"{filled[small]}. The model may favour {big!r}; add images to the small classes "
                "or remove some from the big ones."
            )
    return result


def _look_alike_warnings(names) -> list[str]:
    """Names written with different characters that look the same ("cat" and "cаt", a Cyrillic "а"),
    beyond case alone (warned above): shown escaped, so the reader sees where they differ."""
    alike = look_alike_groups(names)
    if not alike:
        return []
    return [f"Some class names look alike but are written with different characters ({described(alike)}): "
            "they are separate classes. If they mean the same thing, give their images one folder (one class name)."]


def spread(n: int, k: int) -> list[int]:
    """Up to ``k`` indices of ``n`` items, evenly spaced from the first: a sample of a dataset that
    reaches every class of one sorted by class."""
    return list(range(0, n, max(1, n // k)))[:k]


def grayscale_share(ds: ImageDataset, limit: int = 200, tolerance: int = 3) -> float:
    """The share of images whose red, green and blue channels are equal (within ``tolerance``
    levels, for JPEG noise), looking at up to ``limit`` images spread over the dataset."""
    n = len(ds)
    if n == 0:
        return 0.0
    picked = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))
    gray = 0
    for i in picked:
        # a thumbnail is enough to tell colour from gray, and keeps a big upload fast
        img = ds[int(i)][0].convert("RGB")
        img.thumbnail((64, 64))
        px = np.asarray(img, dtype=np.int16)
        gray += int(np.abs(px - px[..., :1]).max() <= tolerance)
    return gray / len(picked)


def augmentation_note(ds: ImageDataset) -> str:
    """A plain-words note on which augmentation suits these images ("" when nothing to say)."""
    share = grayscale_share(ds)
    if share >= 0.5:
        return (f"{share:.0%} of these images are grayscale: leave colour jitter off (it has no colour to "
                "vary), and flips too if a mirror image changes the meaning (digits, letters, text).")
    return ""
