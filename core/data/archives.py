"""ZIP archives of images, read in memory and never extracted: ``load_zip``.

Layout: one folder per class (``cats/1.jpg``, ``dogs/2.png``). A single folder wrapping
everything (``pets/cats/1.jpg``) is descended into, repeatedly if one folder wraps another.
Images in sub-folders of a class folder (``cats/indoor/1.jpg``) belong to the first-level
folder (``cats``), and the report says so. A ZIP holding a ``labels.csv`` is read as a
multi-task dataset instead (``core.data.labels_csv``); both go through the same entry checks
and decoding (``core.data.entries``).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from core.data import limits
from core.data.datasets import ImageDataset, LoadReport
from core.data.entries import (
    Entry,
    check_directory_size,
    decode_entries,
    display_name,
    entry_problem,
    extension,
    is_junk,
    mark_images,
    safe_parts,
    skipped_hint,
    too_many_entries,
)
from core.data.images import IMAGE_EXTENSIONS
from core.data.labels_csv import is_labelled_archive, load_labelled_archive
from core.data.names import human_bytes, normalise_name, sorted_names
from core.errors import DataError

__all__ = ["load_zip"]

_LAYOUT_HINT = (
    "The ZIP needs one folder per class, e.g. cats/…, dogs/…, each holding that class's images "
    "(one folder around them all is fine)."
)


def load_zip(source: bytes | str | Path, frames: str = "middle"):
    """Read a ZIP with one folder per class (or a ``labels.csv``) into a dataset, in memory.

    Returns ``(ImageDataset, LoadReport)``, or a ``MultiTaskDataset`` for a ZIP with a
    ``labels.csv``. Unsafe, unreadable or irrelevant entries are skipped with a reason; an archive
    that cannot be used at all raises `DataError`. ``frames`` says what a multi-frame DICOM gives:
    its ``"middle"`` frame, or ``"each"`` frame as an image of its own.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp = io.BytesIO(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"There is no file called {path.name}.")
        fp = path.open("rb")
    elif hasattr(source, "read") and hasattr(source, "seek"):
        fp = source
    else:
        raise TypeError("load_zip expects bytes, a path or a binary file")
    try:
        check_directory_size(fp)
        try:
            zf = zipfile.ZipFile(fp)
        except Exception:  # zipfile raises many kinds on hostile bytes; all mean "unusable"
            raise DataError(
                "This file is not a readable ZIP archive (it may be damaged or another format). "
                "Create it again with your system's 'Compress' command."
            ) from None
        with zf:
            return _load_archive(zf, frames)
    finally:
        if fp is not source:
            fp.close()


def _load_archive(zf: zipfile.ZipFile, frames: str):
    infos = zf.infolist()
    if len(infos) > limits.MAX_ENTRIES:
        raise too_many_entries(len(infos))
    if is_labelled_archive(zf):  # several labels per image, from labels.csv
        return load_labelled_archive(zf, frames)
    report = LoadReport()
    files, folders = _scan(infos, report)
    mark_images(zf, files)
    planned, seen_folders, nested = _plan_classes(files, folders, report)
    total = sum(entry.info.file_size for entry, _ in planned)
    if total > limits.MAX_TOTAL_UNCOMPRESSED:
        raise DataError(
            f"Unpacked, this ZIP would be {human_bytes(total)}; at most "
            f"{human_bytes(limits.MAX_TOTAL_UNCOMPRESSED)} is accepted. Use fewer or smaller images."
        )
    items = decode_entries(zf, planned, report, frames=frames)
    return _dataset(items, seen_folders, nested, report), report


def _scan(infos: list[zipfile.ZipInfo], report: LoadReport) -> tuple[list[Entry], list[list[str]]]:
    """The archive's files and folders; entries whose path climbs out of it are skipped."""
    files: list[Entry] = []
    folders: list[list[str]] = []
    for info in infos:
        name = display_name(info)
        parts = safe_parts(name)
        if parts is None:
            report.skipped.append((name, "its path points outside the archive, so it was not read"))
            continue
        if not parts or is_junk(parts):
            continue
        if info.is_dir() or name.replace("\\", "/").endswith("/"):
            folders.append(parts)
            continue
        files.append(Entry(info, name, parts))
    images_named = [e for e in files if extension(e.parts[-1]) in IMAGE_EXTENSIONS]
    judged = images_named or files
    if judged and all(e.info.flag_bits & 0x1 for e in judged):
        raise DataError(
            "Password-protected ZIPs are not supported. Zip the folders again without a password."
        )
    return files, folders


def _plan_classes(files: list[Entry], folders: list[list[str]], report: LoadReport):
    """Each readable image's class (its first folder below the wrapping ones); the folders seen and
    the classes holding images in sub-folders, for the report."""
    prefix = _wrapper([e.parts for e in files if e.image])
    depth = len(prefix)
    planned: list[tuple[Entry, str]] = []
    seen_folders = {normalise_name(p[depth]) for p in folders if len(p) > depth and p[:depth] == prefix}
    nested: set[str] = set()
    for entry in files:
        inner = entry.parts[depth:] if entry.parts[:depth] == prefix else []
        class_name = normalise_name(inner[0]) if len(inner) >= 2 else None
        if class_name is not None:
            seen_folders.add(class_name)
        reason = entry_problem(entry)
        if reason is None and class_name is None:
            reason = "it is not inside a class folder"
        elif reason is None and not class_name:
            reason = "its folder name is blank"
        if reason is not None:
            report.skipped.append((entry.name, reason))
            continue
        planned.append((entry, class_name))
        if len(inner) > 2:
            nested.add(class_name)
    return planned, seen_folders, nested


def _dataset(items: list, seen_folders: set[str], nested: set[str], report: LoadReport) -> ImageDataset:
    """The dataset of the decoded images, classes sorted by name; folders left empty are reported."""
    found = {class_name for _, class_name, _ in items}
    for folder in sorted_names(seen_folders - found):
        if folder:
            report.warnings.append(
                f"Folder {folder!r} has no usable images, so it is not a class."
            )
    for folder in sorted_names(nested & found):
        report.warnings.append(
            f"Images in sub-folders of {folder!r} were put in class {folder!r}."
        )
    if len(found) < 2:
        raise DataError(f"Found {len(found)} class{'es' if len(found) != 1 else ''} with usable "
                        f"images, but training needs at least two. {_LAYOUT_HINT}"
                        + skipped_hint(report))
    classes = sorted_names(found)
    order = {c: i for i, c in enumerate(classes)}
    items.sort(key=lambda item: order[item[1]])  # stable: archive order within a class
    report.loaded = len(items)
    return ImageDataset.from_items(items, classes=classes)


def _wrapper(paths: list[list[str]]) -> list[str]:
    """The folders wrapping the class folders: descend while the images inside folders all
    share one folder and some of them sit one level deeper, in what would be class folders."""
    prefix: list[str] = []
    while len(prefix) < 8:
        d = len(prefix)
        inside = [p for p in paths if len(p) > d + 1 and p[:d] == prefix]
        shared = {p[d] for p in inside}
        if len(shared) != 1 or not any(len(p) > d + 2 for p in inside):
            break
        prefix.append(shared.pop())
    return prefix
