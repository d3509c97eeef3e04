"""Pinned validation images recorded at every epoch end (TrainConfig.watch, History.watch)."""

import math

import pytest
import torch
import torch.nn.functional as F

from core import models
from core.analysis.saliency import gradcam_maps
from core.data.encoded import encode_images, normalise
from core.errors import ConfigError
from core.models.heads import starting_model
from core.train import TrainConfig, fit
from core.train.watch import CAM_SIZE, cam_movement, watch_layer
from tests.toys import Shapes, tiny

PINS = (0, 1, 3)


def _fit(strategy_freeze, epochs=3, **kw):
    model = tiny(classes=("disc", "square"))
    config = TrainConfig(epochs=epochs, batch_size=8, lr=3e-2, image_size=32, freeze=strategy_freeze,
                         early_stopping=0, watch=PINS, **kw)
    return model, fit(model, Shapes(32, seed=0, size=32), Shapes(8, seed=1, size=32), config)


def test_every_epoch_records_each_pinned_image_with_probabilities_and_a_cam():
    _, history = _fit([])
    assert [(f.epoch, f.index) for f in history.watch] == [(e, i) for e in (1, 2, 3) for i in PINS]
    for frame in history.watch:
        assert math.isclose(sum(frame.probs), 1.0, abs_tol=5e-3)
        assert len(frame.cam) == CAM_SIZE and all(len(row) == CAM_SIZE for row in frame.cam)
        assert max(max(row) for row in frame.cam) <= 1.0
        assert frame.channels  # the layer's most-changed channels


def test_fine_tuning_moves_the_cams_and_feature_extraction_keeps_the_attention_maps_of_a_frozen_body():
    _, tuned = _fit([], epochs=4)
    first = [f.cam for f in tuned.watch if f.epoch == 1]
    last = [f.cam for f in tuned.watch if f.epoch == 4]
    assert first != last
    assert cam_movement(tuned.watch) > 0
    # a frozen body: the CAM layer's activations never change, only the head that weighs them
    _, frozen = _fit(["stem", "block"], epochs=4)
    assert frozen.used_feature_cache
    maps = [f.channels for f in frozen.watch if f.index == PINS[0]]
    assert all(m == maps[0] for m in maps)


@pytest.mark.parametrize("freeze, cache", [(["stem", "block"], "head"), (["stem"], "prefix"), ([], "")])
def test_the_recorded_cam_is_grad_cam_of_the_model_at_that_epoch(freeze, cache):
    # feature extraction reuses the frozen activations and runs only the tail, a frozen prefix reads the
    # loop's cache, a fine-tune runs the whole model: each last epoch's maps are Captum's Grad-CAM of the
    # model as it ended
    model, history = _fit(freeze, epochs=2)
    assert history.cache == cache
    val = Shapes(8, seed=1, size=32)
    x = normalise(encode_images(val, 32), torch.tensor(model.mean).view(1, 3, 1, 1),
                  torch.tensor(model.std).view(1, 3, 1, 1))[list(PINS)]
    maps = torch.tensor(gradcam_maps(model, x, [val.labels[i] for i in PINS], layer="block"))[:, None]
    # the toy's CAM layer keeps the input's 32 px; the record keeps it at CAM_SIZE
    maps = F.interpolate(maps, size=(CAM_SIZE, CAM_SIZE), mode="bilinear")[:, 0]
    maps = maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    last = [f for f in history.watch if f.epoch == 2]
    for frame, expected in zip(last, maps, strict=True):
        assert torch.allclose(torch.tensor(frame.cam), expected, atol=0.01)


def test_a_pinned_image_outside_the_validation_set_is_refused_with_a_message():
    model = tiny(classes=("disc", "square"))
    config = TrainConfig(epochs=1, batch_size=8, image_size=32, watch=(0, 50))
    with pytest.raises(ConfigError, match="not in the validation set"):
        fit(model, Shapes(16, seed=0, size=32), Shapes(8, seed=1, size=32), config)
    with pytest.raises(ConfigError, match="at most 8"):
        TrainConfig(watch=tuple(range(9))).validate()


def test_the_watched_layer_is_a_layer_group_module_with_a_spatial_output():
    assert watch_layer(tiny(), 32) == "block"


@pytest.mark.parametrize("name", [b.name for b in models.list_backbones()])
def test_every_registry_backbone_is_watched_at_a_layer_groups_own_module(name):
    # the frozen shortcut starts the network's tail at that module
    model = starting_model(name, ["a", "b"], pretrained=False, image_size=128)
    assert watch_layer(model, 128) in [m for g in model.layer_groups[:-1] for m in g.modules]
