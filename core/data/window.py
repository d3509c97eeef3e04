"""The window that turns an image of more than 8 bits into what the model sees.

X-ray, CT and microscopy images hold 12 to 16 bits (or floats) per pixel. A dataset keeps them at
full depth, as grayscale ``"F"`` (float32) images, and maps them onto 0..255 only through its
``Window``: values at ``low`` and below become black, at ``high`` and above white, linearly between.
By default a dataset's window spans the 0.5–99.5 percentiles of all its full-depth pixels, so a
few hot or dead pixels do not squeeze everything else into a few grey levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["Window", "DEFAULT_PERCENTILES", "default_window", "apply_window", "pixel_sample", "histogram",
           "is_full_depth"]

DEFAULT_PERCENTILES = (0.5, 99.5)
# Percentiles and histograms read at most this many pixels of a dataset, spread evenly over its
# images: exact enough for a window, and a few milliseconds for a dataset of thousands of images.
_SAMPLE_PIXELS = 2_000_000


@dataclass(frozen=True)
class Window:
    """A linear window: ``low`` maps to 0 (black), ``high`` to 255 (white)."""

    low: float
    high: float

    def __post_init__(self):
        low, high = float(self.low), float(self.high)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("a window's ends must be finite numbers")
        if high <= low:  # a flat image: centre it at mid-grey rather than divide by zero
            low, high = low - 0.5, low + 0.5
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @classmethod
    def from_centre_width(cls, centre: float, width: float) -> Window:
        """DICOM's way of saying it: the value shown mid-grey, and the range shown at all."""
        half = max(float(width), 1e-6) / 2
        return cls(float(centre) - half, float(centre) + half)

    @property
    def centre(self) -> float:
        return (self.low + self.high) / 2

    @property
    def width(self) -> float:
        return self.high - self.low


def is_full_depth(img: Image.Image) -> bool:
    """Whether an image is held at full depth (grayscale float32), i.e. needs a window to be seen."""
    return img.mode == "F"


def pixel_sample(images: Sequence[Image.Image]) -> np.ndarray:
    """Finite pixel values of full-depth images, an evenly spread sample of at most ~2 million."""
    total = sum(img.size[0] * img.size[1] for img in images)
    if total == 0:
        return np.empty(0, np.float32)
    step = max(1, math.ceil(total / _SAMPLE_PIXELS))
    parts = [np.asarray(img, np.float32).ravel()[::step] for img in images]
    values = np.concatenate(parts)
    return values[np.isfinite(values)]


def default_window(images: Sequence[Image.Image]) -> Window | None:
    """The 0.5–99.5 percentile window of these full-depth images; None when there are none."""
    values = pixel_sample(images)
    if values.size == 0:
        return None if not images else Window(0.0, 1.0)
    low, high = np.percentile(values, DEFAULT_PERCENTILES)
    return Window(float(low), float(high))


def apply_window(img: Image.Image, window: Window) -> Image.Image:
    """A full-depth image as the RGB image the model reads (and the pages show) under ``window``."""
    values = np.asarray(img, np.float32)
    scaled = (values - np.float32(window.low)) * np.float32(255.0 / window.width)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def histogram(images: Sequence[Image.Image], bins: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of the full-depth pixel values (from the same sample as the window)."""
    values = pixel_sample(images)
    if values.size == 0:
        return np.zeros(bins, np.int64), np.linspace(0.0, 1.0, bins + 1)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = lo - 0.5, lo + 0.5
    return np.histogram(values, bins=bins, range=(lo, hi))
