"""Generated image sets, no download: shapes in two looks (a domain shift), shapes in many colours
(few-shot classes), and shapes labelled for three tasks at once (multi-task).

Position, size, rotation and colour vary; the same seed gives the same pixels, and asking for more
images never changes the first ones (one random generator per image).
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

from core.data import limits
from core.data.datasets import ImageDataset
from core.data.multitask import MultiTaskDataset
from core.errors import ConfigError

__all__ = ["DEMO_CLASSES", "DEMO_DOMAINS", "DEMO_TASKS", "FEWSHOT_COLOURS", "demo_dataset", "demo_fewshot",
           "demo_multitask", "fewshot_classes"]

DEMO_CLASSES = ("circle", "square", "star", "triangle")
DEMO_DOMAINS = ("source", "target")
_SUPERSAMPLE = 2


def demo_dataset(
    domain: str = "source", per_class: int = 20, seed: int = 0, size: int = 96
) -> ImageDataset:
    """Generated shapes, no download: four classes in two looks that differ (a domain shift).

    ``"source"``: filled shapes in saturated colours on light plain or gradient backgrounds.
    ``"target"``: the same shapes as outlines in pale colours on dark, noisy, cluttered
    backgrounds. Position, size, rotation and colour vary; the same seed gives the same pixels.
    """
    if domain not in DEMO_DOMAINS:
        raise ConfigError(f"Unknown demo domain {domain!r}; choose one of: {', '.join(DEMO_DOMAINS)}.")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError("per_class must be a whole number of at least 1.")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= limits.MAX_SIDE:
        raise ConfigError(f"size must be a whole number of pixels between 16 and {limits.MAX_SIDE}.")
    draw = _draw_source if domain == "source" else _draw_target
    domain_id = DEMO_DOMAINS.index(domain)
    images, labels, names = [], [], []
    for label, shape in enumerate(DEMO_CLASSES):
        for i in range(per_class):
            # One generator per image: asking for more images never changes the first ones.
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, domain_id, label, i])
            images.append(draw(rng, shape, size))
            labels.append(label)
            names.append(f"{domain}-{shape}-{i + 1:03d}")
    return ImageDataset(images, labels, DEMO_CLASSES, names)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape of circumradius ``r``, rotated by ``angle`` radians."""
    if shape == "circle":
        count, radii = 48, [r]
    elif shape == "square":
        count, radii = 4, [r]
    elif shape == "triangle":
        count, radii = 3, [r * 1.1]
    else:  # star
        count, radii = 10, [r * 1.1, r * 0.45]
    return [
        (cx + radii[k % len(radii)] * math.cos(angle + 2 * math.pi * k / count),
         cy + radii[k % len(radii)] * math.sin(angle + 2 * math.pi * k / count))
        for k in range(count)
    ]


def _placement(rng: np.random.Generator, n: int) -> tuple[float, float, float, float]:
    r = rng.uniform(0.17, 0.36) * n
    margin = r * 1.1
    cx = rng.uniform(margin, n - margin)
    cy = rng.uniform(margin, n - margin)
    return cx, cy, r, rng.uniform(0, 2 * math.pi)


def _draw_source(rng: np.random.Generator, shape: str, size: int) -> Image.Image:
    n = size * _SUPERSAMPLE
    a = _hsv(rng.random(), rng.uniform(0.05, 0.25), rng.uniform(0.88, 1.0))
    if rng.random() < 0.5:
        bg = Image.new("RGB", (n, n), a)
    else:
        b = _hsv(rng.random(), rng.uniform(0.05, 0.25), rng.uniform(0.85, 1.0))
        t = np.linspace(0.0, 1.0, n)[:, None, None]
        grad = np.broadcast_to((1 - t) * np.array(a) + t * np.array(b), (n, n, 3))
        if rng.random() < 0.5:
            grad = grad.transpose(1, 0, 2)
        bg = Image.fromarray(np.ascontiguousarray(grad).astype(np.uint8), "RGB")
    cx, cy, r, angle = _placement(rng, n)
    colour = _hsv(rng.random(), rng.uniform(0.75, 1.0), rng.uniform(0.6, 0.95))
    ImageDraw.Draw(bg).polygon(_outline(shape, cx, cy, r, angle), fill=colour)
    return bg.resize((size, size), Image.Resampling.LANCZOS)


def _draw_target(rng: np.random.Generator, shape: str, size: int) -> Image.Image:
    n = size * _SUPERSAMPLE
    base = np.array(_hsv(rng.uniform(0.55, 0.8), rng.uniform(0.3, 0.7), rng.uniform(0.08, 0.22)))
    grain = rng.standard_normal((n // 4 + 1, n // 4 + 1, 3), dtype=np.float32) * 22.0
    noise = grain.repeat(4, axis=0).repeat(4, axis=1)[:n, :n]  # coarse grain, like sensor noise
    noise += rng.standard_normal((n, n, 3), dtype=np.float32) * 10.0
    bg = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(4, 9))):  # clutter: short strokes and dots
        x, y = rng.uniform(0, n, 2)
        length, theta = rng.uniform(0.05, 0.2) * n, rng.uniform(0, 2 * math.pi)
        tone = _hsv(rng.random(), rng.uniform(0.2, 0.5), rng.uniform(0.3, 0.55))
        if rng.random() < 0.6:
            end = (x + length * math.cos(theta), y + length * math.sin(theta))
            draw.line([(x, y), end], fill=tone, width=max(1, n // 64))
        else:
            d = rng.uniform(0.01, 0.03) * n
            draw.ellipse([x - d, y - d, x + d, y + d], fill=tone)
    cx, cy, r, angle = _placement(rng, n)
    colour = _hsv(rng.uniform(0.1, 0.55), rng.uniform(0.25, 0.6), rng.uniform(0.85, 1.0))
    points = _outline(shape, cx, cy, r, angle)
    width = max(2, round(r * 0.16))
    draw.line(points + points[:2], fill=colour, width=width, joint="curve")
    return bg.resize((size, size), Image.Resampling.LANCZOS)



# --- many classes, for few-shot learning -------------------------------------------------------

# Hues far enough apart that a jitter of ±0.02 never makes one colour look like another.
FEWSHOT_COLOURS = {"red": 0.0, "orange": 0.08, "yellow": 0.16, "green": 0.33, "cyan": 0.5, "blue": 0.62,
                   "purple": 0.75, "pink": 0.9}


def fewshot_classes(n_classes: int) -> list[tuple[str, str]]:
    """The first ``n_classes`` (colour, shape) pairs, in an order that spreads the first few over
    every shape and colour (class k: shape k mod 4, colour (k + k // 4) mod 8; all 32 differ)."""
    colours = list(FEWSHOT_COLOURS)
    return [(colours[(k + k // len(DEMO_CLASSES)) % len(colours)], DEMO_CLASSES[k % len(DEMO_CLASSES)])
            for k in range(n_classes)]


def _draw_fewshot(rng: np.random.Generator, shape: str, hue: float, size: int) -> Image.Image:
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
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= limits.MAX_SIDE:
        raise ConfigError(f"size must be a whole number of pixels between 16 and {limits.MAX_SIDE}.")
    pairs = fewshot_classes(n_classes)
    images, labels, names = [], [], []
    for label, (colour, shape) in enumerate(pairs):
        for i in range(per_class):
            # one generator per image: more images or more classes never change the first ones
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7, label, i])
            images.append(_draw_fewshot(rng, shape, FEWSHOT_COLOURS[colour], size))
            labels.append(label)
            names.append(f"{colour}-{shape}-{i + 1:03d}")
    return ImageDataset(images, labels, [f"{c} {s}" for c, s in pairs], names)


# --- several labels per image, for multi-task learning ----------------------------------------

# Hues far apart on the colour wheel, and circumradius ranges (fractions of the side) that stay
# apart even after a random crop of 60 % of the image enlarges a shape by up to 1.3×.
_COLOURS = {"red": 0.0, "green": 0.33, "blue": 0.62}
_SIZES = {"small": (0.10, 0.16), "large": (0.30, 0.38)}
DEMO_TASKS = {
    "shape": ["circle", "square", "star", "triangle"],
    "colour": list(_COLOURS),
    "size": list(_SIZES),
}


def demo_multitask(per_class: int = 20, seed: int = 0, size: int = 96) -> MultiTaskDataset:
    """Generated shapes labelled for three tasks at once: shape, colour and size, no download.

    ``per_class`` images of each shape; colour and size cycle independently of the shape, so every
    task is balanced and no task's label gives another's away. The same seed gives the same pixels.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError("per_class must be a whole number of at least 1.")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= limits.MAX_SIDE:
        raise ConfigError(f"size must be a whole number of pixels between 16 and {limits.MAX_SIDE}.")
    images, names = [], []
    labels: dict[str, list[int]] = {t: [] for t in DEMO_TASKS}
    n_col, n_size = len(_COLOURS), len(_SIZES)
    for s, shape in enumerate(DEMO_TASKS["shape"]):
        for i in range(per_class):
            # the combination cycles with i, shifted by the shape, so all pairs of tasks are balanced
            c = (i + s) % n_col
            z = (i // n_col + s) % n_size
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7, s, i])
            images.append(_draw_multitask(rng, shape, DEMO_TASKS["colour"][c], DEMO_TASKS["size"][z], size))
            labels["shape"].append(s)
            labels["colour"].append(c)
            labels["size"].append(z)
            names.append(f"{DEMO_TASKS['size'][z]}-{DEMO_TASKS['colour'][c]}-{shape}-{i + 1:03d}")
    return MultiTaskDataset(images, DEMO_TASKS, labels, names)


def _draw_multitask(rng: np.random.Generator, shape: str, colour: str, size_class: str, size: int) -> Image.Image:
    """A filled shape of a given colour family and size on a light plain background (the demo's look)."""
    n = size * _SUPERSAMPLE
    bg = Image.new("RGB", (n, n), _hsv(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)))
    lo, hi = _SIZES[size_class]
    r = rng.uniform(lo, hi) * n
    margin = r * 1.1
    cx, cy = rng.uniform(margin, n - margin), rng.uniform(margin, n - margin)
    hue = _COLOURS[colour] + rng.uniform(-0.03, 0.03)
    fill = _hsv(hue, rng.uniform(0.8, 1.0), rng.uniform(0.65, 0.95))
    ImageDraw.Draw(bg).polygon(_outline(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=fill)
    return bg.resize((size, size), Image.Resampling.LANCZOS)

