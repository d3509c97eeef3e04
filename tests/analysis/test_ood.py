"""A shapes model warns that a cat photo is unlike anything it was trained on; shapes it has not
seen but that look like its training images mostly pass."""

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from core import models
from core.analysis.ood import fit_ood
from core.data import demo_dataset, split
from core.errors import DataError


@pytest.fixture(scope="module")
def shapes_model(lite0):
    # Feature extraction leaves the backbone as it was, so a new head on Lite0 reads exactly the
    # features a shapes model trained with the default strategy reads.
    return models.classifier(lite0, 4, image_size=64)


def test_a_cat_photo_is_flagged_and_unseen_shapes_mostly_are_not(shapes_model):
    train, val = split(demo_dataset(per_class=12, seed=0), 0.34, 0)
    detector = fit_ood(shapes_model, train.images, val.images)
    unseen = demo_dataset(per_class=5, seed=7).images
    far = [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.astronaut())]
    far_scores = detector.score_images(shapes_model, far)
    near_scores = detector.score_images(shapes_model, unseen)
    assert detector.unusual(far_scores).all()
    assert detector.unusual(near_scores).mean() <= 0.25
    assert far_scores.min() > np.median(near_scores)


def test_calibration_needs_validation_images(shapes_model):
    with pytest.raises(DataError, match="validation"):
        fit_ood(shapes_model, demo_dataset(per_class=2).images, [])
