"""Multi-task transfer: one shared pretrained backbone, one head per task, trained in the one loop.

- Data: :class:`MultiTaskDataset` holds several labels per image (``-1`` where an image is not
  labelled for a task); :func:`demo_multitask` draws shapes labelled by shape, colour and size;
  :func:`load_labelled_archive` reads a ZIP with a ``labels.csv`` (``core.data.load_zip`` hands
  such archives over).
- Model: :func:`multitask_classifier` puts one head per task on a shared body. All heads live in
  the backbone's one head group, so freezing, learning-rate multipliers and the feature caches of
  the loop treat them as they treat a single head.
- Training: the :class:`MultiTask` objective (per-task cross-entropy with missing labels masked;
  equal, manual or uncertainty weighting, Kendall et al. 2018), per-task metrics, and how much the
  tasks' gradients on the shared part disagree (:func:`gradient_conflict`).
- :func:`compare_shared_separate`: one shared model against one model per task.

Unlike the slide this started from, the heads keep the batch dimension (no ``.squeeze()``) and
each ends in as many outputs as its task has classes.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import math
import operator
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from core.backbones import Classifier, _get_submodule, _new_head, _set_submodule
from core.errors import ConfigError, DataError
from core.train.base import EpochMetrics
from core.train.objectives import Objective

__all__ = [
    "MultiTaskDataset",
    "demo_multitask",
    "digits_multitask",
    "DEMO_TASKS",
    "LABELS_CSV",
    "is_labelled_archive",
    "load_labelled_archive",
    "TaskHeads",
    "MultiTaskClassifier",
    "multitask_classifier",
    "task_view",
    "MultiTask",
    "MultiTaskEpochMetrics",
    "WEIGHTINGS",
    "gradient_conflict",
    "fit_multitask",
    "predict_tasks",
    "confusion_by_task",
    "TaskComparison",
    "compare_shared_separate",
    "kept_accuracy_by_task",
    "EncodedMultiTaskDataset",
    "encode_multitask_inputs",
    "starting_multitask_model",
    "new_multitask_record",
    "start_multitask_run",
    "train_folder",
]

MISSING = -1
LABELS_CSV = "labels.csv"
MAX_CSV_BYTES = 20 * 2**20


# --- data ---------------------------------------------------------------------------------------


class _TaskNames:
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


class MultiTaskDataset(_TaskNames):
    """RGB images with one label per task; ``-1`` marks an image not labelled for a task.

    ``ds[i]`` is ``(PIL image, {task: class index or -1})``. ``labels`` (the first task's labels)
    and ``subset`` make ``core.data.split`` work on it: the split is stratified on the first task.
    """

    def __init__(self, images: Sequence[Image.Image], tasks: Mapping[str, Sequence[str]],
                 labels: Mapping[str, Sequence[int]], names: Sequence[str] | None = None):
        from core.data import _normalise

        self._images = tuple(_normalise(img) for img in images)
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

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def images(self) -> list[Image.Image]:
        return list(self._images)

    def __len__(self) -> int:
        return len(self._images)

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

    def subset(self, indices: Iterable[int]) -> "MultiTaskDataset":
        idx = [operator.index(i) for i in indices]
        return MultiTaskDataset([self._images[i] for i in idx], self._tasks,
                                {t: [v[i] for i in idx] for t, v in self._labels.items()},
                                [self._names[i] for i in idx])

    def as_single_task(self, task: str):
        """The images labelled for ``task`` as an ``ImageDataset`` with that task's classes (what the
        single-task pages train on)."""
        from core.data import ImageDataset

        if task not in self._tasks:
            raise DataError(f"Unknown task {task!r}; the tasks are {', '.join(self._tasks)}.")
        keep = [i for i, v in enumerate(self._labels[task]) if v != MISSING]
        return ImageDataset([self._images[i] for i in keep], [self._labels[task][i] for i in keep],
                            self._tasks[task], [self._names[i] for i in keep])

    def only_tasks(self, tasks: Sequence[str]) -> "MultiTaskDataset":
        """These tasks alone, without the images labelled for none of them."""
        unknown = [t for t in tasks if t not in self._tasks]
        if unknown:
            raise DataError(f"Unknown task {unknown[0]!r}; the tasks are {', '.join(self._tasks)}.")
        keep = [i for i in range(len(self)) if any(self._labels[t][i] != MISSING for t in tasks)]
        return MultiTaskDataset([self._images[i] for i in keep], {t: self._tasks[t] for t in tasks},
                                {t: [self._labels[t][i] for i in keep] for t in tasks},
                                [self._names[i] for i in keep])


# --- the demo ---------------------------------------------------------------------------------

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
    from core.data import MAX_SIDE

    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError("per_class must be a whole number of at least 1.")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= MAX_SIDE:
        raise ConfigError(f"size must be a whole number of pixels between 16 and {MAX_SIDE}.")
    images, names = [], []
    labels: dict[str, list[int]] = {t: [] for t in DEMO_TASKS}
    n_col, n_size = len(_COLOURS), len(_SIZES)
    for s, shape in enumerate(DEMO_TASKS["shape"]):
        for i in range(per_class):
            # the combination cycles with i, shifted by the shape, so all pairs of tasks are balanced
            c = (i + s) % n_col
            z = (i // n_col + s) % n_size
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7, s, i])
            images.append(_draw(rng, shape, DEMO_TASKS["colour"][c], DEMO_TASKS["size"][z], size))
            labels["shape"].append(s)
            labels["colour"].append(c)
            labels["size"].append(z)
            names.append(f"{DEMO_TASKS['size'][z]}-{DEMO_TASKS['colour'][c]}-{shape}-{i + 1:03d}")
    return MultiTaskDataset(images, DEMO_TASKS, labels, names)


def _draw(rng: np.random.Generator, shape: str, colour: str, size_class: str, size: int) -> Image.Image:
    """A filled shape of a given colour family and size on a light plain background (the demo's look)."""
    from core.data import _SUPERSAMPLE, _hsv, _outline

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


def digits_multitask(per_class: int = 30, seed: int = 0, size: int = 64) -> MultiTaskDataset:
    """Real handwriting (scikit-learn's digits, no download) labelled for three tasks: the digit,
    its parity, and whether it is below five; a related-tasks set where sharing could help."""
    from core.samples import sample_dataset

    ds = sample_dataset("digits", per_class=per_class, seed=seed, size=size)
    digits = [int(ds.classes[y]) for y in ds.labels]
    tasks = {"digit": [str(d) for d in range(10)], "parity": ["even", "odd"], "magnitude": ["0-4", "5-9"]}
    labels = {"digit": digits, "parity": [d % 2 for d in digits], "magnitude": [int(d >= 5) for d in digits]}
    return MultiTaskDataset(ds.images, tasks, labels, ds.names)


# --- labels.csv archives -----------------------------------------------------------------------


def _csv_entries(zf) -> list:
    from core.data import _display_name, _is_junk, _safe_parts

    found = []
    for info in zf.infolist():
        parts = _safe_parts(_display_name(info))
        if parts and not _is_junk(parts) and parts[-1].lower() == LABELS_CSV and not info.is_dir():
            found.append((len(parts), parts, info))
    return sorted(found, key=lambda f: f[0])


def is_labelled_archive(zf) -> bool:
    """Whether a ZIP carries a ``labels.csv`` (then it is read as a multi-task dataset)."""
    return bool(_csv_entries(zf))


def _show(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def load_labelled_archive(zf):
    """A ``MultiTaskDataset`` and ``LoadReport`` from an open ZIP holding ``labels.csv``.

    ``labels.csv``: a header row, then one row per image: its path inside the ZIP (or relative to
    the folder holding ``labels.csv``), then one class name per task; an empty cell means the image
    is not labelled for that task. Anything that would make the dataset wrong raises ``DataError``.
    """
    from core.data import (MAX_ENTRIES, MAX_TOTAL_PIXELS, IMAGE_EXTENSIONS, LoadReport, _BudgetExceeded,
                           _decode, _display_name, _entry_problem, _Entry, _extension, _is_junk,
                           _PixelBudget, _read_entry, _reason, _safe_parts, _sorted_names)

    found = _csv_entries(zf)
    if len(found) > 1 and found[0][0] == found[1][0]:
        raise DataError("This ZIP holds more than one labels.csv at the same level; keep exactly one.")
    _, csv_parts, csv_info = found[0]
    if csv_info.file_size > MAX_CSV_BYTES:
        raise DataError(f"labels.csv is larger than {MAX_CSV_BYTES // 2**20} MB; split the dataset.")
    raw = _read_entry(zf, csv_info)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError("labels.csv is not UTF-8 text; save it as 'CSV UTF-8' and zip it again.") from None
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error as e:
        raise DataError(f"labels.csv cannot be read as CSV ({e}); check its quotes.") from None
    if len(rows) < 2:
        raise DataError("labels.csv needs a header row (path, then one column per task) and one row per image.")
    header = [cell.strip() for cell in rows[0]]
    tasks = header[1:]
    if not tasks:
        raise DataError("labels.csv has no task columns: after the image path, add one column per task "
                        "(e.g. path,shape,colour).")
    if any(not t for t in tasks):
        raise DataError("A task column of labels.csv has no name in the header row; name every column.")
    if len(set(tasks)) != len(tasks):
        dup = next(t for t in tasks if tasks.count(t) > 1)
        raise DataError(f"labels.csv has two columns called {dup!r}; give every task its own name.")
    body = rows[1:]
    if len(body) > MAX_ENTRIES:
        raise DataError(f"labels.csv lists {len(body)} images; at most {MAX_ENTRIES} are accepted.")

    # every image entry of the archive, by its path from the root and from labels.csv's folder
    base = csv_parts[:-1]
    entries: dict[str, _Entry] = {}
    for info in zf.infolist():
        name = _display_name(info)
        parts = _safe_parts(name)
        if not parts or _is_junk(parts) or info.is_dir() or _extension(parts[-1]) not in IMAGE_EXTENSIONS:
            continue
        entries["/".join(parts)] = _Entry(info, name, parts)
    by_path: dict[str, str] = {}
    for key in entries:
        by_path[key] = key
        if base and key.split("/")[:len(base)] == base:
            by_path.setdefault("/".join(key.split("/")[len(base):]), key)

    rows_of: dict[str, int] = {}
    unknown, duplicates, unlabelled, ragged = [], [], [], []
    for r, row in enumerate(body, start=2):
        cells = [cell.strip() for cell in row]
        parts = _safe_parts(cells[0]) if cells and cells[0] else None
        key = by_path.get("/".join(parts)) if parts else None
        if key is None:
            unknown.append(cells[0] if cells else f"row {r}")
            continue
        if key in rows_of:
            duplicates.append(cells[0])
            continue
        if len(cells) > len(header):
            ragged.append(r)
            continue
        rows_of[key] = r
        if not any(cells[1:]):
            unlabelled.append(cells[0])
    if unknown:
        raise DataError(f"labels.csv names {len(unknown)} image(s) that are not in the ZIP: {_show(unknown)}. "
                        "Write each path as it is inside the ZIP (e.g. images/cat1.jpg).")
    if duplicates:
        raise DataError(f"labels.csv lists {_show(duplicates)} more than once; keep one row per image.")
    if ragged:
        raise DataError(f"Row(s) {_show([str(r) for r in ragged])} of labels.csv have more cells than the "
                        "header has columns; check for stray commas.")
    if unlabelled:
        raise DataError(f"{len(unlabelled)} image(s) have no label for any task: {_show(unlabelled)}. "
                        "Give each at least one label or remove its row.")
    listed = set(rows_of)
    strays = sorted(k for k in entries if k not in listed)
    if strays:
        raise DataError(f"{len(strays)} image(s) in the ZIP have no row in labels.csv, so no label at all: "
                        f"{_show(strays)}. Add a row for each or remove them from the ZIP.")

    report = LoadReport()
    budget = _PixelBudget(MAX_TOTAL_PIXELS)
    items = []
    for key, r in sorted(rows_of.items(), key=lambda kv: kv[1]):
        entry = entries[key]
        problem = _entry_problem(entry)
        if problem is not None:
            report.skipped.append((entry.name, problem))
            continue
        try:
            image = _decode(_read_entry(zf, entry.info), entry.parts[-1], budget)
        except _BudgetExceeded:
            raise
        except DataError as e:
            report.skipped.append((entry.name, _reason(e, entry.parts[-1])))
            continue
        cells = [cell.strip() for cell in body[r - 2]]
        cells += [""] * (len(header) - len(cells))
        items.append((image, cells[1:], entry.name))
    if not items:
        raise DataError("None of the images listed in labels.csv could be read.")
    classes = {t: _sorted_names({item[1][k] for item in items if item[1][k]}) for k, t in enumerate(tasks)}
    few = [t for t in tasks if len(classes[t]) < 2]
    if few:
        described = "; ".join(f"{t!r} has {len(classes[t])}" for t in few)
        raise DataError(f"Every task needs at least two classes, but {described}. Add labels of another "
                        "class or drop that column from labels.csv.")
    labels = {t: [classes[t].index(item[1][k]) if item[1][k] else MISSING for item in items]
              for k, t in enumerate(tasks)}
    report.loaded = len(items)
    gaps = {t: sum(v == MISSING for v in labels[t]) for t in tasks}
    for t, n in gaps.items():
        if n:
            report.warnings.append(f"{n} image(s) are not labelled for {t!r}; they train the other tasks only.")
    return MultiTaskDataset([i[0] for i in items], classes, labels, [i[2] for i in items]), report


# --- the model --------------------------------------------------------------------------------


class TaskHeads(nn.Module):
    """One head per task over the same pooled features; ``forward(f) -> {task: logits}``."""

    def __init__(self, in_features: int, tasks: Mapping[str, Sequence[str]], head: str | Mapping[str, str] = "linear"):
        super().__init__()
        kinds = {t: (head.get(t, "linear") if isinstance(head, Mapping) else head) for t in tasks}
        self.heads = nn.ModuleDict({t: _new_head(in_features, len(classes), kinds[t]) for t, classes in tasks.items()})
        self.kinds = kinds

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        # features stay [N, D] for any N, a batch of one included (the slide's .squeeze() lost it)
        return {t: head(features) for t, head in self.heads.items()}


def _check_tasks(tasks: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    if not tasks:
        raise ConfigError("A multi-task model needs at least one task.")
    result = {}
    for t, classes in tasks.items():
        if not isinstance(t, str) or not t:
            raise ConfigError("Every task needs a name.")
        if len(classes) < 2:
            raise ConfigError(f"Task {t!r} needs at least two classes.")
        result[t] = [str(c) for c in classes]
    return result


class MultiTaskClassifier(Classifier):
    """A shared backbone with one head per task: ``model(x) -> {task: logits}``.

    The heads replace the backbone's final Linear layer inside its head group, so the layer
    groups (and their names) are the backbone's: "head" holds every task's head.
    """

    def __init__(self, net, *, tasks: Mapping[str, Sequence[str]], **kwargs):
        self_tasks = _check_tasks(tasks)
        super().__init__(net, classes=next(iter(self_tasks.values())), **kwargs)
        self.tasks = self_tasks

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def task_heads(self) -> TaskHeads:
        return self.get_classifier()

    def task_head_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {t: list(h.parameters()) for t, h in self.task_heads.heads.items()}

    def reset_classifier(self, tasks, head="linear") -> None:
        """New, freshly initialised heads for ``tasks`` (task -> class names)."""
        if not isinstance(tasks, Mapping):
            raise ConfigError("A multi-task model's heads are reset with a dict of task -> classes.")
        tasks = _check_tasks(tasks)
        old = self.get_classifier()
        in_features = next(iter(old.heads.values()))
        in_features = in_features.in_features if isinstance(in_features, nn.Linear) else in_features[0].in_features
        _set_submodule(self._net, self.head_module, TaskHeads(in_features, tasks, head))
        for child_name, child in self._net.named_children():
            self.add_module(child_name, child)
        self.tasks = tasks
        self.classes = next(iter(tasks.values()))

    def __deepcopy__(self, memo):
        net = copy.deepcopy(self._net, memo)
        clone = MultiTaskClassifier(net, tasks=self.tasks, backbone_name=self.backbone_name,
                                    layer_groups=self.layer_groups, head_module=self.head_module,
                                    mean=self.mean, std=self.std, image_size=self.image_size,
                                    pretrained=self.pretrained, pre_head=self.pre_head)
        clone.train(self.training)
        for (_, a), (_, b) in zip(self.named_modules(), clone.named_modules()):
            b.training = a.training
        return clone


def multitask_classifier(backbone, tasks: Mapping[str, Sequence[str]], head: str | Mapping[str, str] = "linear",
                         *, image_size: int | None = None):
    """The backbone (copied) with one new head per task (``head``: "linear" or "mlp", or a dict
    task -> kind); ``model(x)`` returns ``{task: logits}``."""
    tasks = _check_tasks(tasks)
    net = copy.deepcopy(backbone.model)
    old = _get_submodule(net, backbone.head_module)
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"{backbone.name}'s head {backbone.head_module} is not a Linear layer.")
    _set_submodule(net, backbone.head_module, TaskHeads(old.in_features, tasks, head))
    return MultiTaskClassifier(net, tasks=tasks, backbone_name=backbone.name, layer_groups=backbone.layer_groups,
                               head_module=backbone.head_module, mean=backbone.mean, std=backbone.std,
                               image_size=image_size or backbone.image_size, pretrained=backbone.pretrained,
                               pre_head=backbone.pre_head).eval()


class _TaskView(nn.Module):
    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        # the model's own children, under their own names: a layer of the model (Grad-CAM's, a
        # feature map's) has the same name in the view
        for name, child in model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "model", model)  # not registered: its children already are
        self.task = task

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.task]


def task_view(model: nn.Module, task: str) -> nn.Module:
    """``model`` seen through one task's head: ``view(x)`` is that task's logits, for the tools that
    expect one output (saliency: "where does the colour head look, and where the shape head?")."""
    if task not in getattr(model, "tasks", {}):
        raise ConfigError(f"The model has no task {task!r}.")
    return _TaskView(model, task).train(model.training)


# --- training ---------------------------------------------------------------------------------

WEIGHTINGS = {
    "equal": "Equal: the tasks' losses added up",
    "manual": "Manual: each task's loss times a weight you choose",
    "uncertainty": "Uncertainty (Kendall et al. 2018): weights learned from each task's noise",
}


@dataclass
class MultiTaskEpochMetrics(EpochMetrics):
    """An epoch of multi-task training: the overall figures (``val_acc`` is the mean over tasks),
    the same per task, the task weights in use, and how much the tasks' gradients disagreed."""

    val_acc_by_task: dict[str, float] = field(default_factory=dict)
    val_loss_by_task: dict[str, float] = field(default_factory=dict)
    train_loss_by_task: dict[str, float] = field(default_factory=dict)
    train_acc_by_task: dict[str, float] = field(default_factory=dict)
    task_weights: dict[str, float] = field(default_factory=dict)
    # cosine similarity between the tasks' gradients on the shared part, averaged over a few
    # batches (rows and columns in task order), and the share of (batch, pair) with a negative one
    grad_cosine: list[list[float]] = field(default_factory=list)
    grad_conflict: float = math.nan
    grad_on: str = ""  # "parameters" (the trainable shared weights) or "features" (all frozen)


class MultiTask(Objective):
    """Per-task cross-entropy over one shared body; images missing a task's label are left out of
    that task's loss, and a task with no label in a batch gives its head no gradient at all.

    ``weighting``: "equal" (sum of the losses), "manual" (``weights[task]`` × loss) or
    "uncertainty" (Kendall et al. 2018: ``exp(-s_t) · L_t + s_t`` with a learned log-variance
    ``s_t`` per task, trained by the same optimizer). ``conflict_batches`` batches are used after
    each epoch to measure gradient conflict (0: off). ``pcgrad`` (Yu et al. 2020) projects each
    task's gradient on the shared parameters off the others' where they conflict (negative dot).
    """

    title = "Multi-task training"

    def __init__(self, weighting: str = "equal", weights: Mapping[str, float] | None = None,
                 conflict_batches: int = 4, weights_lr_multiplier: float = 10.0, pcgrad: bool = False):
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"Unknown loss weighting {weighting!r}; choose one of: {', '.join(WEIGHTINGS)}.")
        self.weighting = weighting
        self.manual = dict(weights or {})
        self.conflict_batches = int(conflict_batches)
        self.weights_lr_multiplier = float(weights_lr_multiplier)
        self.pcgrad = bool(pcgrad)
        self.tasks: list[str] = []
        self.log_vars: nn.Parameter | None = None

    def check(self, model, data, config) -> None:
        tasks = getattr(model, "tasks", None)
        if not tasks:
            raise ConfigError("Multi-task training needs a multi-task model (one head per task).")
        self.tasks = list(tasks)
        for name, ds in data.items():
            if ds is None:
                continue
            ds_tasks = getattr(ds, "tasks", None)
            if ds_tasks is None:
                raise ConfigError(f"The {name} images carry one label each; multi-task training needs a label "
                                  "per task (a ZIP with labels.csv, or the multi-task demo).")
            for t in self.tasks:
                if t not in ds_tasks:
                    raise ConfigError(f"The {name} images have no labels for task {t!r}.")
                if list(ds_tasks[t]) != list(tasks[t]):
                    raise ConfigError(f"Task {t!r} has other classes in the {name} images than in the model.")
        if len(data["train"]) < 2:
            raise ConfigError("Training needs at least two training images.")
        if self.weighting == "manual":
            unknown = sorted(set(self.manual) - set(self.tasks))
            if unknown:
                raise ConfigError(f"Weights given for unknown task(s): {', '.join(unknown)}.")
            bad = [t for t in self.tasks if not (math.isfinite(self.manual.get(t, 1.0)) and self.manual.get(t, 1.0) >= 0)]
            if bad or not any(self.manual.get(t, 1.0) > 0 for t in self.tasks):
                raise ConfigError("Task weights must be numbers ≥ 0, at least one of them above 0.")

    def labels(self, ds) -> torch.Tensor:
        return ds.label_matrix(self.tasks)

    def param_groups(self, trainer) -> list[dict]:
        if self.weighting != "uncertainty":
            self.log_vars = None
            return []
        # s_t = log sigma_t^2 starts at 0 (weight 1); no weight decay, it would pull every s_t to 0
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks), device=trainer.device))
        return [{"params": [self.log_vars], "lr": trainer.config.lr * self.weights_lr_multiplier,
                 "weight_decay": 0.0, "name": "task weights"}]

    def task_weights(self) -> dict[str, float]:
        if self.weighting == "uncertainty" and self.log_vars is not None:
            return {t: float(w) for t, w in zip(self.tasks, torch.exp(-self.log_vars.detach()).cpu())}
        if self.weighting == "manual":
            return {t: float(self.manual.get(t, 1.0)) for t in self.tasks}
        return dict.fromkeys(self.tasks, 1.0)

    def task_losses(self, outputs: Mapping[str, torch.Tensor], y: torch.Tensor, smoothing: float = 0.0):
        """{task: (mean loss over its labelled images, their count, correct)} for tasks labelled in the batch."""
        result = {}
        for k, t in enumerate(self.tasks):
            mask = y[:, k] >= 0
            count = int(mask.sum())
            if count == 0:
                continue  # leaving the term out keeps the head's gradient None, not zero
            logits = outputs[t].float()[mask]
            target = y[mask, k]
            loss = F.cross_entropy(logits, target, label_smoothing=smoothing)
            result[t] = (loss, count, (logits.detach().argmax(1) == target).sum())
        return result

    def terms(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each labelled task's weighted loss term."""
        result = {}
        for k, t in enumerate(self.tasks):
            if t not in losses:
                continue
            if self.weighting == "uncertainty":
                s = self.log_vars[k]
                result[t] = torch.exp(-s) * losses[t] + s
            elif self.weighting == "manual":
                result[t] = self.manual.get(t, 1.0) * losses[t]
            else:
                result[t] = losses[t]
        return result

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        terms = list(self.terms(losses).values())
        return sum(terms[1:], terms[0]) if terms else None

    def projected(self, terms: Mapping[str, torch.Tensor], shared: list[nn.Parameter], seed: int) -> torch.Tensor:
        """The summed loss whose gradient on ``shared`` is PCGrad's (the heads' stay their own): the
        loop's one ``backward()`` then applies the projection, with no second backward pass."""
        total = sum(list(terms.values())[1:], next(iter(terms.values())))
        if len(terms) < 2 or not shared:
            return total
        grads = [torch.autograd.grad(term, shared, retain_graph=True, allow_unused=True) for term in terms.values()]
        flat = [torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                           for g, p in zip(gs, shared)]) for gs in grads]
        order = torch.Generator().manual_seed(seed)
        combined = torch.zeros_like(flat[0])
        for i, g in enumerate(flat):
            g = g.clone()
            for j in torch.randperm(len(flat), generator=order).tolist():
                dot = g @ flat[j]
                if j != i and dot < 0:
                    g -= dot / flat[j].norm().pow(2).clamp_min(1e-20) * flat[j]
            combined += g
        correction, start = 0.0, 0
        plain = torch.stack(flat).sum(0)
        for p in shared:
            n = p.numel()
            delta = (combined[start:start + n] - plain[start:start + n]).view_as(p).to(p.dtype)
            correction = correction + (delta.detach() * p).sum()
            start += n
        # same value as the plain sum; its gradient on the shared part is the projected one
        return total + correction - correction.detach()

    def loss(self, trainer, batch):
        idx, seed = batch
        x = trainer.inputs("train", idx, seed)
        y = trainer.labels["train"][idx].to(trainer.device, non_blocking=True)
        outputs = trainer.logits(x)
        per_task = self.task_losses(outputs, y, trainer.config.label_smoothing)
        terms = self.terms({t: v[0] for t, v in per_task.items()})
        if self.pcgrad and terms:
            total = self.projected(terms, _shared_parameters(trainer), seed)
        else:
            total = self.combine({t: v[0] for t, v in per_task.items()})
        if total is None:  # no label at all in this batch: a zero that leaves every weight alone
            total = sum(o.float().sum() for o in outputs.values()) * 0.0
        stats = {"n": len(idx)}
        for t, (loss, count, correct) in per_task.items():
            stats[f"loss:{t}"] = loss.detach() * count
            stats[f"n:{t}"] = count
            stats[f"correct:{t}"] = correct
        return total, stats

    @torch.inference_mode()
    def evaluate(self, trainer) -> dict:
        if "val" not in trainer.images or len(trainer.labels["val"]) == 0:
            return {"val_loss": math.nan, "val_acc": math.nan}
        model = trainer.model
        was_training = model.training
        model.eval()
        labels = trainer.labels["val"]
        loss_sum = dict.fromkeys(self.tasks, 0.0)
        correct = dict.fromkeys(self.tasks, 0)
        count = dict.fromkeys(self.tasks, 0)
        try:
            for start, x in trainer.eval_inputs("val"):
                outputs = trainer.logits(x)
                y = labels[start:start + len(x)].to(trainer.device)
                for t, (loss, n, right) in self.task_losses(outputs, y).items():
                    loss_sum[t] += loss.item() * n
                    correct[t] += int(right)
                    count[t] += n
        finally:
            model.train(was_training)
        acc = {t: correct[t] / count[t] if count[t] else math.nan for t in self.tasks}
        loss = {t: loss_sum[t] / count[t] if count[t] else math.nan for t in self.tasks}
        return {"val_loss": _nanmean(loss.values()), "val_acc": _nanmean(acc.values()),
                "val_acc_by_task": acc, "val_loss_by_task": loss}

    def epoch_metrics(self, trainer, epoch, sums, measured, seconds, lr):
        n = max(1, sums.get("n", 0))
        by_task = {t: sums.get(f"loss:{t}", math.nan) / sums[f"n:{t}"] if sums.get(f"n:{t}") else math.nan
                   for t in self.tasks}
        acc_by_task = {t: sums.get(f"correct:{t}", 0) / sums[f"n:{t}"] if sums.get(f"n:{t}") else math.nan
                       for t in self.tasks}
        conflict = gradient_conflict(trainer, self, self.conflict_batches, seed=epoch) if self.conflict_batches else None
        return MultiTaskEpochMetrics(
            epoch=epoch, train_loss=sums.get("loss", math.nan) / n, train_acc=_nanmean(acc_by_task.values()),
            val_loss=measured.get("val_loss", math.nan), val_acc=measured.get("val_acc", math.nan),
            seconds=seconds, lr=lr, val_acc_by_task=measured.get("val_acc_by_task", {}),
            val_loss_by_task=measured.get("val_loss_by_task", {}), train_loss_by_task=by_task,
            train_acc_by_task=acc_by_task, task_weights=self.task_weights(),
            grad_cosine=conflict["cosine"] if conflict else [], grad_conflict=conflict["conflict"] if conflict else math.nan,
            grad_on=conflict["on"] if conflict else "")


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _shared_parameters(trainer) -> list[nn.Parameter]:
    """The trainable parameters every task's loss reaches: all but the task heads'."""
    heads = {id(p) for ps in trainer.model.task_head_parameters().values() for p in ps}
    return [p for g in trainer.param_groups for p in g["params"] if id(p) not in heads and p.requires_grad]


def gradient_conflict(trainer, objective: MultiTask, batches: int = 4, seed: int = 0) -> dict | None:
    """Cosine similarity between the tasks' loss gradients on the shared part of the model.

    The shared part is every trainable parameter outside the task heads; with all of those frozen
    it is the pooled features themselves (the representation the heads share). Measured without
    augmentation on ``batches`` random training batches, in eval mode, away from the training's
    random streams. Returns {"cosine": T×T mean cosines (1 on the diagonal), "negative": T×T share
    of batches with a negative cosine, "conflict": that share over all pairs, "on": what was
    differentiated}, or None with fewer than two tasks.
    """
    tasks = objective.tasks
    if len(tasks) < 2 or batches <= 0:
        return None
    model = trainer.model
    shared = _shared_parameters(trainer)
    on = "parameters" if shared else "features"
    labels = trainer.labels["train"]
    gen = torch.Generator().manual_seed(int(trainer.config.seed) * 7919 + int(seed))
    bs = min(trainer.config.batch_size, len(labels))
    T = len(tasks)
    cos_sum, cos_n, neg = np.zeros((T, T)), np.zeros((T, T)), np.zeros((T, T))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for _ in range(batches):
                idx = torch.randperm(len(labels), generator=gen)[:bs]
                x = trainer.plain_inputs("train", idx)
                y = labels[idx].to(trainer.device)
                if on == "features":
                    f = trainer.features(x).detach().float().requires_grad_(True)
                    outputs, wrt = trainer.head(f), [f]
                else:
                    outputs, wrt = trainer.logits(x), shared
                per_task = objective.task_losses(outputs, y)
                vectors = {}
                for t, (loss, _, _) in per_task.items():
                    grads = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True)
                    flat = torch.cat([(g if g is not None else torch.zeros_like(w)).reshape(-1).float()
                                      for g, w in zip(grads, wrt)])
                    norm = flat.norm()
                    if norm > 0:
                        vectors[t] = flat / norm
                present = [k for k, t in enumerate(tasks) if t in vectors]
                if not present:
                    continue
                stacked = torch.stack([vectors[tasks[k]] for k in present])
                cos = (stacked @ stacked.T).clamp(-1, 1).cpu().numpy()
                for a, i in enumerate(present):
                    for b, j in enumerate(present):
                        value = float(cos[a, b])
                        cos_sum[i, j] += value
                        cos_n[i, j] += 1
                        neg[i, j] += value < 0
    finally:
        model.train(was_training)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cos_n > 0, cos_sum / np.maximum(cos_n, 1), np.nan)
        negative = np.where(cos_n > 0, neg / np.maximum(cos_n, 1), np.nan)
    off = ~np.eye(T, dtype=bool) & (cos_n > 0)
    conflict = float(neg[off].sum() / cos_n[off].sum()) if off.any() else math.nan
    return {"cosine": mean.tolist(), "negative": negative.tolist(), "conflict": conflict, "on": on}


def fit_multitask(model, train_ds, val_ds, config, objective: MultiTask | None = None, callbacks=(), stop=None):
    """Train a multi-task model in place through the one loop; returns the ``History``."""
    from core.train.loop import Trainer

    objective = objective or MultiTask()
    return Trainer(model, objective, config, callbacks, stop).fit({"train": train_ds, "val": val_ds})


@torch.inference_mode()
def predict_tasks(model, images, device: str | torch.device = "cpu", batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Every task's class probabilities for a list of PIL images (or a dataset): {task: Tensor[N, C]}."""
    from torchvision.transforms import v2 as T

    from core.train.base import normalise

    device = torch.device(device)
    images = [img[0] if isinstance(img, tuple) else img for img in images]
    resize = T.Compose([T.ToImage(), T.Resize(model.image_size, antialias=True), T.CenterCrop(model.image_size)])
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {t: [] for t in model.tasks}
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([resize(img.convert("RGB")) for img in images[start:start + batch_size]])
            for t, logits in model(normalise(batch.to(device), mean, std)).items():
                out[t].append(logits.float().softmax(1).cpu())
    finally:
        model.train(was_training)
    return {t: torch.cat(v) if v else torch.empty(0, len(model.tasks[t])) for t, v in out.items()}


def confusion_by_task(model, ds: MultiTaskDataset, device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Per task, the confusion matrix (rows: true class, columns: predicted) over the images
    labelled for that task."""
    from sklearn.metrics import confusion_matrix

    probs = predict_tasks(model, ds.images, device)
    result = {}
    for t, classes in model.tasks.items():
        y = np.array(ds.task_labels(t))
        keep = y != MISSING
        predicted = probs[t].argmax(1).numpy()
        result[t] = confusion_matrix(y[keep], predicted[keep], labels=list(range(len(classes))))
    return result


# --- shared vs separate -------------------------------------------------------------------------


@dataclass
class TaskComparison:
    """One shared model against one model per task, on the same split, seed and settings."""

    tasks: list[str]
    shared_acc: dict[str, float]
    separate_acc: dict[str, float]
    shared_params: int  # every parameter of the one shared model
    separate_params: int  # of all the single-task models together
    shared_trainable: int
    separate_trainable: int
    shared_seconds: float
    separate_seconds: float

    def rows(self) -> list[dict]:
        """A table: one row per task with both accuracies and their difference."""
        rows = [{"task": t, "shared": self.shared_acc[t], "separate": self.separate_acc[t],
                 "difference": self.shared_acc[t] - self.separate_acc[t]} for t in self.tasks]
        return rows


def kept_accuracy_by_task(epochs: Sequence, best_epoch: int | None = None) -> dict[str, float]:
    """Validation accuracy per task of the epoch whose weights a fit kept: ``best_epoch`` (early
    stopping) or else the last. ``epochs`` are ``MultiTaskEpochMetrics`` or, as a run's record
    stores them, their dicts."""
    rows = [e if isinstance(e, Mapping) else vars(e) for e in epochs]
    if not rows:
        return {}
    chosen = next((e for e in rows if e.get("epoch") == best_epoch), rows[-1]) if best_epoch else rows[-1]
    return dict(chosen.get("val_acc_by_task") or {})


def compare_shared_separate(backbone, train_ds: MultiTaskDataset, val_ds: MultiTaskDataset, config,
                            head: str | Mapping[str, str] = "linear", weighting: str = "equal",
                            shared_cache: dict | None = None) -> TaskComparison:
    """Train one model with a head per task and, for each task, one model with that head alone
    (the same backbone weights, split, seed and settings) and compare validation accuracy per task,
    parameters and training time. ``backbone`` is a loaded ``Backbone``; it is copied, not changed.
    """
    from core.seeding import seeded
    from core.train.loop import Trainer

    tasks = train_ds.tasks

    def run(task_subset: dict[str, list[str]]):
        with seeded(config.seed):
            model = multitask_classifier(backbone, task_subset, head, image_size=config.image_size)
        names = list(task_subset)
        train = train_ds.only_tasks(names) if len(names) < len(tasks) else train_ds
        val = val_ds.only_tasks(names) if len(names) < len(tasks) else val_ds
        started = time.perf_counter()
        # each model computes its own feature cache (unless asked to share one): separate models
        # each run their own backbone, and that cost belongs in the comparison
        history = Trainer(model, MultiTask(weighting if len(names) > 1 else "equal", conflict_batches=0), config,
                          shared_cache=shared_cache).fit({"train": train, "val": val})
        seconds = time.perf_counter() - started
        if history.stopped == "diverged":
            raise ConfigError(history.message)
        total = sum(p.numel() for p in model.parameters())
        frozen = set(config.freeze)
        trainable = sum(p.numel() for g in model.layer_groups if g.name not in frozen
                        and config.lr_multipliers.get(g.name, 1.0) > 0
                        for m in g.modules for p in model.get_submodule(m).parameters())
        return kept_accuracy_by_task(history.epochs, history.best_epoch), total, trainable, seconds

    shared_acc, shared_params, shared_trainable, shared_seconds = run(tasks)
    separate_acc, separate_params, separate_trainable, separate_seconds = {}, 0, 0, 0.0
    for t, classes in tasks.items():
        acc, total, trainable, seconds = run({t: classes})
        separate_acc[t] = acc.get(t, math.nan)
        separate_params += total
        separate_trainable += trainable
        separate_seconds += seconds
    return TaskComparison(list(tasks), shared_acc, separate_acc, shared_params, separate_params,
                          shared_trainable, separate_trainable, shared_seconds, separate_seconds)


# --- runs in a worker process -----------------------------------------------------------------


class EncodedMultiTaskDataset(_TaskNames):
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
        from core.train.base import encode_images

        if self.images.shape[-2:] == (size, size):
            return self.images
        return encode_images(self._as_pictures(), size)

    def _as_pictures(self):
        return [(Image.fromarray(img.permute(1, 2, 0).numpy(), "RGB"), None) for img in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        i = operator.index(i)
        image = Image.fromarray(self.images[i].permute(1, 2, 0).numpy(), "RGB")
        return image, {t: int(v) for t, v in zip(self._tasks, self._labels[i].tolist())}


def encode_multitask_inputs(train_ds, val_ds, size: int) -> dict[str, torch.Tensor]:
    """What a multi-task worker reads from the run folder: both splits' images at the run's size
    and their label matrices (columns in the training set's task order)."""
    from core.train.base import encode_images

    tasks = train_ds.task_names
    return {"train_images": encode_images(train_ds, size), "train_labels": train_ds.label_matrix(tasks),
            "val_images": encode_images(val_ds, size), "val_labels": val_ds.label_matrix(tasks)}


def starting_multitask_model(name: str, tasks: Mapping[str, Sequence[str]], *, pretrained: bool = True,
                             seed: int = 0, image_size: int | None = None, head: str | Mapping[str, str] = "linear",
                             weights_path=None) -> MultiTaskClassifier:
    """The exact multi-task model a run starts from (the same seed gives the same random heads)."""
    from core import backbones
    from core.seeding import seeded

    with seeded(seed):
        base = backbones.load(name, pretrained=pretrained and weights_path is None, weights_path=weights_path)
        return multitask_classifier(base, tasks, head, image_size=image_size)


def new_multitask_record(train_ds, val_ds, *, backbone: str, pretrained: bool, config, weights_path=None,
                         head: str = "linear", weighting: str = "equal", weights: Mapping[str, float] | None = None,
                         pcgrad: bool = False, conflict_batches: int = 4, owner: str = "", label: str = "",
                         dataset: str = ""):
    """A queued multi-task run's record (``config["kind"] == "multitask"``, ``config["tasks"]``: task ->
    classes in output order), after checking that the run can start at all. ``conflict_batches``:
    batches measuring gradient conflict after each epoch (0: none, e.g. for a comparison that
    reads accuracy alone)."""
    from dataclasses import replace

    from core.jobs import new_record

    tasks = getattr(train_ds, "tasks", None)
    if not tasks:
        raise DataError("Multi-task training needs images with a label per task: a ZIP with labels.csv, "
                        "or the multi-task demo on the Data page.")
    MultiTask(weighting, weights)  # an unknown weighting is refused here, not in the worker
    unlabelled = [t for t in tasks if not any(v != MISSING for v in train_ds.task_labels(t))]
    if unlabelled:
        raise DataError(f"No training image is labelled for {_show(unlabelled)}: label a few more images for "
                        "it, or use a smaller validation share on the Data page.")
    record = new_record(train_ds, val_ds, backbone=backbone, pretrained=pretrained, config=config,
                        weights_path=weights_path, head=head, owner=owner, dataset=dataset,
                        label=label or f"{backbone} {'pretrained' if pretrained else 'scratch'}, multi-task")
    return replace(record, config={**record.config, "kind": "multitask", "tasks": train_ds.tasks,
                                   "weighting": weighting, "task_weights": dict(weights or {}),
                                   "pcgrad": bool(pcgrad), "conflict_batches": int(conflict_batches)})


def start_multitask_run(store, train_ds, val_ds, *, queue=None, **options):
    """Queue a multi-task run (options as ``new_multitask_record``'s) to train in a worker process."""
    from core.jobs import start_folder_run

    record = new_multitask_record(train_ds, val_ds, **options)
    size = int(options["config"].image_size)
    return start_folder_run(store, record, lambda: encode_multitask_inputs(train_ds, val_ds, size), queue=queue)


def train_folder(store, record, stop, log, save, distributed=None):
    """What a worker runs for a ``"multitask"`` run folder: the one loop with the ``MultiTask``
    objective, live events, the best weights kept at each epoch end; returns (status, message,
    record changes), as ``core.worker.train_classifier`` does."""
    from dataclasses import asdict

    from core.train.base import TrainConfig
    from core.train.loop import Trainer
    from core.worker import _BestWeights, _fit_info, ending, status_of

    cfg = record.config
    config = TrainConfig.from_dict(cfg)
    tasks = cfg.get("tasks") or {}
    inputs = store.load_inputs(record.id)
    train_ds = EncodedMultiTaskDataset(inputs["train_images"], inputs["train_labels"], tasks)
    val_ds = EncodedMultiTaskDataset(inputs["val_images"], inputs["val_labels"], tasks)
    del inputs
    model = starting_multitask_model(record.backbone, tasks, pretrained=record.pretrained, seed=config.seed,
                                     image_size=config.image_size, head=cfg.get("head", "linear"),
                                     weights_path=cfg.get("weights_file"))
    objective = MultiTask(cfg.get("weighting", "equal"), cfg.get("task_weights") or None,
                          pcgrad=bool(cfg.get("pcgrad", False)), conflict_batches=int(cfg.get("conflict_batches", 4)))
    main = distributed is None or distributed.main
    callbacks = [log]
    if main:
        store.save_start(record.id, model, record.pretrained)
        callbacks = [_BestWeights(store, record.id, model, lambda **c: save(**c)), log]
    history = Trainer(model, objective, config, callbacks, stop, distributed=distributed).fit(
        {"train": train_ds, "val": val_ds})
    status = status_of(history.stopped)
    if history.epochs and main:
        store.save_model(record.id, model)
    return status, history.message, {
        "epochs": [asdict(e) for e in history.epochs],  # with val_acc_by_task, train_loss_by_task, ...
        "info": {**_fit_info(store, record.id), **record.info, **ending(history)},
        "config": {**cfg, "batch_size": history.batch_size or config.batch_size,
                   "used_feature_cache": history.used_feature_cache,
                   "images_per_second": history.images_per_second},
    }
