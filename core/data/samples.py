"""Real image sets built from pictures that ship inside scikit-learn and scikit-image (no download).

The generated demo shapes make every setting look perfect; these do not. They are small enough to
train on a laptop CPU in seconds with a frozen backbone, and varied enough to tell defaults apart:

- ``digits``: scikit-learn's 8×8 handwritten digits (10 classes), scaled up; flips change meaning.
- ``faces``: scikit-image's ``lfw_subset``: 25×25 face crops vs other crops of the same photos.
- ``textures``: random patches of scikit-image's brick, grass and gravel photographs.
- ``photos``: random patches of seven colour photographs (astronaut, coffee, cat, rocket, …):
  which photo does a patch come from?
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.data.datasets import ImageDataset
from core.data.multitask import MultiTaskDataset
from core.errors import ConfigError

__all__ = ["SAMPLE_SETS", "sample_dataset", "digits_multitask"]

SAMPLE_SETS = {
    "digits": "Handwritten digits (scikit-learn, 10 classes, grayscale)",
    "faces": "Faces vs other crops (scikit-image lfw_subset, 2 classes, grayscale)",
    "textures": "Brick, grass and gravel patches (scikit-image, 3 classes, grayscale)",
    "photos": "Patches of seven colour photographs (scikit-image, 7 classes)",
}

_TEXTURES = ("brick", "grass", "gravel")
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def _gray_to_rgb(values: np.ndarray, size: int) -> Image.Image:
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(values)
    return Image.fromarray(scaled.astype(np.uint8), "L").resize((size, size), Image.BICUBIC).convert("RGB")


def _patches(image: np.ndarray, n: int, patch: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        y, x = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
        crop = image[y:y + patch, x:x + patch]
        if crop.ndim == 2:
            out.append(_gray_to_rgb(crop, size))
        else:
            out.append(Image.fromarray(np.ascontiguousarray(crop[..., :3]).astype(np.uint8)).resize((size, size),
                                                                                                   Image.BICUBIC))
    return out


def sample_dataset(name: str, per_class: int = 40, seed: int = 0, size: int = 64) -> ImageDataset:
    """``per_class`` images of each class of the named set (see ``SAMPLE_SETS``), ``size`` pixels a side."""
    if name not in SAMPLE_SETS:
        raise ConfigError(f"Unknown sample set {name!r}; choose one of: {', '.join(SAMPLE_SETS)}.")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError("per_class must be a whole number of at least 1.")
    rng = np.random.default_rng(seed)
    items: list[tuple[Image.Image, str, str]] = []
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        for label in range(10):
            chosen = rng.permutation(np.flatnonzero(digits.target == label))[:per_class]
            items += [(_gray_to_rgb(16 - digits.images[i], size), str(label), f"digit-{i}") for i in chosen]
    elif name == "faces":
        from skimage import data

        crops = data.lfw_subset()  # the first 100 are faces, the other 100 are not
        for label, start in (("face", 0), ("not a face", 100)):
            chosen = start + rng.permutation(100)[:per_class]
            items += [(_gray_to_rgb(crops[i], size), label, f"lfw-{i}") for i in chosen]
    else:
        from skimage import data

        sources = _TEXTURES if name == "textures" else _PHOTOS
        for label in sources:
            image = getattr(data, label)()
            patch = min(image.shape[:2]) // 4
            for k, img in enumerate(_patches(image, per_class, patch, size, rng)):
                items.append((img, "cat" if label == "chelsea" else label.replace("_", " "), f"{label}-{k + 1}"))
    return ImageDataset.from_items(items)


def digits_multitask(per_class: int = 30, seed: int = 0, size: int = 64) -> MultiTaskDataset:
    """Real handwriting (scikit-learn's digits, no download) labelled for three tasks: the digit,
    its parity, and whether it is below five; a related-tasks set where sharing could help."""
    ds = sample_dataset("digits", per_class=per_class, seed=seed, size=size)
    digits = [int(ds.classes[y]) for y in ds.labels]
    tasks = {"digit": [str(d) for d in range(10)], "parity": ["even", "odd"], "magnitude": ["0-4", "5-9"]}
    labels = {"digit": digits, "parity": [d % 2 for d in digits], "magnitude": [int(d >= 5) for d in digits]}
    return MultiTaskDataset(ds.images, tasks, labels, ds.names)
