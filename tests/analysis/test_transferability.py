"""LogME and the backbone ranking: hand-checkable cases, then real features on real images."""

import math

import numpy as np
import pytest
import torch

from core.analysis import transferability
from core.analysis.transferability import balanced_subset, kendall_tau, logme, max_evidence
from core.errors import UserInputError
from core.models import backbones


def direct_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The evidence formula evaluated with dense matrices, no SVD: log p(y | F, alpha, beta) / n."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, log_det = np.linalg.slogdet(a)
    value = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
             - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - log_det / 2)
    return value / n


def gaussian_log_density(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The same evidence from its definition: y ~ N(0, F F^T / alpha + I / beta), per sample."""
    n = len(y)
    cov = f @ f.T / alpha + np.eye(n) / beta
    _, log_det = np.linalg.slogdet(cov)
    return (-0.5 * (y @ np.linalg.solve(cov, y) + log_det + n * math.log(2 * math.pi))) / n


@pytest.mark.parametrize("n, d", [(7, 3), (4, 6)])  # more images than features, and fewer
def test_the_evidence_matches_the_formula_and_the_gaussian_it_comes_from(n, d):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    y = (rng.random(n) > 0.5).astype(float)
    result = max_evidence(f, y)
    assert result.log_evidence == pytest.approx(direct_log_evidence(f, y, result.alpha, result.beta), rel=1e-9)
    assert result.log_evidence == pytest.approx(gaussian_log_density(f, y, result.alpha, result.beta), rel=1e-9)


def test_the_fixed_point_is_a_maximum_of_the_evidence():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(30, 5))
    y = f @ rng.normal(size=5) + 0.3 * rng.normal(size=30)
    best = max_evidence(f, y)
    for da, db in [(1.2, 1), (0.8, 1), (1, 1.2), (1, 0.8), (1.1, 0.9)]:
        assert direct_log_evidence(f, y, best.alpha * da, best.beta * db) < best.log_evidence


def test_features_that_separate_the_classes_score_higher_than_random_ones():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 20)
    separating = rng.normal(size=(60, 16))
    separating[np.arange(60), labels] += 4.0  # one direction per class
    random = rng.normal(size=(60, 16))
    assert logme(separating, labels) > logme(random, labels) + 0.1


def test_renaming_the_classes_does_not_change_the_score():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(40, 8))
    labels = rng.integers(0, 4, size=40)
    renamed = np.array([7, 2, 9, 4])[labels]
    assert logme(f, renamed) == pytest.approx(logme(f, labels), rel=1e-12)


def test_one_class_or_mismatched_shapes_are_clear_errors():
    f = np.ones((5, 2))
    with pytest.raises(UserInputError, match="two different labels"):
        logme(f, np.zeros(5))
    with pytest.raises(UserInputError, match="must match"):
        logme(f, [0, 1])
    with pytest.raises(UserInputError, match="NaN"):
        logme(np.full((3, 2), np.nan), [0, 1, 0])


def test_kendall_tau_of_orders_that_agree_and_disagree():
    assert kendall_tau([1, 2, 3], [0.5, 0.6, 0.9])[0] == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [0.9, 0.6, 0.5])[0] == pytest.approx(-1.0)
    with pytest.raises(UserInputError):
        kendall_tau([1.0], [0.5])


def test_a_balanced_subset_keeps_every_class():
    from PIL import Image

    from core.data import ImageDataset

    img = Image.new("RGB", (4, 4))
    ds = ImageDataset.from_items([(img, "a")] * 30 + [(img, "b")] * 3)
    sub = balanced_subset(ds, 10)
    assert len(sub) == 10
    assert sub.counts() == {"a": 7, "b": 3}


# --- real images: scikit-learn's handwritten digits through the bundled backbone -------------


def digits_dataset(per_class: int = 12, classes=(0, 1, 7), size: int = 64):
    from PIL import Image
    from sklearn.datasets import load_digits

    from core.data import ImageDataset

    digits = load_digits()
    items = []
    for c in classes:
        for image in digits.images[digits.target == c][:per_class]:
            grey = (image / 16 * 255).astype(np.uint8)
            items.append((Image.fromarray(grey).resize((size, size), Image.BILINEAR).convert("RGB"), str(c)))
    return ImageDataset.from_items(items)


def test_pretrained_features_rank_above_random_init_features_of_the_same_network():
    from core import models
    from core.analysis import domain

    ds = digits_dataset()
    labels = np.asarray(ds.labels)
    scores = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        bb = models.load(models.DEFAULT_BACKBONE, pretrained=pretrained)
        feats = domain.extract_features(bb.model, ds, [domain.HEAD_INPUT], 64, mean=bb.mean, std=bb.std,
                                        head_module=bb.head_module)[domain.HEAD_INPUT]
        scores[pretrained] = logme(feats.numpy(), labels)
    assert scores[True] > scores[False], scores


def test_rank_backbones_scores_the_offline_ones_and_notes_the_rest(monkeypatch):
    from core import models

    real = models.list_backbones()
    # pretend one torchvision backbone is missing its weights, whatever this machine's cache holds
    fake = [info if info.name != "resnet18" else models.BackboneInfo(info.name, info.title, info.source, False,
                                                                        info.params_millions)
            for info in real]
    monkeypatch.setattr(backbones, "list_backbones", lambda: fake)
    seen = []
    rows = transferability.rank_backbones(digits_dataset(per_class=6), ["resnet18", models.DEFAULT_BACKBONE],
                                          image_size=64, max_images=12,
                                          progress=lambda i, n, name: seen.append((i, n)))
    assert [r["name"] for r in rows] == [models.DEFAULT_BACKBONE, "resnet18"]
    assert math.isfinite(rows[0]["logme"]) and rows[0]["params"] > 1_000_000
    assert rows[1]["logme"] is None and "not on this server" in rows[1]["note"]
    assert seen[-1] == (2, 2)


def test_rank_backbones_can_add_the_random_weight_baseline_which_ranks_below_pretrained():
    from core import models

    rows = transferability.rank_backbones(digits_dataset(per_class=6), [models.DEFAULT_BACKBONE],
                                          image_size=64, from_scratch=True)
    assert [r["pretrained"] for r in rows] == [True, False]
    assert rows[0]["logme"] > rows[1]["logme"]
    assert "random weights" in rows[1]["title"]
    # the count beside LogME is the Model page's: the backbone with a new head for these three classes
    model = models.classifier(models.load(), 3)
    assert rows[0]["params"] == rows[1]["params"] == sum(p.numel() for p in model.parameters())


def test_more_features_than_images_still_gives_the_evidence_of_its_gaussian():
    # the labels can be fitted exactly here, so beta grows without bound while the evidence settles
    rng = np.random.default_rng(4)
    f = np.abs(rng.normal(size=(12, 200)))
    y = (np.arange(12) % 3 == 0).astype(float)
    result = max_evidence(f, y)
    assert math.isfinite(result.log_evidence)
    assert result.log_evidence == pytest.approx(gaussian_log_density(f, y, result.alpha, result.beta), rel=1e-6)
    assert math.isfinite(logme(f, np.arange(12) % 3))
