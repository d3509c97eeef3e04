"""Specification of core.analysis.saliency (and its sanity check) on tiny hand-built models, on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.analysis import saliency
from core.analysis.overlay import overlay
from core.analysis.saliency import METHODS, attribute, explain, top_classes
from core.analysis.sanity import sanity_check
from core.errors import ConfigError

GRADIENT_LIKE = ("gradient", "smoothgrad", "integrated_gradients", "gradcam")


# ------------------------------------------------------------------------------------ models


def linear_model(classes: int = 3) -> nn.Module:
    """f_c(x) = sum(w_c * x) + b_c over a 3x4x4 input: its gradient is w_c."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, classes))


def object_model() -> nn.Module:
    """Class 0 fires on bright 3x3 patches, wherever they are; the dark background gives nothing."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with torch.no_grad():
        # Channel k averages the patch with its own weight; -0.3 keeps noise and edges silent.
        model[0].weight.copy_(torch.arange(1, 5, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 3, 3) / 27)
        model[0].bias.fill_(-0.3)
        model[2].weight.copy_(torch.eye(4).view(4, 4, 1, 1) + 0.1)
        model[2].bias.zero_()
        model[6].weight.copy_(torch.tensor([[1.0, 0.5, 1.5, 1.0], [-1.0, -1.0, -1.0, -1.0]]))
        model[6].bias.zero_()
    return model.eval()


def scene(h: int = 12, w: int = 20, side: str = "left") -> torch.Tensor:
    """A black image with a bright square object in the middle of one half."""
    image = torch.zeros(3, h, w)
    top, size = h // 2 - 3, 6
    left = w // 4 - size // 2 if side == "left" else 3 * w // 4 - size // 2
    image[:, top : top + size, left : left + size] = 1.0
    return image


def random_conv_model(seed: int = 0, classes: int = 3, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        act(),
        nn.Dropout(0.5),
        nn.Conv2d(6, 6, 3, padding=1),
        act(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, classes),
    )


class FailsWithGrad(nn.Module):
    """Passes one image through for a plain prediction, but raises in an attribution's passes
    (those run with autograd on, or on a batch of perturbed copies)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.shape[0] > 1:
            raise RuntimeError("boom")
        return x


# ---------------------------------------------------------------------------- model snapshots


def hook_keys(model: nn.Module) -> dict[str, tuple]:
    return {
        name: tuple(
            tuple(getattr(module, attr).keys())
            for attr in ("_forward_hooks", "_backward_hooks", "_forward_pre_hooks", "_backward_pre_hooks")
        )
        for name, module in model.named_modules()
    }


def snapshot(model: nn.Module) -> dict:
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {name: p.grad for name, p in model.named_parameters()},
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "hooks": hook_keys(model),
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"].values())
    assert after["hooks"] == before["hooks"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


def messy_model() -> nn.Module:
    """A model in train mode with a frozen layer and a hook of the caller's own."""
    model = random_conv_model(seed=3)
    model.train()
    model[0].weight.requires_grad_(False)
    model[8].register_forward_hook(lambda *_: None)
    return model


# --------------------------------------------------------------------------------------- tests


def test_gradient_of_a_linear_model_is_its_weight_magnitude_summed_over_channels():
    model = linear_model()
    image = torch.randn(3, 4, 4)
    for target in range(3):
        weight = model[1].weight[target].detach().view(3, 4, 4)
        expected = weight.abs().sum(0).numpy()
        np.testing.assert_allclose(attribute(model, image, target, "gradient"), expected, rtol=1e-6, atol=1e-7)


def test_integrated_gradients_of_a_linear_model_is_weight_times_input_from_a_zero_baseline():
    model = linear_model()
    image = torch.randn(3, 4, 4)
    weight = model[1].weight[2].detach().view(3, 4, 4)
    expected = (weight * image).sum(0).abs().numpy()
    got = attribute(model, image, 2, "integrated_gradients", baseline="zeros", n_steps=8)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", GRADIENT_LIKE + ("occlusion",))
@pytest.mark.parametrize("side", ["left", "right"])
def test_maps_put_their_mass_on_the_side_where_the_object_is(method, side):
    image = scene(12, 20, side)
    sal = attribute(object_model(), image, 0, method, **({"baseline": "zeros"} if method == "integrated_gradients" else {}))
    half = sal.shape[1] // 2
    left, right = sal[:, :half].sum(), sal[:, half:].sum()
    assert left + right > 0
    share = left / (left + right) if side == "left" else right / (left + right)
    assert share > 0.9


def test_integrated_gradients_add_up_to_the_score_difference_from_the_baseline():
    model = random_conv_model(seed=4, act=nn.Tanh).eval()
    image = torch.randn(3, 9, 13)
    baseline = torch.full((3, 9, 13), -0.5)
    result = explain(model, image, 1, "integrated_gradients", baseline=baseline, n_steps=200)
    with torch.no_grad():
        difference = float(model(image[None])[0, 1] - model(baseline[None])[0, 1])
    total = float(result.raw.sum())
    assert result.delta is not None
    assert abs(total - difference) <= abs(result.delta) + 1e-5
    assert abs(result.delta) <= 0.01 * abs(difference) + 1e-5


class LateRise(nn.Module):
    """Class 0 only rises in the last tenth of the path from zeros to an image of ones: few
    integration steps land at most one point there and miss the score by far more than 5 %."""

    def forward(self, x):
        score = 10 * torch.relu(x.flatten(1).sum(1, keepdim=True) - 0.9 * x[0].numel())
        return torch.cat([score, -score], 1)


def _missed(result) -> float:
    change = float(result.raw.sum()) - result.delta
    return abs(result.delta) / abs(change)


def test_integrated_gradients_take_more_steps_until_the_attributions_add_up():
    image, model = torch.ones(3, 4, 4), LateRise()
    few = explain(model, image, 0, "integrated_gradients", baseline="zeros", n_steps=4, max_steps=4)
    assert few.steps == 4 and _missed(few) > 0.05  # without more steps the map misses much of the score
    enough = explain(model, image, 0, "integrated_gradients", baseline="zeros", n_steps=4, max_steps=1024)
    assert enough.steps > 4
    assert _missed(enough) <= 0.05


def test_integrated_gradients_stop_at_the_first_steps_when_they_already_add_up():
    result = explain(linear_model(), torch.randn(3, 4, 4), 1, "integrated_gradients", baseline="zeros")
    assert result.steps == saliency.DEFAULTS["integrated_gradients"]["n_steps"]


def test_integrated_gradients_default_baseline_is_black_in_the_models_normalized_space():
    model = random_conv_model(seed=5, act=nn.Tanh).eval()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    image = torch.randn(3, 8, 8)
    black = (torch.zeros(3, 8, 8) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    result = explain(model, image, 0, "integrated_gradients", mean=mean, std=std, n_steps=200)
    with torch.no_grad():
        difference = float(model(image[None])[0, 0] - model(black[None])[0, 0])
    assert abs(float(result.raw.sum()) - difference) <= abs(result.delta) + 1e-5
    assert abs(result.delta) <= 0.01 * abs(difference) + 1e-5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [(12, 20), (17, 9), (8, 8)])
def test_every_method_returns_a_finite_non_negative_map_the_size_of_the_image(method, size):
    image = torch.randn(3, *size)
    sal = attribute(random_conv_model(seed=2).eval(), image, 1, method)
    assert isinstance(sal, np.ndarray)
    assert sal.shape == size
    assert sal.dtype == np.float32
    assert np.isfinite(sal).all()
    assert (sal >= 0).all()
    assert sal.max() > 0


@pytest.mark.parametrize("method", METHODS)
def test_model_and_input_are_left_as_they_were_found(method):
    model = messy_model()
    before = snapshot(model)
    image = torch.randn(3, 10, 14, requires_grad=True)
    image_before = image.detach().clone()
    attribute(model, image, 2, method)
    assert_untouched(model, before)
    assert image.requires_grad and image.grad is None
    assert torch.equal(image.detach(), image_before)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(dict(method="gradient", target=3), id="target-too-large"),
        pytest.param(dict(method="integrated_gradients", target=-1), id="negative-target"),
        pytest.param(dict(method="gradcam", target=0, layer="no.such.layer"), id="unknown-layer"),
        pytest.param(dict(method="gradcam", target=0, layer="8"), id="layer-without-spatial-output"),
        pytest.param(dict(method="smoothgrad", target=0, n_sample=3), id="misspelt-option"),
    ],
)
def test_a_rejected_call_raises_config_error_and_leaves_the_model_as_it_was(call):
    model = messy_model()
    before = snapshot(model)
    image = torch.randn(3, 10, 14)
    method, target = call.pop("method"), call.pop("target")
    with pytest.raises(ConfigError):
        attribute(model, image, target, method, **call)
    assert_untouched(model, before)


@pytest.mark.parametrize("method", METHODS)
def test_a_model_failing_mid_attribution_is_left_as_it_was(method):
    model = messy_model()
    model.insert(5, FailsWithGrad())  # between the second conv and its activation
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        attribute(model, torch.randn(3, 10, 14), 0, method)
    assert_untouched(model, before)


def test_unknown_method_raises_config_error_naming_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        attribute(linear_model(), torch.randn(3, 4, 4), 0, "lime")
    assert "lime" in str(error.value)
    for method in METHODS:
        assert method in str(error.value)


def test_unknown_gradcam_layer_error_lists_the_layers_to_choose_from():
    with pytest.raises(ConfigError) as error:
        attribute(object_model(), scene(), 0, "gradcam", layer="layer4")
    assert "'0'" not in str(error.value) and "0, 2" in str(error.value)


def test_gradcam_defaults_to_the_last_module_with_a_convolution_and_a_spatial_output():
    torch.manual_seed(0)
    stage = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), stage, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    image = torch.randn(3, 8, 8)
    assert saliency.default_gradcam_layer(model, image) == "1"
    assert saliency.gradcam_layers(model, image) == ["0", "1"]
    default = attribute(model, image, 0, "gradcam")
    np.testing.assert_array_equal(default, attribute(model, image, 0, "gradcam", layer="1"))
    assert not np.array_equal(default, attribute(model, image, 0, "gradcam", layer="1.0"))


def test_gradcam_maps_of_a_batch_are_the_maps_of_each_image_and_leave_the_model_as_it_was():
    model = random_conv_model(seed=3)
    images = torch.stack([scene(side="left"), scene(side="right"), torch.rand(3, 12, 20)])
    targets = [0, 2, 1]
    before = snapshot(model)
    maps = saliency.gradcam_maps(model, images, targets, batch_size=2)  # two batches: 2 + 1
    assert_untouched(model, before)
    assert maps.shape == (3, 12, 20) and maps.dtype == np.float32
    for image, target, got in zip(images, targets, maps, strict=True):
        assert np.allclose(got, attribute(model, image, target, "gradcam"), rtol=1e-4, atol=1e-8)
    with pytest.raises(ConfigError, match="One class per image"):
        saliency.gradcam_maps(model, images, [0])


def test_smoothgrad_is_reproducible_and_leaves_the_global_random_stream_alone():
    model, image = random_conv_model(seed=6).eval(), torch.randn(3, 8, 8)
    state = torch.get_rng_state()
    first = attribute(model, image, 0, "smoothgrad", n_samples=4)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(first, attribute(model, image, 0, "smoothgrad", n_samples=4))
    assert not np.array_equal(first, attribute(model, image, 0, "smoothgrad", n_samples=4, seed=1))


def test_explain_reports_method_target_time_and_delta_only_for_integrated_gradients():
    model, image = object_model(), scene()
    ig = explain(model, image, 0, "integrated_gradients", n_steps=8)
    grad = explain(model, image, 0, "gradient")
    assert (ig.method, ig.target) == ("integrated_gradients", 0)
    assert isinstance(ig.delta, float) and grad.delta is None
    assert ig.seconds > 0 and grad.seconds > 0
    np.testing.assert_array_equal(grad.map, attribute(model, image, 0, "gradient"))


def test_top_classes_are_the_softmax_probabilities_best_first():
    model, image = random_conv_model(seed=7, classes=4).eval(), torch.randn(3, 8, 8)
    with torch.no_grad():
        probs = torch.softmax(model(image[None])[0], 0)
    best = int(probs.argmax())
    named = top_classes(model, image, k=2, categories=["cat", "dog", "fox", "owl"])
    assert len(named) == 2
    assert named[0] == (["cat", "dog", "fox", "owl"][best], pytest.approx(float(probs[best])))
    assert named[0][1] >= named[1][1]
    unnamed = top_classes(model, image, k=10)
    assert len(unnamed) == 4 and unnamed[0][0] == f"class {best}"
    assert sum(p for _, p in unnamed) == pytest.approx(1.0)


def test_overlay_blends_a_colormap_scaled_by_a_high_percentile():
    image = np.full((40, 50, 3), 128, dtype=np.uint8)
    sal = np.zeros((40, 50), dtype=np.float32)
    sal[:, 25:] = 1.0
    sal[0, 49] = 1000.0  # one outlier must not wash out the rest
    np.testing.assert_array_equal(overlay(image, sal, 0.0), image)
    heat = overlay(image, sal, 1.0)
    assert heat.shape == (40, 50, 3) and heat.dtype == np.uint8
    np.testing.assert_array_equal(heat[20, 30], heat[0, 49])  # both at full scale
    assert heat[20, 30].astype(int).sum() > heat[20, 10].astype(int).sum() + 300
    half = overlay(image, sal, 0.5)
    assert np.abs(half.astype(int) - (image.astype(int) + heat.astype(int)) / 2).max() <= 1
    with pytest.raises(ConfigError):
        overlay(image, sal, 1.5)


def test_sanity_check_similarity_falls_as_layers_are_randomized_and_the_callers_model_is_untouched():
    model = object_model()
    before = snapshot(model)
    result = sanity_check(model, scene(), 0, ["gradient", "smoothgrad", "gradcam"], seed=0,
                          options={"smoothgrad": {"n_samples": 4}})
    assert_untouched(model, before)
    assert result.steps == ["6", "2", "0"]  # from the output down
    for method in ("gradient", "smoothgrad"):
        sims = result.similarity[method]
        assert len(sims) == len(result.maps[method]) == 3
        assert sims[-1] < sims[0]
        assert sims[-1] < 0.5
    assert all(m.shape == (12, 20) for m in result.maps["gradcam"])


def test_sanity_check_randomizes_the_given_layer_groups_cumulatively_from_the_last():
    model = random_conv_model(seed=8).eval()
    seen = []
    result = sanity_check(model, torch.randn(3, 8, 8), 0, ["gradient"], layers=["0", ["4", "8"]],
                          progress=lambda step, total, name: seen.append((step, total, name)))
    assert result.steps == ["4+8", "0"]
    assert seen == [(1, 2, "4+8"), (2, 2, "0")]
    with pytest.raises(ConfigError, match="not a module"):
        sanity_check(model, torch.randn(3, 8, 8), 0, ["gradient"], layers=["nope"])


def test_a_stopped_sanity_check_ends_after_the_step_it_is_in_and_keeps_what_it_measured():
    import threading

    model = random_conv_model(seed=8).eval()
    stop = threading.Event()
    result = sanity_check(model, torch.randn(3, 8, 8), 0, ["gradient"], layers=["0", "4", "8"], stop=stop,
                          progress=lambda step, total, name: stop.set())  # stop is pressed during the first step
    assert result.steps == ["8"]
    assert len(result.similarity["gradient"]) == len(result.maps["gradient"]) == 1
