"""How a trained classifier does on a labelled dataset: accuracy, confusion, per-class scores, the images
behind a confusion-matrix cell and the worst mistakes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from core.analysis.predict import predict_proba, predict_tasks
from core.data.multitask import MISSING, MultiTaskDataset
from core.errors import ConfigError, DataError
from core.hooks import preserved
from core.models.heads import Classifier

__all__ = ["Evaluation", "Example", "Mistake", "cell_examples", "evaluate_dataset", "worst_mistakes",
           "confusion_by_task"]


class Mistake(NamedTuple):
    """A wrong prediction: which image, what it is, what the model said and how sure it was."""

    index: int
    true: str
    predicted: str
    confidence: float  # the probability of the predicted class
    top3: list[tuple[str, float]]  # (class, probability), most probable first


class Example(NamedTuple):
    """One validation image as the model saw it: its class, the model's answer, how sure and how wrong."""

    index: int  # position in the evaluated dataset
    true: str
    predicted: str
    confidence: float  # the probability of the predicted class
    loss: float  # cross-entropy: -log p(true class); high when the model was sure of something else


@dataclass(frozen=True)
class Evaluation:
    """Predicted probabilities next to the true labels, and the scores computed from them."""

    probs: np.ndarray  # float [N, C]
    labels: np.ndarray  # int [N]
    classes: list[str]

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1) if len(self.probs) else np.zeros(0, dtype=np.int64)

    @property
    def accuracy(self) -> float:
        return float((self.preds == self.labels).mean()) if len(self.labels) else float("nan")

    @property
    def losses(self) -> np.ndarray:
        """Each image's cross-entropy, -log p(true class), the loss training minimised."""
        if not len(self.labels):
            return np.zeros(0)
        p_true = self.probs[np.arange(len(self.labels)), self.labels]
        # a probability that underflowed to 0 would give an infinite loss: cap it where float64 still counts
        return -np.log(np.clip(p_true, np.finfo(np.float64).tiny, 1.0))

    def confusion(self, normalize: bool = False) -> np.ndarray:
        """Rows are true classes, columns predicted ones; ``normalize`` divides each row by its count.

        A class with no images keeps a row of zeros instead of NaNs.
        """
        from sklearn.metrics import confusion_matrix

        counts = confusion_matrix(self.labels, self.preds, labels=list(range(len(self.classes))))
        if not normalize:
            return counts
        totals = counts.sum(axis=1, keepdims=True)
        return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)

    def per_class(self) -> list[dict]:
        """Precision, recall, F1 and support of every class (0 where a score is undefined)."""
        from sklearn.metrics import precision_recall_fscore_support

        precision, recall, f1, support = precision_recall_fscore_support(
            self.labels, self.preds, labels=list(range(len(self.classes))), zero_division=0
        )
        return [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(self.classes, precision, recall, f1, support, strict=True)
        ]

    def most_confidently_wrong(self, k: int = 12) -> list[Mistake]:
        """The ``k`` wrong predictions the model was surest of, surest first."""
        preds = self.preds
        wrong = np.flatnonzero(preds != self.labels)
        confidence = self.probs[wrong, preds[wrong]] if len(wrong) else np.zeros(0)
        # stable sort: equal confidences keep dataset order, so the gallery does not reshuffle
        order = wrong[np.argsort(-confidence, kind="stable")][:max(0, k)]
        mistakes = []
        for i in order:
            top = np.argsort(-self.probs[i], kind="stable")[:3]
            mistakes.append(Mistake(
                index=int(i),
                true=self.classes[self.labels[i]],
                predicted=self.classes[preds[i]],
                confidence=float(self.probs[i, preds[i]]),
                top3=[(self.classes[j], float(self.probs[i, j])) for j in top],
            ))
        return mistakes


def _class_index(ev: Evaluation, name: int | str) -> int:
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        if 0 <= int(name) < len(ev.classes):
            return int(name)
    elif name in ev.classes:
        return ev.classes.index(name)
    raise ConfigError(f"Unknown class {name!r}: choose one of {', '.join(ev.classes)}.")


def _examples(ev: Evaluation, indices: np.ndarray) -> list[Example]:
    """``indices`` as Examples, highest loss first; equal losses keep dataset order (a stable gallery)."""
    losses, preds = ev.losses, ev.preds
    order = indices[np.argsort(-losses[indices], kind="stable")]
    return [Example(index=int(i), true=ev.classes[ev.labels[i]], predicted=ev.classes[preds[i]],
                    confidence=float(ev.probs[i, preds[i]]), loss=float(losses[i])) for i in order]


def cell_examples(ev: Evaluation, true: int | str, predicted: int | str) -> list[Example]:
    """Every image behind one confusion-matrix cell (this true class, this prediction), highest loss first.

    On the diagonal these are the correct answers, the least sure first.
    """
    t, p = _class_index(ev, true), _class_index(ev, predicted)
    return _examples(ev, np.flatnonzero((ev.labels == t) & (ev.preds == p)))


def worst_mistakes(ev: Evaluation, k: int | None = None) -> list[Example]:
    """The misclassified images, highest loss first; the first ``k`` when given."""
    wrong = _examples(ev, np.flatnonzero(ev.preds != ev.labels))
    return wrong if k is None else wrong[:max(0, k)]


def _labels(ds) -> np.ndarray:
    labels = getattr(ds, "labels", None)
    if labels is None:
        labels = [ds[i][1] for i in range(len(ds))]
    return np.asarray(list(labels), dtype=np.int64)


def evaluate_dataset(model: Classifier, ds, device: str | torch.device = "cpu", batch_size: int = 64) -> Evaluation:
    """Run ``model`` over every image of ``ds`` (eval mode, no augmentation) and keep its probabilities.

    The model is moved to ``device`` for the pass and put back where it was, in the mode it was in.
    """
    if len(ds) == 0:
        raise DataError("There are no images to evaluate on: the validation split is empty. "
                        "Add images or raise the validation fraction on the Data page.")
    ds_classes = getattr(ds, "classes", None)
    if ds_classes is not None and list(ds_classes) != list(model.classes):
        raise DataError(
            f"This model was trained on the classes {', '.join(model.classes)}, but the dataset has "
            f"{', '.join(ds_classes)}. Load the dataset the model was trained on, or pick another run."
        )
    labels = _labels(ds)
    if labels.min() < 0 or labels.max() >= len(model.classes):
        raise DataError("The dataset has labels the model has no class for.")
    device = torch.device(device)
    first = next(model.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    try:
        with preserved(model):  # per module: frozen BatchNorm layers may have been in eval mode
            model.to(device)
            probs = predict_proba(model, [ds[i][0] for i in range(len(ds))], device, batch_size)
    finally:
        model.to(home)
    return Evaluation(probs=probs.numpy().astype(np.float64), labels=labels, classes=list(model.classes))


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
