"""Single image files a person brings (uploads, webcam frames): decoded, checked, added to a class."""

from __future__ import annotations

from PIL import Image

from core.data import limits
from core.data.datasets import ImageDataset, LoadReport
from core.data.images import BudgetExceeded, Upload, decode_file, frame_name, image_digest, skip_reason
from core.data.names import clean_class_name
from core.errors import DataError

__all__ = ["load_images", "add_images"]


def _decoded(files: list[tuple[str, bytes]], report: LoadReport, frames: str):
    """Each readable picture of the files as ``(image, name)``; the others go to ``report.skipped``."""
    upload = Upload(frames)
    for name, data in files:
        try:
            pictures = decode_file(data, name, upload)
        except BudgetExceeded:
            raise
        except DataError as e:
            report.skipped.append((name, skip_reason(e, name)))
            continue
        for img, frame in pictures:
            yield img, frame_name(name, frame)
    report.notes += upload.dicom.notes()


def load_images(
    files: list[tuple[str, bytes]], class_name: str, frames: str = "middle"
) -> tuple[list[Image.Image], LoadReport]:
    """Decode single uploads meant for ``class_name``; unreadable files are skipped, not fatal.

    Images of more than 8 bits come back at full depth (``"F"``); ``frames`` as for ``load_zip``."""
    class_name = clean_class_name(class_name)
    files = list(files)
    if len(files) > limits.MAX_ENTRIES:
        raise DataError(f"Upload at most {limits.MAX_ENTRIES} images at a time.")
    report = LoadReport()
    images = [img for img, _ in _decoded(files, report, frames)]
    report.loaded = len(images)
    if files and not images:
        report.warnings.append(f"None of the {len(files)} files could be used for {class_name!r}.")
    return images, report


def add_images(
    ds: ImageDataset, files: list[tuple[str, bytes]], class_name: str, frames: str = "middle"
) -> tuple[ImageDataset, LoadReport]:
    """``ds`` with exactly these files added to ``class_name``, each image at most once.

    A file that is already in the dataset (the same pixels) is not added again: in another class
    it gets a warning, since one image cannot be two things; unreadable files are skipped. The
    images keep their file names (a multi-frame DICOM's frames say which frame they are; ``frames``
    as for ``load_zip``). Nothing usable raises `DataError`, and ``ds`` is never changed.
    """
    class_name = clean_class_name(class_name)
    files = list(files)
    if len(files) > limits.MAX_ENTRIES:
        raise DataError(f"Upload at most {limits.MAX_ENTRIES} images at a time.")
    held = {}
    for i, (img, label) in enumerate(ds):
        # full-depth images compare at full depth: their windowed views change with the window
        full = ds.full_depth_image(i)
        held.setdefault(image_digest(full if full is not None else img), ds.classes[label])
    report = LoadReport()
    images, names, seen = [], [], set()
    for img, name in _decoded(files, report, frames):
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
