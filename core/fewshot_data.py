"""A generated data set with many classes (shape × colour) for few-shot learning; no download.

Few-shot learning needs many classes: some to meta-train on (base), others never seen before
(novel) to evaluate on. The demo set of ``core.data`` has four; this one combines its shapes
with eight colours (up to 32 classes), drawn with the same code: position, size, rotation,
shade and background vary, the same seed gives the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from core.data import _SUPERSAMPLE, DEMO_CLASSES, MAX_SIDE, ImageDataset, _hsv, _outline, _placement
from core.errors import ConfigError

__all__ = ["FEWSHOT_COLOURS", "fewshot_classes", "demo_fewshot"]

# Hues far enough apart that a jitter of ±0.02 never makes one colour look like another.
FEWSHOT_COLOURS = {"red": 0.0, "orange": 0.08, "yellow": 0.16, "green": 0.33, "cyan": 0.5, "blue": 0.62,
                   "purple": 0.75, "pink": 0.9}


def fewshot_classes(n_classes: int) -> list[tuple[str, str]]:
    """The first ``n_classes`` (colour, shape) pairs, in an order that spreads the first few over
    every shape and colour (class k: shape k mod 4, colour (k + k // 4) mod 8; all 32 differ)."""
    colours = list(FEWSHOT_COLOURS)
    return [(colours[(k + k // len(DEMO_CLASSES)) % len(colours)], DEMO_CLASSES[k % len(DEMO_CLASSES)])
            for k in range(n_classes)]


def _draw(rng: np.random.Generator, shape: str, hue: float, size: int) -> Image.Image:
    n = size * _SUPERSAMPLE
    bg = Image.new("RGB", (n, n), _hsv(rng.random(), rng.uniform(0.0, 0.12), rng.uniform(0.85, 1.0)))
    cx, cy, r, angle = _placement(rng, n)
    colour = _hsv(hue + rng.uniform(-0.02, 0.02), rng.uniform(0.75, 1.0), rng.uniform(0.65, 0.95))
    ImageDraw.Draw(bg).polygon(_outline(shape, cx, cy, r, angle), fill=colour)
    return bg.resize((size, size), Image.Resampling.LANCZOS)


def demo_fewshot(n_classes: int = 20, per_class: int = 20, seed: int = 0, size: int = 64) -> ImageDataset:
    """``per_class`` generated images of each of ``n_classes`` classes named "<colour> <shape>"."""
    limit = len(FEWSHOT_COLOURS) * len(DEMO_CLASSES)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or not 2 <= n_classes <= limit:
        raise ConfigError(f"n_classes must be a whole number from 2 to {limit}.")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError("per_class must be a whole number of at least 1.")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= MAX_SIDE:
        raise ConfigError(f"size must be a whole number of pixels between 16 and {MAX_SIDE}.")
    pairs = fewshot_classes(n_classes)
    images, labels, names = [], [], []
    for label, (colour, shape) in enumerate(pairs):
        for i in range(per_class):
            # one generator per image: more images or more classes never change the first ones
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7, label, i])
            images.append(_draw(rng, shape, FEWSHOT_COLOURS[colour], size))
            labels.append(label)
            names.append(f"{colour}-{shape}-{i + 1:03d}")
    return ImageDataset(images, labels, [f"{c} {s}" for c, s in pairs], names)
