"""Single image files a person brings (uploads, webcam frames): decoded, checked, added to a class."""

from __future__ import annotations

from PIL import Image

from core.data import limits
from core.data.datasets import ImageDataset, LoadReport
from core.data.images import BudgetExceeded, PixelBudget, decode, image_digest, skip_reason
from core.data.names import clean_class_name
from core.errors import DataError

__all__ = ["load_images", "add_images"]


def load_images(
    files: list[tuple[str, bytes]], class_name: str
) -> tuple[list[Image.Image], LoadReport]:
    """Decode single uploads meant for ``class_name``; unreadable files are skipped, not fatal."""
    class_name = clean_class_name(class_name)
    files = list(files)
    if len(files) > limits.MAX_ENTRIES:
        raise DataError(f"Upload at most {limits.MAX_ENTRIES} images at a time.")
    budget = PixelBudget(limits.MAX_TOTAL_PIXELS)
    report = LoadReport()
    images = []
    for name, data in files:
        try:
            images.append(decode(data, name, budget))
        except BudgetExceeded:
            raise
        except DataError as e:
            report.skipped.append((name, skip_reason(e, name)))
    report.loaded = len(images)
    if files and not images:
        report.warnings.append(f"None of the {len(files)} files could be used for {class_name!r}.")
    return images, report


def add_images(
    ds: ImageDataset, files: list[tuple[str, bytes]], class_name: str
) -> tuple[ImageDataset, LoadReport]:
    """``ds`` with exactly these files added to ``class_name``, each image at most once.

    A file that is already in the dataset (the same pixels) is not added again: in another class
    it gets a warning, since one image cannot be two things; unreadable files are skipped. The
    images keep their file names. Nothing usable raises `DataError`, and ``ds`` is never changed.
    """
    class_name = clean_class_name(class_name)
    files = list(files)
    if len(files) > limits.MAX_ENTRIES:
        raise DataError(f"Upload at most {limits.MAX_ENTRIES} images at a time.")
    held = {}
    for img, label in ds:
        held.setdefault(image_digest(img), ds.classes[label])
    budget = PixelBudget(limits.MAX_TOTAL_PIXELS)
    report = LoadReport()
    images, names, seen = [], [], set()
    for name, payload in files:
        try:
            img = decode(payload, name, budget)
        except BudgetExceeded:
            raise
        except DataError as e:
            report.skipped.append((name, skip_reason(e, name)))
            continue
        digest = image_digest(img)
        if digest in seen:
            report.skipped.append((name, "the same image is already in this upload"))
        elif held.get(digest) == class_name:
            report.skipped.append((name, f"already in {class_name!r}"))
        elif digest in held:
            report.skipped.append((name, f"already in class {held[digest]!r}"))
            report.warnings.append(
                f"{name!r} is already in class {held[digest]!r}, so it was not added to "
                f"{class_name!r}: an image can belong to one class only. Remove it there first "
                "if it was put in the wrong class."
            )
        else:
            seen.add(digest)
            images.append(img)
            names.append(name)
    report.loaded = len(images)
    if not images:
        reasons = "; ".join(f"{n}: {r}" for n, r in report.skipped[:3]) or "no files were given"
        raise DataError(f"Nothing was added to {class_name!r} ({reasons}).")
    return ds.with_images(images, class_name, names), report
