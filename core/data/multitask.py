"""Images with several labels each (one per task): the multi-task dataset.

``-1`` (``MISSING``) marks an image not labelled for a task. ``labels`` (the first task's labels)
and ``subset`` make ``core.data.split`` work on it: the split is stratified on the first task.
"""

from __future__ import annotations

import copy
import hashlib
import operator
import struct
from collections.abc import Iterable, Mapping, Sequence

import torch
from PIL import Image

from core.data.datasets import HeldImages, ImageDataset
from core.data.images import normalise_image
from core.data.window import Window
from core.errors import DataError

__all__ = ["MISSING", "TaskNames", "MultiTaskDataset"]

MISSING = -1


class TaskNames:
    """What every multi-task dataset says about its tasks, from its ``_tasks`` (task -> class names)."""

    _tasks: dict[str, list[str]]

    @property
    def tasks(self) -> dict[str, list[str]]:
        return {t: list(c) for t, c in self._tasks.items()}

    @property
    def task_names(self) -> list[str]:
        return list(self._tasks)

    @property
    def classes(self) -> list[str]:
        """The first task's classes (what single-task code, such as ``split``, reads)."""
        return list(next(iter(self._tasks.values())))


class MultiTaskDataset(TaskNames, HeldImages):
    """RGB images with one label per task; ``-1`` marks an image not labelled for a task.

    ``ds[i]`` is ``(PIL image, {task: class index or -1})``. ``labels`` (the first task's labels)
    and ``subset`` make ``core.data.split`` work on it: the split is stratified on the first task.
    """

    def __init__(self, images: Sequence[Image.Image], tasks: Mapping[str, Sequence[str]],
                 labels: Mapping[str, Sequence[int]], names: Sequence[str] | None = None,
                 window: Window | None = None):
        self._hold([normalise_image(img) for img in images], window)
        self._tasks = {str(t): [str(c) for c in classes] for t, classes in tasks.items()}
        if not self._tasks:
            raise DataError("A multi-task dataset needs at least one task.")
        if set(labels) != set(self._tasks):
            raise ValueError("labels must give one list per task")
        n = len(self._images)
        self._labels = {t: tuple(operator.index(v) for v in labels[t]) for t in self._tasks}
        for t, values in self._labels.items():
            if len(values) != n:
                raise ValueError(f"task {t!r} has {len(values)} labels for {n} images")
            if any(not MISSING <= v < len(self._tasks[t]) for v in values):
                raise ValueError(f"every label of task {t!r} must index into its classes or be -1")
        self._names = tuple(str(x) for x in names) if names is not None else tuple(
            f"image-{i + 1}" for i in range(n))
        if len(self._names) != n:
            raise ValueError("names must match images")
        self._fingerprint: str | None = None

    @property
    def labels(self) -> list[int]:
        """The first task's labels (``-1`` where missing): ``split`` stratifies on them."""
        return list(next(iter(self._labels.values())))

    def task_labels(self, task: str) -> list[int]:
        return list(self._labels[task])

    def label_matrix(self, tasks: Sequence[str] | None = None) -> torch.Tensor:
        """Labels as Tensor[N, T] (long, ``-1`` where missing), columns in ``tasks`` order."""
        tasks = list(tasks) if tasks is not None else self.task_names
        if not self._images:
            return torch.empty(0, len(tasks), dtype=torch.long)
        return torch.tensor([self._labels[t] for t in tasks], dtype=torch.long).T.contiguous()

    def __getitem__(self, i: int) -> tuple[Image.Image, dict[str, int]]:
        i = operator.index(i)
        return self._images[i], {t: values[i] for t, values in self._labels.items()}

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"MultiTaskDataset({len(self._tasks)} tasks, {len(self)} images)"

    def counts(self, task: str | None = None) -> dict:
        """Images per class of ``task`` (``"(unlabelled)"`` counts the gaps); every task's without one."""
        if task is None:
            return {t: self.counts(t) for t in self._tasks}
        result = dict.fromkeys(self._tasks[task], 0)
        missing = 0
        for v in self._labels[task]:
            if v == MISSING:
                missing += 1
            else:
                result[self._tasks[task][v]] += 1
        if missing:
            result["(unlabelled)"] = missing
        return result

    @property
    def fingerprint(self) -> str:
        """A hash of the tasks, labels and pixels: equal datasets share it."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr(self._tasks).encode("utf-8"))
            for i, img in enumerate(self._images):
                h.update(repr([self._labels[t][i] for t in self._tasks]).encode())
                h.update(struct.pack("<II", *img.size))
                h.update(img.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def subset(self, indices: Iterable[int]) -> MultiTaskDataset:
        """The images at ``indices``, seen through this dataset's window (nothing windowed again)."""
        idx = [operator.index(i) for i in indices]
        new = copy.copy(self)
        views, full = self._parts(idx)
        new._images, new._full, new._names = tuple(views), tuple(full), tuple(self._names[i] for i in idx)
        new._labels = {t: tuple(v[i] for i in idx) for t, v in self._labels.items()}
        new._fingerprint = None
        return new

    def as_single_task(self, task: str):
        """The images labelled for ``task`` as an ``ImageDataset`` with that task's classes (what the
        single-task pages train on)."""
        if task not in self._tasks:
            raise DataError(f"Unknown task {task!r}; the tasks are {', '.join(self._tasks)}.")
        keep = [i for i, v in enumerate(self._labels[task]) if v != MISSING]
        views, full = self._parts(keep)
        return ImageDataset._assemble(views, full, [self._labels[task][i] for i in keep], self._tasks[task],
                                      [self._names[i] for i in keep], self._window, self._window_chosen)

    def only_tasks(self, tasks: Sequence[str]) -> MultiTaskDataset:
        """These tasks alone, without the images labelled for none of them."""
        unknown = [t for t in tasks if t not in self._tasks]
        if unknown:
            raise DataError(f"Unknown task {unknown[0]!r}; the tasks are {', '.join(self._tasks)}.")
        keep = [i for i in range(len(self)) if any(self._labels[t][i] != MISSING for t in tasks)]
        new = self.subset(keep)
        new._tasks = {t: list(self._tasks[t]) for t in tasks}
        new._labels = {t: new._labels[t] for t in tasks}
        return new

