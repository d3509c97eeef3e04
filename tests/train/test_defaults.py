"""Defaults that work on people's own images: TrainConfig() is the feature-extraction preset, and the
augmentation toggles (flips, colour jitter) reach the training batches only when switched on."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core import models
from core.data import ImageDataset, grayscale_share
from core.models.backbones import LayerGroup
from core.models.heads import Classifier
from core.train import Classification, Trainer
from core.train.base import TrainConfig
from core.train.strategies import strategy_config


def test_train_config_defaults_are_the_feature_extraction_preset():
    groups = models.group_names(models.DEFAULT_BACKBONE)
    preset = strategy_config("feature_extraction", groups).to_dict()
    default = TrainConfig().to_dict()
    for settings in (preset, default):
        settings.pop("freeze")
    assert default == preset
    assert not TrainConfig().flip and not TrainConfig().color_jitter  # never silently on


def halves(n=4, size=32, left=220, right=30):
    """Images bright on the left and dark on the right: a horizontal flip swaps the sides."""
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[:, : size // 2] = left
    pixels[:, size // 2:] = right
    images = [Image.fromarray(pixels) for _ in range(n)]
    return ImageDataset(images, [i % 2 for i in range(n)], ["a", "b"], [f"{i}.png" for i in range(n)])


class Views(Classification):
    """Records every augmented view the trainer caches for the training images."""

    def __init__(self):
        super().__init__()
        self.views = []

    def on_cache_view(self, trainer, source, view, images_uint8):
        if source == "train" and view is not None:
            self.views.append(images_uint8.clone())


def tiny() -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 4, 3, padding=1))
    net.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    net.add_module("fc", nn.Linear(4, 2))
    groups = [LayerGroup("stem", ["stem"]), LayerGroup("head", ["fc"])]
    return Classifier(net, backbone_name="tiny", layer_groups=groups, head_module="fc", classes=["a", "b"],
                      mean=(0.5,) * 3, std=(0.25,) * 3, image_size=32, pretrained=False).eval()


def seen_views(images, **settings):
    # a frozen body caches one view more before each epoch: six epochs see all six
    config = TrainConfig(epochs=6, batch_size=4, image_size=32, freeze=["stem"], cached_views=6,
                         early_stopping=0, **settings)
    objective = Views()
    Trainer(tiny(), objective, config).fit({"train": images, "val": halves(2)})
    return torch.cat(objective.views).float()


def test_a_frozen_body_caches_each_image_itself_first_then_its_augmented_crops():
    """The head of a frozen body is judged on whole images: it trains on them too, not on crops alone
    (crops only left feature extraction up to 4.8 points below a linear probe on the same features)."""
    from core.data.encoded import encode_images

    images = halves(8)
    views = seen_views(images)
    whole = encode_images(images, 32).float()
    per_view = views.view(-1, *whole.shape)
    assert len(per_view) == 6
    assert torch.equal(per_view[0], whole)
    assert all(not torch.equal(view, whole) for view in per_view[1:])


@pytest.mark.parametrize("flip", [False, True])
def test_flips_reach_the_training_views_only_when_switched_on(flip):
    views = seen_views(halves(), flip=flip)
    assert len(views) > 0
    left, right = views[..., :, :8].mean(dim=(1, 2, 3)), views[..., :, -8:].mean(dim=(1, 2, 3))
    flipped = (right > left).sum().item()
    assert (flipped > 0) == flip


def test_colour_jitter_reaches_the_training_views_only_when_switched_on():
    def brightness_spread(views):
        return views.mean(dim=(1, 2, 3)).std().item()

    flat = halves(left=128, right=128)  # every crop of a flat grey image is the same grey
    assert brightness_spread(seen_views(flat)) < 0.5
    assert brightness_spread(seen_views(flat, color_jitter=True)) > 2


def test_grayscale_share_counts_images_whose_channels_are_equal():
    gray = halves(3)
    colour = Image.fromarray(np.dstack([np.full((8, 8), v, np.uint8) for v in (200, 40, 40)]))
    mixed = ImageDataset(list(gray.images) + [colour], [0, 1, 0, 1], ["a", "b"], list("abcd"))
    assert grayscale_share(gray) == 1.0
    assert grayscale_share(mixed) == pytest.approx(0.75)


@pytest.mark.parametrize("strategy", ["last_stage", "progressive", "full"])
def test_fine_tuning_presets_warm_the_head_up_and_keep_batchnorm_statistics(strategy):
    groups = models.group_names(models.DEFAULT_BACKBONE)
    config = strategy_config(strategy, groups)
    assert 0 < config.warmup_epochs < config.epochs and config.early_stopping > 0
    assert config.keep_bn_stats and not config.train_bn
    # rates shrink toward the input: the earliest group that trains moves slowest
    training = [g for g in groups if g not in config.freeze]
    rates = [config.lr_multipliers.get(g, 1.0) for g in training]
    assert rates == sorted(rates) and rates[-1] == 1.0
    assert not strategy_config("feature_extraction", groups).keep_bn_stats  # nothing in the body trains
