"""Images as the model reads them: uint8 tensors at one input size, and their normalisation.

A run folder holds its images encoded once (``EncodedDataset``, ``EncodedMultiTaskDataset``), so a
worker never decodes a picture again; every trainer and analysis turns a dataset into the same
tensors with ``encode_images`` and normalises them with ``normalise``.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from core.data.multitask import TaskNames

__all__ = ["encode_images", "labels_of", "normalise", "EncodedDataset", "EncodedMultiTaskDataset"]


def encode_images(ds, size: int) -> torch.Tensor:
    """All images of ``ds`` as uint8 Tensor[N, 3, size, size]: short side resized, centre crop.

    A dataset that already holds its images encoded (a run folder's inputs) hands them over."""
    encoded = getattr(ds, "encoded", None)
    if callable(encoded):
        return encoded(size)
    resize = T.Compose([T.ToImage(), T.Resize(size, antialias=True), T.CenterCrop(size)])
    if len(ds) == 0:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.stack([resize(ds[i][0]) for i in range(len(ds))])


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
