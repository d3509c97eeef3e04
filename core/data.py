"""Images in, datasets out: safe decoding of uploads and ZIPs, generated demo data, splits.

Every image, whatever its source, goes through `open_image`: an allow-list of formats, a pixel
cap read from the header before anything is decoded, every colour mode turned into RGB, EXIF
orientation applied and the result downscaled so its longest side is at most `MAX_SIDE`.
Datasets hold those small decoded images in memory, so training never reopens a file.

ZIP layout: one folder per class (``cats/1.jpg``, ``dogs/2.png``). A single folder wrapping
everything (``pets/cats/1.jpg``) is descended into, repeatedly if one folder wraps another.
Images in sub-folders of a class folder (``cats/indoor/1.jpg``) belong to the first-level
folder (``cats``), and the report says so. Archives are read in memory, never extracted.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import operator
import re
import stat
import struct
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from core.errors import ConfigError, DataError

__all__ = [
    "MAX_SIDE",
    "MAX_IMAGE_PIXELS",
    "MAX_TOTAL_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_ENTRIES",
    "MAX_TOTAL_UNCOMPRESSED",
    "MAX_COMPRESSION_RATIO",
    "IMAGE_FORMATS",
    "IMAGE_EXTENSIONS",
    "DEMO_CLASSES",
    "DEMO_DOMAINS",
    "MIN_IMAGES_PER_CLASS",
    "ImageDataset",
    "LoadReport",
    "open_image",
    "load_images",
    "add_images",
    "image_digest",
    "dataset_name",
    "load_zip",
    "demo_dataset",
    "split",
    "check_split",
    "dataset_warnings",
    "grayscale_share",
    "augmentation_note",
]

# --- limits --------------------------------------------------------------------------------
# Module constants, read at call time, so a deployment (or a test) can change them.

MAX_SIDE = 512  # longest side of an image held in memory
MAX_IMAGE_PIXELS = 50_000_000  # one image, from its header, before decoding (48 MP phones fit)
MAX_TOTAL_PIXELS = 400_000_000  # pixels decoded for one upload (JPEGs decode at reduced scale)
MAX_FILE_BYTES = 50 * 2**20  # one image file
MAX_ENTRIES = 20_000  # entries in a ZIP, and images in a dataset
MAX_TOTAL_UNCOMPRESSED = 2 * 2**30  # sum of the declared sizes of the ZIP entries we read
MAX_COMPRESSION_RATIO = 200  # per entry; real photos barely compress, bombs compress ~1000:1
# Below this size an entry cannot do harm whatever its ratio, and flat-colour BMPs compress well.
_RATIO_EXEMPT_BYTES = 2**20
# Bounds the central directory before zipfile parses it (a record is >= 46 bytes + its name).
_MAX_DIRECTORY_BYTES_PER_ENTRY = 512

# Pillow decoders we let near user bytes (multi-picture JPEGs come through the JPEG one).
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
)
_ARCHIVE_EXTENSIONS = (
    ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".lz", ".cab", ".jar",
)
_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
_READ_CHUNK = 1 << 16
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_LAYOUT_HINT = (
    "The ZIP needs one folder per class, e.g. cats/…, dogs/…, each holding that class's images "
    "(one folder around them all is fine)."
)

MIN_IMAGES_PER_CLASS = 5
_IMBALANCE_RATIO = 3.0


# --- dataset -------------------------------------------------------------------------------


class ImageDataset:
    """Labelled RGB images held in memory; every change returns a new dataset.

    ``ds[i]`` gives the stored ``PIL.Image`` itself: treat it as read-only.
    """

    def __init__(
        self,
        images: Sequence[Image.Image] = (),
        labels: Sequence[int] = (),
        classes: Sequence[str] = (),
        names: Sequence[str] | None = None,
    ):
        images = [_normalise(img) for img in images]
        labels = [operator.index(label) for label in labels]
        classes = [str(c) for c in classes]
        if names is None:
            names = [f"image-{i + 1}" for i in range(len(images))]
        names = [str(n) for n in names]
        if not (len(images) == len(labels) == len(names)):
            raise ValueError("images, labels and names must have the same length")
        if len(set(classes)) != len(classes):
            raise DataError("Two classes have the same name; give every class its own name.")
        if any(not 0 <= label < len(classes) for label in labels):
            raise ValueError("every label must index into classes")
        self._images = tuple(images)
        self._labels = tuple(labels)
        self._classes = tuple(classes)
        self._names = tuple(names)
        self._fingerprint: str | None = None

    @classmethod
    def from_items(
        cls, items: Iterable[tuple], classes: Sequence[str] | None = None
    ) -> "ImageDataset":
        """Build from ``(image, class_name)`` or ``(image, class_name, name)`` tuples.

        Classes are sorted by name unless ``classes`` gives their order.
        """
        items = list(items)
        found = {_clean_class_name(item[1]) for item in items}
        order = list(classes) if classes is not None else _sorted_names(found)
        missing = found - set(order)
        if missing:
            raise DataError(f"Class {sorted(missing)[0]!r} is not among the dataset's classes.")
        index = {c: i for i, c in enumerate(order)}
        names = [
            item[2] if len(item) > 2 else f"{_clean_class_name(item[1])}-{k + 1}"
            for k, item in enumerate(items)
        ]
        return cls(
            [item[0] for item in items],
            [index[_clean_class_name(item[1])] for item in items],
            order,
            names,
        )

    # --- read access ---

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def labels(self) -> list[int]:
        return list(self._labels)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def images(self) -> list[Image.Image]:
        return list(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        i = operator.index(i)
        return self._images[i], self._labels[i]

    def __iter__(self):
        return iter(zip(self._images, self._labels))

    def __repr__(self) -> str:
        return f"ImageDataset({len(self._classes)} classes, {len(self)} images)"

    def counts(self) -> dict[str, int]:
        """Images per class, in class order (classes with no image included)."""
        result = dict.fromkeys(self._classes, 0)
        for label in self._labels:
            result[self._classes[label]] += 1
        return result

    @property
    def fingerprint(self) -> str:
        """A hash of the classes, labels and pixels: equal datasets share it, any change alters it."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr(self._classes).encode("utf-8"))
            for img, label in zip(self._images, self._labels):
                h.update(struct.pack("<iII", label, *img.size))
                h.update(img.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # --- new datasets ---

    def subset(self, indices: Iterable[int]) -> "ImageDataset":
        """The images at ``indices`` (in that order), keeping every class."""
        idx = [operator.index(i) for i in indices]
        return ImageDataset(
            [self._images[i] for i in idx],
            [self._labels[i] for i in idx],
            self._classes,
            [self._names[i] for i in idx],
        )

    def with_images(
        self,
        images: Sequence[Image.Image],
        class_name: str,
        names: Sequence[str] | None = None,
    ) -> "ImageDataset":
        """A new dataset with ``images`` added to ``class_name``; a new class goes last."""
        class_name = _clean_class_name(class_name)
        # Copies: the caller may go on drawing on its own images.
        images = [_normalise(img).copy() for img in images]
        if len(self) + len(images) > MAX_ENTRIES:
            raise DataError(
                f"A dataset can hold at most {MAX_ENTRIES} images; remove some before adding more."
            )
        classes = list(self._classes)
        if class_name not in classes:
            classes.append(class_name)
        label = classes.index(class_name)
        if names is None:
            start = self.counts().get(class_name, 0)
            names = [f"{class_name}-{start + k + 1}" for k in range(len(images))]
        elif len(names) != len(images):
            raise ValueError("names must match images")
        return ImageDataset(
            list(self._images) + images,
            list(self._labels) + [label] * len(images),
            classes,
            list(self._names) + list(names),
        )

    def without_class(self, name: str) -> "ImageDataset":
        """A new dataset without class ``name`` and its images."""
        if name not in self._classes:
            raise DataError(f"There is no class called {name!r}.")
        gone = self._classes.index(name)
        keep = [i for i, label in enumerate(self._labels) if label != gone]
        return ImageDataset(
            [self._images[i] for i in keep],
            [label - (label > gone) for label in (self._labels[i] for i in keep)],
            [c for c in self._classes if c != name],
            [self._names[i] for i in keep],
        )

    def merge(self, other: "ImageDataset") -> "ImageDataset":
        """Both datasets' images; classes matched by name, ``other``'s new classes go last."""
        if len(self) + len(other) > MAX_ENTRIES:
            raise DataError(f"A dataset can hold at most {MAX_ENTRIES} images.")
        classes = list(self._classes) + [c for c in other._classes if c not in self._classes]
        index = {c: i for i, c in enumerate(classes)}
        return ImageDataset(
            list(self._images) + list(other._images),
            list(self._labels) + [index[other._classes[label]] for label in other._labels],
            classes,
            list(self._names) + list(other._names),
        )


@dataclass
class LoadReport:
    """What happened to each file of an upload: how many loaded, what was skipped and why."""

    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry name, reason)
    warnings: list[str] = field(default_factory=list)


# --- decoding ------------------------------------------------------------------------------


class _PixelBudget:
    """Decoded pixels left for one upload; running out fails the whole upload."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, pixels: int) -> None:
        if self.used + pixels > self.limit:
            raise _BudgetExceeded(
                f"These images add up to more than {self.limit / 1e6:g} megapixels. "
                "Use fewer or smaller images: about 1000 pixels on the long side is plenty."
            )
        self.used += pixels


class _BudgetExceeded(DataError):
    pass


def open_image(data: bytes, name: str = "") -> Image.Image:
    """Decode one image file into an RGB image whose longest side is at most `MAX_SIDE`.

    Raises `DataError` for anything that is not a readable image in an allowed format, a
    truncated file, or an image with more than `MAX_IMAGE_PIXELS` pixels.
    """
    return _decode(data, name, None)


def _decode(data: bytes, name: str, budget: _PixelBudget | None) -> Image.Image:
    label = f"{name!r}" if name else "This file"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("open_image expects the file's bytes")
    if len(data) == 0:
        raise DataError(f"{label} is empty.")
    if len(data) > MAX_FILE_BYTES:
        raise DataError(
            f"{label} is {_human_bytes(len(data))}; images up to "
            f"{_human_bytes(MAX_FILE_BYTES)} are accepted."
        )
    # Pillow's bomb warning becomes an error; the header check below is the real guard,
    # since warning filters are process-wide and another thread may be changing them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hostile files must not flood the server's log
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(label) from None
        except Exception:  # any parser failure on hostile bytes means "not an image we read"
            raise DataError(
                f"{label} is not an image this app can read. "
                "Use JPEG, PNG, GIF, BMP, WEBP or TIFF files."
            ) from None
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise DataError(f"{label} has no pixels.")
            if width * height > MAX_IMAGE_PIXELS:
                raise _too_many_pixels(label)
            try:
                if img.format in ("JPEG", "MPO"):
                    # Decode big JPEGs at 1/2, 1/4 or 1/8 scale: much faster, less memory.
                    img.draft(img.mode, (MAX_SIDE, MAX_SIDE))
                if budget is not None:
                    budget.take(img.size[0] * img.size[1])
                img.load()
            except _BudgetExceeded:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise _too_many_pixels(label) from None
            except Exception:
                raise DataError(
                    f"{label} is damaged or cut short and cannot be read; export it again."
                ) from None
            orientation = _orientation(img)
            rgb = _to_rgb(img, label)
    rgb.thumbnail((MAX_SIDE, MAX_SIDE))
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    if transpose is not None:
        rgb = rgb.transpose(transpose)
    return rgb


def _too_many_pixels(label: str) -> DataError:
    return DataError(
        f"{label} has too many pixels (over {MAX_IMAGE_PIXELS / 1e6:g} megapixels); "
        "resize it before uploading."
    )


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block only costs us the orientation
        return 1


def _normalise(img: Image.Image) -> Image.Image:
    """An image given as a PIL object (webcam, code) as RGB, at most `MAX_SIDE` on a side."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(img).__name__}")
    if img.mode == "RGB" and max(img.size) <= MAX_SIDE:
        return img
    rgb = _to_rgb(img, "This image")
    rgb.thumbnail((MAX_SIDE, MAX_SIDE))
    return rgb


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """A new RGB image: transparency composited on white, high bit depths scaled, not clipped."""
    try:
        return _convert(img)
    except DataError:
        raise
    except Exception:  # Pillow refuses some odd mode and metadata combinations
        raise DataError(
            f"{label} uses colour mode {img.mode}, which this app cannot convert."
        ) from None


def _convert(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I;16"):
        # The type's full range maps onto 0..255 (Pillow's own convert would clip at 255).
        values = np.asarray(img).astype(np.uint32)
        return _gray((values * 255 + 32767) // 65535)
    if mode == "I":
        values = np.asarray(img).astype(np.int64)
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi <= 255:  # 8-bit data held in 32-bit ints
            return _gray(values)
        if lo >= 0 and hi <= 65535:  # 16-bit data, as many decoders hand it over
            return _gray((values * 255 + 32767) // 65535)
        return _gray(_stretch(values.astype(np.float64)))
    if mode == "F":
        return _gray(_stretch(np.asarray(img).astype(np.float64)))
    if mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if mode == "RGB":
        return img.copy()
    return img.convert("RGB")


def _stretch(values: np.ndarray) -> np.ndarray:
    """Scale by the finite min/max onto 0..255; a flat image stays at its (clipped) level."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape)
    lo, hi = values[finite].min(), values[finite].max()
    values = np.where(finite, values, lo)
    if hi > lo:
        return (values - lo) * (255.0 / (hi - lo))
    return np.clip(values, 0, 255)


def _gray(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")


# --- uploads -------------------------------------------------------------------------------


def load_images(
    files: list[tuple[str, bytes]], class_name: str
) -> tuple[list[Image.Image], LoadReport]:
    """Decode single uploads meant for ``class_name``; unreadable files are skipped, not fatal."""
    class_name = _clean_class_name(class_name)
    files = list(files)
    if len(files) > MAX_ENTRIES:
        raise DataError(f"Upload at most {MAX_ENTRIES} images at a time.")
    budget = _PixelBudget(MAX_TOTAL_PIXELS)
    report = LoadReport()
    images = []
    for name, data in files:
        try:
            images.append(_decode(data, name, budget))
        except _BudgetExceeded:
            raise
        except DataError as e:
            report.skipped.append((name, _reason(e, name)))
    report.loaded = len(images)
    if files and not images:
        report.warnings.append(f"None of the {len(files)} files could be used for {class_name!r}.")
    return images, report


def image_digest(img: Image.Image) -> str:
    """A hash of an image's pixels: the same file decoded twice, or one webcam frame sent twice, share it."""
    img = _normalise(img)
    h = hashlib.blake2b(digest_size=16)
    h.update(struct.pack("<II", *img.size))
    h.update(img.tobytes())
    return h.hexdigest()


def add_images(
    ds: ImageDataset, files: list[tuple[str, bytes]], class_name: str
) -> tuple[ImageDataset, LoadReport]:
    """``ds`` with exactly these files added to ``class_name``, each image at most once.

    A file that is already in the dataset (the same pixels) is not added again: in another class
    it gets a warning, since one image cannot be two things; unreadable files are skipped. The
    images keep their file names. Nothing usable raises `DataError`, and ``ds`` is never changed.
    """
    class_name = _clean_class_name(class_name)
    files = list(files)
    if len(files) > MAX_ENTRIES:
        raise DataError(f"Upload at most {MAX_ENTRIES} images at a time.")
    held = {}
    for img, label in ds:
        held.setdefault(image_digest(img), ds.classes[label])
    budget = _PixelBudget(MAX_TOTAL_PIXELS)
    report = LoadReport()
    images, names, seen = [], [], set()
    for name, payload in files:
        try:
            img = _decode(payload, name, budget)
        except _BudgetExceeded:
            raise
        except DataError as e:
            report.skipped.append((name, _reason(e, name)))
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


def _listed(names: Sequence[str], most: int = 3) -> str:
    """A dataset name's list of classes: the first few, unquoted, and how many more."""
    names = list(names)
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} and {len(names) - most} more"


def dataset_name(classes: Sequence[str], base: str = "", base_classes: Sequence[str] = ()) -> str:
    """A dataset's name that says what it holds.

    ``base`` names the set it started from (the demo set, a ZIP) and ``base_classes`` are that set's
    classes; a dataset of one's own images alone is "Your images (mug, cup)".
    """
    classes = list(classes)
    kept = [c for c in classes if c in set(base_classes)]
    removed = [c for c in base_classes if c not in set(classes)]
    own = [c for c in classes if c not in set(base_classes)]
    part = ""
    if base and kept:
        part = base
        if removed:
            part += f" without {_listed(removed)}" if len(removed) <= len(kept) else f", only {_listed(kept)}"
    if not own:
        return part or "An empty dataset"
    return f"{part} + {_listed(own)}" if part else f"Your images ({_listed(own)})"


def load_zip(source: bytes | str | Path) -> tuple[ImageDataset, LoadReport]:
    """Read a ZIP with one folder per class into a dataset, in memory.

    Unsafe, unreadable or irrelevant entries are skipped with a reason; an archive that cannot
    be used at all raises `DataError`.
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
        _check_directory_size(fp)
        try:
            zf = zipfile.ZipFile(fp)
        except Exception:  # zipfile raises many kinds on hostile bytes; all mean "unusable"
            raise DataError(
                "This file is not a readable ZIP archive (it may be damaged or another format). "
                "Create it again with your system's 'Compress' command."
            ) from None
        with zf:
            return _load_archive(zf)
    finally:
        if fp is not source:
            fp.close()


def _check_directory_size(fp) -> None:
    """Refuse archives whose end record announces too many entries, before zipfile reads them."""
    try:
        fp.seek(0, io.SEEK_END)
        size = fp.tell()
        tail_len = min(size, 22 + 65535)
        fp.seek(size - tail_len)
        tail = fp.read(tail_len)
        pos = tail.rfind(b"PK\x05\x06")
        if pos < 0 or pos + 22 > len(tail):
            return  # zipfile will say it is not a zip
        entries, directory_size = struct.unpack("<HI", tail[pos + 10 : pos + 16])
        if entries == 0xFFFF or directory_size == 0xFFFFFFFF:
            # ZIP64: its own end record sits just before the 20-byte locator, as zipfile reads it.
            record_at = size - tail_len + pos - 20 - 56
            if record_at >= 0:
                fp.seek(record_at)
                record = fp.read(56)
                if record[:4] == b"PK\x06\x06":
                    entries, directory_size = struct.unpack("<QQ", record[32:48])
    except (OSError, struct.error, ValueError):
        return
    finally:
        try:
            fp.seek(0)
        except Exception:
            pass
    if entries > MAX_ENTRIES:
        raise _too_many_entries(entries)
    if directory_size > MAX_ENTRIES * _MAX_DIRECTORY_BYTES_PER_ENTRY:
        raise _too_many_entries(None)


def _too_many_entries(n: int | None) -> DataError:
    held = f"holds {n} entries" if n is not None else "lists too many entries"
    return DataError(
        f"This ZIP {held}; at most {MAX_ENTRIES} are accepted. Use fewer images per class."
    )


@dataclass
class _Entry:
    info: zipfile.ZipInfo
    name: str  # as shown to the person
    parts: list[str]  # path parts, "." and empty parts dropped


def _load_archive(zf: zipfile.ZipFile) -> tuple[ImageDataset, LoadReport]:
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise _too_many_entries(len(infos))
    from core.multitask import is_labelled_archive, load_labelled_archive

    if is_labelled_archive(zf):  # several labels per image, from labels.csv
        return load_labelled_archive(zf)
    report = LoadReport()
    files: list[_Entry] = []
    folders: list[list[str]] = []
    for info in infos:
        name = _display_name(info)
        parts = _safe_parts(name)
        if parts is None:
            report.skipped.append((name, "its path points outside the archive, so it was not read"))
            continue
        if not parts or _is_junk(parts):
            continue
        if info.is_dir() or name.replace("\\", "/").endswith("/"):
            folders.append(parts)
            continue
        files.append(_Entry(info, name, parts))
    images_named = [e for e in files if _extension(e.parts[-1]) in IMAGE_EXTENSIONS]
    judged = images_named or files
    if judged and all(e.info.flag_bits & 0x1 for e in judged):
        raise DataError(
            "Password-protected ZIPs are not supported. Zip the folders again without a password."
        )

    prefix = _wrapper([e.parts for e in images_named])
    depth = len(prefix)
    planned: list[tuple[_Entry, str]] = []
    seen_folders = {_normalise_name(p[depth]) for p in folders if len(p) > depth and p[:depth] == prefix}
    nested: set[str] = set()
    for entry in files:
        inner = entry.parts[depth:] if entry.parts[:depth] == prefix else []
        class_name = _normalise_name(inner[0]) if len(inner) >= 2 else None
        if class_name is not None:
            seen_folders.add(class_name)
        reason = _entry_problem(entry)
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

    total = sum(entry.info.file_size for entry, _ in planned)
    if total > MAX_TOTAL_UNCOMPRESSED:
        raise DataError(
            f"Unpacked, this ZIP would be {_human_bytes(total)}; at most "
            f"{_human_bytes(MAX_TOTAL_UNCOMPRESSED)} is accepted. Use fewer or smaller images."
        )

    budget = _PixelBudget(MAX_TOTAL_PIXELS)
    items = []
    for entry, class_name in planned:
        try:
            data = _read_entry(zf, entry.info)
            items.append((_decode(data, entry.parts[-1], budget), class_name, entry.name))
        except _BudgetExceeded:
            raise
        except DataError as e:
            report.skipped.append((entry.name, _reason(e, entry.parts[-1])))

    found = {class_name for _, class_name, _ in items}
    for folder in _sorted_names(seen_folders - found):
        if folder:
            report.warnings.append(
                f"Folder {folder!r} has no usable images, so it is not a class."
            )
    for folder in _sorted_names(nested & found):
        report.warnings.append(
            f"Images in sub-folders of {folder!r} were put in class {folder!r}."
        )
    if len(found) < 2:
        raise DataError(f"Found {len(found)} class{'es' if len(found) != 1 else ''} with usable "
                        f"images, but training needs at least two. {_LAYOUT_HINT}"
                        + _skipped_hint(report))
    classes = _sorted_names(found)
    order = {c: i for i, c in enumerate(classes)}
    items.sort(key=lambda item: order[item[1]])  # stable: archive order within a class
    report.loaded = len(items)
    return ImageDataset.from_items(items, classes=classes), report


def _display_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    if not info.flag_bits & 0x800:
        # Many tools write UTF-8 names without setting the flag; zipfile read them as cp437.
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    # Names end up in the page and in class names: no control characters.
    return re.sub(r"[\x00-\x1f\x7f]", "?", name)


def _safe_parts(name: str) -> list[str] | None:
    """The path's parts, or None when it is absolute, has a drive letter or climbs out with ..."""
    path = name.replace("\\", "/")
    if path.startswith("/"):
        return None
    parts = path.split("/")
    if re.match(r"^[A-Za-z]:", parts[0]):
        return None
    parts = [p for p in parts if p not in ("", ".")]
    if ".." in parts:
        return None
    return parts


def _is_junk(parts: list[str]) -> bool:
    base = parts[-1]
    return (
        any(p.lower() == "__macosx" for p in parts)
        or base.startswith("._")
        or base.lower() in _JUNK_NAMES
    )


def _extension(filename: str) -> str:
    dot = filename.rfind(".")
    return filename[dot:].lower() if dot > 0 else ""


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


def _entry_problem(entry: _Entry) -> str | None:
    """Why an entry is not read, judged from its directory record alone; None if it is fine."""
    info = entry.info
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "it is a symbolic link; links are not followed"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return "it is not a regular file"
    if info.flag_bits & 0x1:
        return "it is encrypted (password-protected)"
    ext = _extension(entry.parts[-1])
    if ext in _ARCHIVE_EXTENSIONS:
        return "it is an archive inside the archive; unpack it and zip its folders instead"
    if ext not in IMAGE_EXTENSIONS:
        return "it is not an image file (use .jpg, .png, .gif, .bmp, .webp or .tif)"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # bzip2/LZMA decompress a whole chunk at once, unbounded; real image zips use deflate.
        return "it uses an unusual compression method; zip the folders again with standard settings"
    if info.file_size > MAX_FILE_BYTES:
        return (f"it is {_human_bytes(info.file_size)} unpacked; images up to "
                f"{_human_bytes(MAX_FILE_BYTES)} are accepted")
    if info.file_size > _RATIO_EXEMPT_BYTES and (
        info.file_size > MAX_COMPRESSION_RATIO * info.compress_size
    ):
        return (f"it is compressed more than {MAX_COMPRESSION_RATIO}:1, the way zip bombs are; "
                "save genuine images as PNG or JPEG")
    return None


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The entry's bytes, never more than its header declared (or the per-file cap)."""
    limit = min(info.file_size, MAX_FILE_BYTES)
    chunks = []
    got = 0
    try:
        with zf.open(info) as f:
            while True:
                chunk = f.read(min(_READ_CHUNK, limit + 1 - got))
                if not chunk:
                    break
                got += len(chunk)
                if got > limit:
                    raise DataError("it unpacks to more data than its header declares")
                chunks.append(chunk)
    except DataError:
        raise
    except Exception:  # zipfile, zlib and struct all raise on damaged entries
        raise DataError("it is damaged inside the archive and cannot be unpacked") from None
    return b"".join(chunks)


def _reason(error: DataError, filename: str) -> str:
    # Reasons are shown next to the entry name, so drop a leading repeat of the name.
    message = str(error)
    for prefix in (f"{filename!r} ", "This file "):
        if message.startswith(prefix):
            return "it " + message[len(prefix):]
    return message


def _skipped_hint(report: LoadReport) -> str:
    if not report.skipped:
        return ""
    shown = "; ".join(f"{name}: {reason.rstrip('.')}" for name, reason in report.skipped[:3])
    more = len(report.skipped) - 3
    return f" Skipped {len(report.skipped)} file(s) — {shown}" + (f"; and {more} more." if more > 0 else ".")


def _human_bytes(n: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _normalise_name(text: str) -> str:
    """One spelling per name a person sees: composed Unicode (NFC), and no invisible characters.

    Otherwise a decomposed "café", a zero-width space or a right-to-left override would each make
    a class that looks the same as another one but is not.
    """
    text = unicodedata.normalize("NFC", text)
    # Cf: format characters (zero-width spaces and joiners, direction overrides, BOM);
    # Cc: control characters (tabs, newlines) -- neither belongs in a class name.
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc"))
    return text.strip()


def _clean_class_name(name) -> str:
    cleaned = _normalise_name(name) if isinstance(name, str) else ""
    if not cleaned:
        raise DataError("A class needs a name: type one in before adding images.")
    return cleaned


def _sorted_names(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda s: (s.casefold(), s))


# --- demo data -----------------------------------------------------------------------------

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
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= MAX_SIDE:
        raise ConfigError(f"size must be a whole number of pixels between 16 and {MAX_SIDE}.")
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


# --- splits and checks ---------------------------------------------------------------------


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


def _some(names: Sequence[str], shown: int = 5) -> str:
    """A few names, quoted, and how many more: a message stays short with 2,000 classes."""
    listed = ", ".join(repr(n) for n in names[:shown])
    return listed + (f" and {len(names) - shown:,} more" if len(names) > shown else "")


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
        result.append(f"{len(empty):,} classes have no images yet ({_some(empty)}); add some or remove them.")
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
            f"{len(few):,} classes have fewer than {MIN_IMAGES_PER_CLASS} images ({_some(few)})"
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



def demo_fewshot(n_classes: int = 20, per_class: int = 20, seed: int = 0, size: int = 64) -> ImageDataset:
    """Generated shapes in many classes (colour × shape) for few-shot learning; see ``core.fewshot_data``."""
    from core.fewshot_data import demo_fewshot as generate  # here lazily: that module draws with this one's helpers

    return generate(n_classes, per_class, seed, size)


__all__.append("demo_fewshot")


# Several labels per image (core.multitask); load_zip hands ZIPs with a labels.csv over to it.
from core.multitask import LABELS_CSV, MultiTaskDataset, demo_multitask  # noqa: E402

__all__ += ["MultiTaskDataset", "demo_multitask", "LABELS_CSV"]
