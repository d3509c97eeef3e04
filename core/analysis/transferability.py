"""How well a backbone's features suit a labelled image set, before any training: LogME.

LogME (You et al., 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning") treats each class as a one-vs-rest regression target ``y`` on the features ``F`` with a
Bayesian linear model: weights ``w ~ N(0, 1/alpha I)``, noise ``N(0, 1/beta)``. The evidence
``p(y | F, alpha, beta)`` integrates the weights out; alpha and beta are set by the fixed-point
iteration of evidence maximisation (MacKay), which the SVD of ``F`` makes cheap for every class.
The score is the maximised log evidence per sample, averaged over the classes: higher means a
linear model on these features explains the labels with less to learn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.analysis import domain
from core.errors import UserInputError
from core.models import backbones
from core.seeding import seeded

__all__ = ["params_with_new_head", "Evidence", "max_evidence", "logme", "kendall_tau", "rank_backbones", "balanced_subset"]

MAX_ITERATIONS = 100
TOLERANCE = 1e-6
TINY = 1e-300


@dataclass(frozen=True)
class Evidence:
    """The maximised evidence of one target: log evidence per sample at the fixed point alpha, beta."""

    log_evidence: float  # divided by n
    alpha: float
    beta: float
    iterations: int


def _as_features(features) -> np.ndarray:
    f = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        raise UserInputError("LogME needs a feature matrix with one row per image and at least two images.")
    if not np.isfinite(f).all():
        raise UserInputError("These features hold NaN or infinite values: the model's outputs are not usable.")
    return f


class _Decomposition:
    """What every target shares: the singular values of F and its left singular vectors."""

    def __init__(self, f: np.ndarray):
        self.n, self.d = f.shape
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        self.u = u
        self.s = s
        self.sigma = s ** 2  # eigenvalues of F^T F (the other d - len(s) are zero)

    def fit(self, y: np.ndarray) -> Evidence:
        n, d, s, sigma = self.n, self.d, self.s, self.sigma
        z = self.u.T @ y  # y in the basis of F's column space
        outside = max(float(y @ y - z @ z), 0.0)  # the part of y no weights can reach

        def posterior(alpha: float, beta: float) -> tuple[float, float]:
            """(m^T m, ||F m - y||^2) for the posterior mean m, in the basis of F's singular vectors."""
            m = beta * s * z / (alpha + beta * sigma)
            return float(m @ m), float(np.sum((s * m - z) ** 2)) + outside

        def log_evidence(alpha: float, beta: float) -> float:
            m2, residual = posterior(alpha, beta)
            # log|A| for A = alpha I + beta F^T F: the d - rank other directions carry only alpha
            log_det = float(np.sum(np.log(alpha + beta * sigma))) + (d - len(sigma)) * math.log(alpha)
            return (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                    - beta / 2 * residual - alpha / 2 * m2 - log_det / 2) / n

        alpha, beta = 1.0, 1.0
        previous = log_evidence(alpha, beta)
        iterations = 0
        while iterations < MAX_ITERATIONS:
            iterations += 1
            m2, residual = posterior(alpha, beta)
            gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))  # well-determined directions
            new_alpha = gamma / max(m2, TINY)
            # With more features than images the labels can be fitted exactly: gamma -> n and beta
            # grows without bound while the evidence converges, so the evidence decides when to stop.
            new_beta = max(n - gamma, n * 1e-12) / max(residual, TINY)
            current = log_evidence(new_alpha, new_beta)
            settled = abs(new_alpha - alpha) <= TOLERANCE * alpha and (
                abs(new_beta - beta) <= TOLERANCE * beta or abs(current - previous) <= TOLERANCE * 1e-4)
            alpha, beta, previous = new_alpha, new_beta, current
            if settled:
                break
        return Evidence(previous, alpha, beta, iterations)


def max_evidence(features, target) -> Evidence:
    """The maximised log evidence (per sample) of one real-valued target ``y[n]`` given ``F[n, d]``."""
    f = _as_features(features)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if len(y) != len(f):
        raise UserInputError(f"{len(f)} feature rows but {len(y)} targets: they must match.")
    return _Decomposition(f).fit(y)


def logme(features, labels) -> float:
    """LogME of ``features[n, d]`` for class ``labels[n]``: one-vs-rest evidence averaged over classes."""
    f = _as_features(features)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(f):
        raise UserInputError(f"{len(f)} feature rows but {len(labels)} labels: they must match.")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise UserInputError("LogME compares classes: the images need at least two different labels.")
    decomposition = _Decomposition(f)
    return float(np.mean([decomposition.fit((labels == c).astype(np.float64)).log_evidence for c in classes]))


def kendall_tau(scores: Sequence[float], accuracies: Sequence[float]) -> tuple[float, float]:
    """(Kendall's tau, its p-value) between predicted scores and the accuracies actually reached."""
    from scipy.stats import kendalltau

    scores = [float(v) for v in scores]
    accuracies = [float(v) for v in accuracies]
    if len(scores) != len(accuracies):
        raise UserInputError("Each backbone needs both a score and an accuracy.")
    if len(scores) < 2:
        raise UserInputError("A rank correlation needs at least two backbones with a finished run.")
    result = kendalltau(scores, accuracies)
    return float(result.statistic), float(result.pvalue)


def balanced_subset(ds, max_images: int, seed: int = 0):
    """At most ``max_images`` images of ``ds``, as evenly spread over the classes as they allow."""
    if len(ds) <= max_images:
        return ds
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(ds.labels):
        by_class.setdefault(int(label), []).append(i)
    queues = [list(rng.permutation(indices)) for _, indices in sorted(by_class.items())]
    picked: list[int] = []
    while len(picked) < max_images:  # one image per class in turn, so small classes keep all theirs
        for queue in queues:
            if queue and len(picked) < max_images:
                picked.append(int(queue.pop()))
    return ds.subset(sorted(picked))


def params_with_new_head(bb, n_classes: int) -> int:
    """Parameters of ``bb`` with its ImageNet head replaced by a linear head for ``n_classes``: the
    model a run trains. Counting the 1,000-class head (1.28 M in EfficientNet-Lite0) put 4.7 M beside
    the Model page's 3.4 M for the same network."""
    head = bb.model.get_submodule(bb.head_module)
    old = sum(p.numel() for p in head.parameters())
    return sum(p.numel() for p in bb.model.parameters()) - old + (head.in_features + 1) * n_classes


def rank_backbones(ds, names: Sequence[str], image_size: int = 128, max_images: int = 200, *,
                   from_scratch: bool = False, seed: int = 0,
                   progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """LogME of every backbone's pooled head-input features on ``ds``, best first.

    One forward pass of up to ``max_images`` images per backbone. A backbone whose pretrained
    weights cannot be loaded offline is listed last with ``logme`` None and a ``note``. With
    ``from_scratch``, each architecture is also scored with random weights (seeded by ``seed``):
    the from-scratch baseline, which works offline for every architecture.
    Rows: ``name``, ``title``, ``pretrained``, ``logme``, ``params`` (parameters of the model that
    would train: the backbone with a new head for ``ds``'s classes, as the Model page counts them; the
    catalogue's figure, ImageNet head included, for a backbone that could not be loaded), ``seconds``,
    ``note``.
    """
    if len(ds.classes) < 2:
        raise UserInputError("Ranking backbones needs a dataset with at least two classes.")
    catalogue = {info.name: info for info in backbones.list_backbones()}
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise UserInputError(f"Unknown backbone(s) {', '.join(unknown)}: pick from {', '.join(catalogue)}.")
    subset = balanced_subset(ds, max_images, seed)
    labels = np.asarray(subset.labels)
    variants = [(name, True) for name in names] + ([(name, False) for name in names] if from_scratch else [])
    rows = []
    for i, (name, pretrained) in enumerate(variants):
        info = catalogue[name]
        title = info.title if pretrained else f"{info.title} · random weights"
        if progress is not None:
            progress(i, len(variants), title)
        row = {"name": name, "title": title, "pretrained": pretrained, "logme": None,
               "params": int(round(info.params_millions * 1e6)), "seconds": 0.0, "note": ""}
        if pretrained and not info.offline:
            row["note"] = "pretrained weights not on this server: not scored"
            rows.append(row)
            continue
        started = time.perf_counter()
        try:
            with seeded(seed):
                bb = backbones.load(name, pretrained=pretrained)
        except UserInputError as exc:
            row["note"] = str(exc)
            rows.append(row)
            continue
        row["params"] = params_with_new_head(bb, len(ds.classes))
        key = f"pretrained:{name}" if pretrained else f"scratch:{name}:{seed}"
        feats = domain.extract_features(bb.model, subset, [domain.HEAD_INPUT], image_size, model_key=key,
                                        mean=bb.mean, std=bb.std, head_module=bb.head_module)[domain.HEAD_INPUT]
        row["logme"] = logme(feats.numpy(), labels)
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
    if progress is not None:
        progress(len(variants), len(variants), "done")
    return sorted(rows, key=lambda r: (r["logme"] is None, -(r["logme"] or 0.0)))
