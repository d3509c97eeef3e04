"""Images as the model reads them: uint8 tensors at one input size, and their normalisation.

A run folder holds its images encoded once (``EncodedDataset``, ``EncodedMultiTaskDataset``), so a
worker never decodes a picture again; every trainer and analysis turns a dataset into the same
tensors with ``encode_images`` and normalises them with ``normalise``.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from core.data.multitask import TaskNames
from core.errors import ConfigError

__all__ = ["encode_images", "labels_of", "normalise", "EncodedDataset", "EncodedMultiTaskDataset", "Pending",
           "input_bytes", "check_input_budget", "check_count_budget", "write_pending", "read_pending"]


def _resizer(size: int):
    return T.Compose([T.ToImage(), T.Resize(size, antialias=True), T.CenterCrop(size)])


def encode_images(ds, size: int) -> torch.Tensor:
    """All images of ``ds`` as uint8 Tensor[N, 3, size, size]: short side resized, centre crop.

    A dataset that already holds its images encoded (a run folder's inputs) hands them over."""
    encoded = getattr(ds, "encoded", None)
    if callable(encoded):
        return encoded(size)
    resize = _resizer(size)
    out = torch.empty(len(ds), 3, size, size, dtype=torch.uint8)  # filled in place: no second copy
    for i in range(len(ds)):
        out[i] = resize(ds[i][0])
    return out


class Pending:
    """The images of ``ds`` to be encoded at ``size`` later, by the worker process that trains them.

    A run's inputs hold these instead of tensors until the run has a training slot: a queued run
    keeps only references to images the session already holds, and ``nbytes`` (what encoding will
    take) is known before any work, so an oversized run is refused at once (``check_input_budget``)."""

    def __init__(self, ds, size: int):
        self.ds, self.size = ds, int(size)

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def nbytes(self) -> int:
        return len(self.ds) * 3 * self.size * self.size

    def pictures(self):
        for i in range(len(self.ds)):
            yield self.ds[i][0]


def input_bytes(inputs: Mapping) -> int:
    """Bytes a run's inputs take once encoded: tensors as they are, ``Pending`` images at their size."""
    total = 0
    for value in inputs.values():
        if isinstance(value, Pending):
            total += value.nbytes
        elif isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    return total


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def check_input_budget(inputs: Mapping, cap_bytes: int) -> None:
    """ConfigError, saying what to lower, when a run's encoded inputs would exceed ``cap_bytes``."""
    total = input_bytes(inputs)
    if total > cap_bytes:
        pending = [v for v in inputs.values() if isinstance(v, Pending)]
        _refuse(total, sum(len(p) for p in pending), max((p.size for p in pending), default=0), cap_bytes)


def check_count_budget(images: int, size: int, cap_bytes: int) -> None:
    """The same check for ``images`` pictures at ``size`` px, before they exist (a demo set to draw)."""
    total = int(images) * 3 * int(size) ** 2
    if total > cap_bytes:
        _refuse(total, int(images), int(size), cap_bytes)


def _refuse(total: int, images: int, size: int, cap_bytes: int) -> None:
    # every size scales alike: the largest input size whose images fit, and how many fit at this one
    fits = int(size * math.sqrt(cap_bytes / total)) if size else 0
    fewer = int(images * cap_bytes / total)
    advice = (f"Lower the input size to {fits} px or less, or train on fewer images (about {fewer:,} at {size} px)"
              if fits >= 32 else f"Train on fewer images (about {fewer:,} at {size} px)")
    raise ConfigError(
        f"This run would hold {images:,} images at {size} px in memory ({_mb(total)}), more than the "
        f"{_mb(cap_bytes)} one run may use on this server. {advice}; the server's limit is the setting "
        "TRANSFER_LAB_MAX_RUN_INPUTS_MB.")


def write_pending(folder: Path, pending: Mapping[str, Pending], name: str = "sources") -> None:
    """The pictures of ``pending`` as raw RGB bytes (``name.bin``) and where each starts (``name.json``),
    written one picture at a time, so writing them takes no more memory than one picture."""
    manifest = {}
    offset = 0
    with open(folder / f"{name}.bin.tmp", "wb") as fh:
        for key, item in pending.items():
            shapes = []
            start = offset
            for picture in item.pictures():
                array = np.asarray(picture.convert("RGB") if picture.mode != "RGB" else picture, dtype=np.uint8)
                fh.write(array.tobytes())
                shapes.append(array.shape[:2])
                offset += array.nbytes
            manifest[key] = {"size": item.size, "offset": start, "shapes": [list(s) for s in shapes]}
    (folder / f"{name}.bin.tmp").replace(folder / f"{name}.bin")
    (folder / f"{name}.json").write_text(json.dumps(manifest))


def read_pending(folder: Path, name: str = "sources") -> dict[str, torch.Tensor]:
    """What ``write_pending`` wrote, each key's pictures encoded at its size (as ``encode_images``)."""
    manifest_path = folder / f"{name}.json"
    if not manifest_path.is_file():
        return {}
    manifest = json.loads(manifest_path.read_text())
    raw = np.memmap(folder / f"{name}.bin", dtype=np.uint8, mode="r") if manifest else None
    out = {}
    for key, entry in manifest.items():
        size, offset = int(entry["size"]), int(entry["offset"])
        resize = _resizer(size)
        images = torch.empty(len(entry["shapes"]), 3, size, size, dtype=torch.uint8)
        for i, (h, w) in enumerate(entry["shapes"]):
            n = h * w * 3
            picture = torch.from_numpy(np.array(raw[offset:offset + n]).reshape(h, w, 3)).permute(2, 0, 1)
            images[i] = resize(picture)
            offset += n
        out[key] = images
    del raw
    return out


def labels_of(ds) -> torch.Tensor:
    labels = getattr(ds, "labels", None)
    if labels is None:
        labels = [ds[i][1] for i in range(len(ds))]
    return torch.as_tensor(list(labels), dtype=torch.long)


def normalise(batch_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (batch_uint8.float().div_(255) - mean) / std


def _picture(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB")


class EncodedDataset:
    """Images already decoded to uint8 ``Tensor[N, 3, S, S]``, with the ``ImageDataset`` interface."""

    def __init__(self, images: torch.Tensor, labels, classes: list[str]):
        self.images = images
        self.labels = [int(v) for v in labels]
        self.classes = list(classes)

    def encoded(self, size: int) -> torch.Tensor:
        """The images as uint8 Tensor[N, 3, size, size] (resized only when the size differs)."""
        if self.images.shape[-1] == size and self.images.shape[-2] == size:
            return self.images
        # resized here: encode_images would hand the dataset back to this very method, forever
        resized = torch.nn.functional.interpolate(self.images.float(), size=(size, size), mode="bilinear",
                                                  antialias=True, align_corners=False)
        return resized.round_().clamp_(0, 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return _picture(self.images[i]), self.labels[i]


class EncodedMultiTaskDataset(TaskNames):
    """A run folder's images (uint8 ``Tensor[N, 3, S, S]``) with their labels (``Tensor[N, T]``,
    ``-1`` where missing, columns in ``tasks`` order): what the loop reads, nothing decoded again."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, tasks: Mapping[str, Sequence[str]]):
        self.images = images
        self._labels = torch.as_tensor(labels, dtype=torch.long).reshape(len(images), len(tasks))
        self._tasks = {str(t): [str(c) for c in classes] for t, classes in tasks.items()}

    @property
    def labels(self) -> list[int]:
        return self._labels[:, 0].tolist()

    def label_matrix(self, tasks: Sequence[str] | None = None) -> torch.Tensor:
        names = self.task_names
        columns = [names.index(t) for t in (tasks if tasks is not None else names)]
        return self._labels[:, columns].contiguous()

    def encoded(self, size: int) -> torch.Tensor:
        if self.images.shape[-2:] == (size, size):
            return self.images
        return encode_images([(_picture(img), None) for img in self.images], size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        i = operator.index(i)
        return _picture(self.images[i]), {t: int(v) for t, v in zip(self._tasks, self._labels[i].tolist(), strict=True)}
