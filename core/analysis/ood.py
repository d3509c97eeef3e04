""""Unlike anything it was trained on": how far an image's features are from the training set.

A classifier always names one of its classes, even for a cat shown to a shapes model. The head
reads the pooled features (``model.forward_features``); an image whose features lie far from
every training image's is outside what the model learnt. The score is the Mahalanobis distance
of its features from the training features' mean, under their covariance shrunk toward a scaled
identity (Ledoit–Wolf: with fewer images than feature dimensions the plain covariance cannot be
inverted). The threshold is calibrated on the validation split: by default its 95th percentile,
so about one validation image in twenty is flagged, and images far beyond it are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torchvision.transforms import v2 as T

from core.data.encoded import normalise
from core.errors import DataError
from core.models.heads import Classifier

__all__ = ["OODDetector", "pooled_features", "fit_ood"]


def pooled_features(model: Classifier, images, batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """The features the head reads, float64 array[N, D], for PIL images (or a dataset's images),
    preprocessed as ``predict_proba`` does (short side resized, centre crop, normalised)."""
    device = torch.device(device)
    resize = T.Compose([T.ToImage(), T.Resize(model.image_size, antialias=True), T.CenterCrop(model.image_size)])
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    images = list(images)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.stack([resize(img.convert("RGB")) for img in images[start:start + batch_size]])
                out.append(model.forward_features(normalise(batch.to(device), mean, std)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros((0, 0))


@dataclass
class OODDetector:
    """Scores images by their features' distance from the training set; above ``threshold`` is unusual."""

    covariance: LedoitWolf
    threshold: float
    quantile: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        # LedoitWolf.mahalanobis gives squared distances; the root reads as "how many spreads away"
        return np.sqrt(np.maximum(self.covariance.mahalanobis(features), 0.0))

    def score_images(self, model: Classifier, images) -> np.ndarray:
        return self.scores(pooled_features(model, images))

    def unusual(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold


def fit_ood(model: Classifier, train_images, val_images, quantile: float = 0.95) -> OODDetector:
    """A detector fitted on the training images' features and calibrated on the validation images':
    the threshold is the ``quantile`` of their scores."""
    train_images, val_images = list(train_images), list(val_images)
    if len(train_images) < 2:
        raise DataError("Spotting unusual images needs at least two training images.")
    if not val_images:
        raise DataError("Spotting unusual images needs validation images to calibrate on: "
                        "keep a validation split on the Data page.")
    covariance = LedoitWolf().fit(pooled_features(model, train_images))
    detector = OODDetector(covariance, float("inf"), quantile)
    detector.threshold = float(np.quantile(detector.score_images(model, val_images), quantile))
    return detector
