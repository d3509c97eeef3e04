"""A labelled set of images held in memory, and the report of how an upload went."""

from __future__ import annotations

import copy
import hashlib
import operator
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from core.data import limits
from core.data.images import normalise_image
from core.data.names import clean_class_name, sorted_names
from core.data.window import Window, apply_window, default_window, is_full_depth
from core.errors import DataError

__all__ = ["HeldImages", "ImageDataset", "LoadReport"]


class HeldImages:
    """What every dataset held in memory shares: its images and their names, in order.

    An image of more than 8 bits is held twice: at full depth (``"F"``) and as the RGB image the
    dataset's ``window`` makes of it, which is what ``ds[i]``, training and every page see. The
    window is the dataset's own, by default the 0.5–99.5 percentiles of all its full-depth pixels.
    """

    _images: tuple[Image.Image, ...]
    _names: tuple[str, ...]
    _full: tuple[Image.Image | None, ...]
    _window: Window | None
    _window_chosen: bool
    _fingerprint: str | None

    def _hold(self, images: Sequence[Image.Image], window: Window | None = None) -> None:
        """Keep normalised images (RGB or ``"F"``), the full-depth ones seen through ``window``, or
        through the default window of this dataset when ``window`` is None."""
        full = tuple(img if is_full_depth(img) else None for img in images)
        depth = [f for f in full if f is not None]
        self._window_chosen = bool(depth) and window is not None
        self._window = (window if window is not None else default_window(depth)) if depth else None
        self._full = full
        self._images = tuple(img if f is None else apply_window(f, self._window)
                             for img, f in zip(images, full, strict=True))

    def _parts(self, idx: Sequence[int]) -> tuple[list[Image.Image], list[Image.Image | None]]:
        return [self._images[i] for i in idx], [self._full[i] for i in idx]

    def _sources(self) -> list[Image.Image]:
        """Each image as it was decoded: at full depth where it has more than 8 bits."""
        return [f if f is not None else img for img, f in zip(self._images, self._full, strict=True)]

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def images(self) -> list[Image.Image]:
        return list(self._images)

    def __len__(self) -> int:
        return len(self._images)

    @property
    def window(self) -> Window | None:
        """The window of the full-depth images; None when every image has 8 bits."""
        return self._window

    @property
    def window_chosen(self) -> bool:
        """Whether the window was set by hand (``with_window``) rather than the default percentiles."""
        return self._window_chosen

    @property
    def full_depth(self) -> list[Image.Image]:
        """The images held at more than 8 bits (``"F"``), in dataset order."""
        return [f for f in self._full if f is not None]

    def full_depth_image(self, i: int) -> Image.Image | None:
        """Image ``i`` at full depth, or None when it has 8 bits."""
        return self._full[operator.index(i)]

    def with_window(self, window: Window | None = None):
        """The same dataset seen through ``window`` (None: back to the default percentiles)."""
        new = copy.copy(self)
        new._hold(self._sources(), window)
        new._fingerprint = None
        return new


class ImageDataset(HeldImages):
    """Labelled RGB images held in memory; every change returns a new dataset.

    ``ds[i]`` gives the stored ``PIL.Image`` itself: treat it as read-only.
    """

    def __init__(
        self,
        images: Sequence[Image.Image] = (),
        labels: Sequence[int] = (),
        classes: Sequence[str] = (),
        names: Sequence[str] | None = None,
        window: Window | None = None,
    ):
        images = [normalise_image(img) for img in images]
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
        self._hold(images, window)
        self._labels = tuple(labels)
        self._classes = tuple(classes)
        self._names = tuple(names)
        self._fingerprint = None

    @classmethod
    def _assemble(cls, views, full, labels, classes, names, window: Window | None, chosen: bool) -> ImageDataset:
        """A dataset of images already seen through ``window`` (taken from another dataset): nothing
        is windowed again, so a split of thousands of images stays instant."""
        new = cls.__new__(cls)
        new._images, new._full = tuple(views), tuple(full)
        new._window, new._window_chosen = window, chosen and any(f is not None for f in full)
        if not any(f is not None for f in full):
            new._window = None
        new._labels, new._classes, new._names = tuple(labels), tuple(classes), tuple(names)
        new._fingerprint = None
        return new

    @classmethod
    def from_items(
        cls, items: Iterable[tuple], classes: Sequence[str] | None = None
    ) -> ImageDataset:
        """Build from ``(image, class_name)`` or ``(image, class_name, name)`` tuples.

        Classes are sorted by name unless ``classes`` gives their order.
        """
        items = list(items)
        found = {clean_class_name(item[1]) for item in items}
        order = list(classes) if classes is not None else sorted_names(found)
        missing = found - set(order)
        if missing:
            raise DataError(f"Class {sorted(missing)[0]!r} is not among the dataset's classes.")
        index = {c: i for i, c in enumerate(order)}
        names = [
            item[2] if len(item) > 2 else f"{clean_class_name(item[1])}-{k + 1}"
            for k, item in enumerate(items)
        ]
        return cls(
            [item[0] for item in items],
            [index[clean_class_name(item[1])] for item in items],
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

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        i = operator.index(i)
        return self._images[i], self._labels[i]

    def __iter__(self):
        return iter(zip(self._images, self._labels, strict=True))

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
            for img, label in zip(self._images, self._labels, strict=True):
                h.update(struct.pack("<iII", label, *img.size))
                h.update(img.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # --- new datasets ---

    def subset(self, indices: Iterable[int]) -> ImageDataset:
        """The images at ``indices`` (in that order), keeping every class and the dataset's window."""
        idx = [operator.index(i) for i in indices]
        views, full = self._parts(idx)
        return ImageDataset._assemble(views, full, [self._labels[i] for i in idx], self._classes,
                                      [self._names[i] for i in idx], self._window, self._window_chosen)

    def _chosen_window(self) -> Window | None:
        """The window a dataset made from this one keeps: the one set by hand, else its own default."""
        return self._window if self._window_chosen else None

    def with_images(
        self,
        images: Sequence[Image.Image],
        class_name: str,
        names: Sequence[str] | None = None,
    ) -> ImageDataset:
        """A new dataset with ``images`` added to ``class_name``; a new class goes last.

        A window set by hand stays; a default one is worked out again with the new images."""
        class_name = clean_class_name(class_name)
        # Copies: the caller may go on drawing on its own images.
        images = [normalise_image(img).copy() for img in images]
        if len(self) + len(images) > limits.MAX_ENTRIES:
            raise DataError(
                f"A dataset can hold at most {limits.MAX_ENTRIES} images; remove some before adding more."
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
            self._sources() + images,
            list(self._labels) + [label] * len(images),
            classes,
            list(self._names) + list(names),
            self._chosen_window(),
        )

    def without_class(self, name: str) -> ImageDataset:
        """A new dataset without class ``name`` and its images."""
        if name not in self._classes:
            raise DataError(f"There is no class called {name!r}.")
        gone = self._classes.index(name)
        keep = [i for i, label in enumerate(self._labels) if label != gone]
        sources = self._sources()
        return ImageDataset(
            [sources[i] for i in keep],
            [label - (label > gone) for label in (self._labels[i] for i in keep)],
            [c for c in self._classes if c != name],
            [self._names[i] for i in keep],
            self._chosen_window(),
        )

    def merge(self, other: ImageDataset) -> ImageDataset:
        """Both datasets' images; classes matched by name, ``other``'s new classes go last."""
        if len(self) + len(other) > limits.MAX_ENTRIES:
            raise DataError(f"A dataset can hold at most {limits.MAX_ENTRIES} images.")
        classes = list(self._classes) + [c for c in other._classes if c not in self._classes]
        index = {c: i for i, c in enumerate(classes)}
        return ImageDataset(
            self._sources() + other._sources(),
            list(self._labels) + [index[other._classes[label]] for label in other._labels],
            classes,
            list(self._names) + list(other._names),
            self._chosen_window(),
        )


@dataclass
class LoadReport:
    """What happened to each file of an upload: how many loaded, what was skipped and why."""

    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry name, reason)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, nothing to fix (what DICOM headers gave)

