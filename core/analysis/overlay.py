"""A saliency map laid over the image it explains, in a perceptually ordered colormap."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from core.errors import ConfigError, DataError

__all__ = ["overlay"]

# A perceptually ordered dark-to-bright colormap in the spirit of "inferno", as anchor colours.
_COLORMAP = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def _colormap(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] to [H, W, 3] float RGB in [0, 255]."""
    positions = np.linspace(0.0, 1.0, len(_COLORMAP))
    return np.stack([np.interp(values, positions, _COLORMAP[:, c]) for c in range(3)], axis=-1)


def _resize(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(saliency, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay(image_rgb: np.ndarray, saliency: np.ndarray, opacity: float = 0.5,
            percentile: float = 99.0) -> np.ndarray:
    """The image with the map blended over it as a heat map: uint8 [H, W, 3].

    The map is scaled so its ``percentile``-th value is full brightness, which keeps a few
    extreme pixels from washing out the rest; a map of another size is resized to the image.
    """
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"The image must be an RGB array of shape [H, W, 3]; got {image.shape}.")
    if not 0.0 <= float(opacity) <= 1.0:
        raise ConfigError(f"Opacity must be between 0 and 1; got {opacity}.")
    sal = np.nan_to_num(np.asarray(saliency, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if sal.ndim != 2:
        raise DataError(f"The saliency map must have shape [H, W]; got {sal.shape}.")
    if sal.shape != image.shape[:2]:
        sal = _resize(sal, image.shape[:2])
    sal = np.clip(sal, 0.0, None)
    scale = float(np.percentile(sal, percentile)) if sal.size else 0.0
    if scale <= 0:
        scale = float(sal.max()) if sal.size else 0.0
    norm = np.clip(sal / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(sal)
    heat = _colormap(norm)
    base = image.astype(np.float32)
    if image.dtype != np.uint8 and base.max(initial=0.0) <= 1.0:
        base = base * 255.0
    blended = (1.0 - opacity) * base + opacity * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
