"""Specification of core.analysis.features: layer listing, hooks, weight change, CKA and channel tools."""

import copy
import math
import threading

import pytest
import torch
from torch import nn

from core.analysis.features import (
    activations,
    channel_order,
    cka_by_layer,
    feature_maps,
    layer_names,
    linear_cka,
    top_activating,
    weight_change,
)
from core.cache import FeatureCache, tensor_key
from core.errors import ConfigError

TINY_LAYERS = ["0", "0.0", "0.1", "1", "1.0", "1.1", "2", "2.0", "2.1"]


def tiny_model(num_classes: int = 4, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA straight from its definition: HSIC of centred Gram matrices."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h)

    return float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))


def fine_tune_with_first_block_frozen(model: nn.Module, steps: int = 5) -> nn.Module:
    tuned = copy.deepcopy(model)
    for p in tuned[0].parameters():
        p.requires_grad_(False)
    tuned.train()
    tuned[0].eval()  # frozen BatchNorm keeps its running statistics
    opt = torch.optim.SGD([p for p in tuned.parameters() if p.requires_grad], lr=0.1)
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x = torch.randn(8, 3, 16, 16, generator=g)
        y = torch.randint(0, 4, (8,), generator=g)
        loss = nn.functional.cross_entropy(tuned(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tuned.eval()


# ----------------------------------------------------------------------------- CKA


def test_cka_of_a_representation_with_itself_is_one():
    g = torch.Generator().manual_seed(0)
    narrow = torch.randn(40, 10, generator=g)
    wide = torch.randn(6, 400, generator=g)  # n x n Gram path
    assert linear_cka(narrow, narrow) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(wide, wide) == pytest.approx(1.0, abs=1e-12)


def test_cka_matches_the_centred_gram_definition_for_narrow_and_wide_inputs():
    g = torch.Generator().manual_seed(1)
    for n, p, q in [(30, 5, 7), (6, 300, 200)]:
        x, y = torch.randn(n, p, generator=g), torch.randn(n, q, generator=g)
        y = y + 0.5 * x[:, :1]  # some shared signal, so the value is not near zero
        assert linear_cka(x, y) == pytest.approx(reference_cka(x, y), rel=1e-9)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 8, generator=g, dtype=torch.float64)
    y = torch.randn(50, 6, generator=g, dtype=torch.float64) + x[:, :6]
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert linear_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(0.01 * x, y) == pytest.approx(linear_cka(x, y), rel=1e-10)


def test_cka_is_not_invariant_to_a_generic_invertible_linear_map():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 10, generator=g)
    a = torch.diag(torch.arange(1.0, 11.0)) + 0.1 * torch.randn(10, 10, generator=g)
    assert torch.linalg.matrix_rank(a) == 10
    assert linear_cka(x, x @ a) < 0.95


def test_cka_lies_in_zero_one_and_is_low_for_independent_representations():
    g = torch.Generator().manual_seed(4)
    values = []
    for _ in range(20):
        x = torch.randn(30, 4, generator=g)
        y = torch.randn(30, 3, generator=g)
        values.append(linear_cka(x, y))
    assert all(0.0 <= v <= 1.0 for v in values)
    assert max(values) < 0.5
    assert sum(values) / len(values) < 0.3


def test_cka_rejects_mismatched_examples_and_is_nan_for_a_constant_representation():
    with pytest.raises(ValueError):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))
    assert math.isnan(linear_cka(torch.ones(5, 3), torch.randn(5, 3)))


# ----------------------------------------------------------------------------- layer names


def test_layer_names_of_a_tiny_model_are_its_blocks_convs_and_norms_in_order():
    assert layer_names(tiny_model()) == TINY_LAYERS


def test_layer_names_of_resnet18_list_blocks_convs_and_norms_but_not_the_head():
    from torchvision.models import resnet18

    expected = ["conv1", "bn1"]
    for stage in range(1, 5):
        expected.append(f"layer{stage}")
        for block in range(2):
            b = f"layer{stage}.{block}"
            expected += [b, f"{b}.conv1", f"{b}.bn1", f"{b}.conv2", f"{b}.bn2"]
            if stage > 1 and block == 0:
                expected += [f"{b}.downsample", f"{b}.downsample.0", f"{b}.downsample.1"]
    names = layer_names(resnet18(weights=None))
    assert names == expected
    for excluded in ["", "fc", "avgpool", "relu", "maxpool", "layer1.0.relu"]:
        assert excluded not in names


def small_convnext() -> nn.Module:
    """torchvision's ConvNeXt class at toy width: Linear layers inside blocks, LayerNorm2d in the head."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 2)], num_classes=4)


def test_every_listed_layer_outputs_a_spatial_map_on_common_architectures():
    from torchvision.models import mobilenet_v3_small, resnet18

    x = torch.randn(1, 3, 32, 32)
    for build, must, must_not in [
        (lambda: resnet18(weights=None), ["layer4.1"], ["fc"]),
        (lambda: mobilenet_v3_small(weights=None),
         ["features.0", "features.1.block.1", "features.12"], ["classifier", "avgpool"]),
        (small_convnext, ["features.0", "features.3.1", "features.3.1.block"],
         ["classifier", "classifier.0"]),
    ]:
        model = build()
        names = layer_names(model)
        assert set(must) <= set(names) and not set(must_not) & set(names)
        outputs = activations(model, x, names)
        assert all(out.ndim == 4 for out in outputs.values()), type(model).__name__


def test_layer_names_of_efficientnet_lite0_run_from_stem_to_the_last_norm():
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    model = lite.EfficientNet.from_name("efficientnet-lite0")
    names = layer_names(model)
    assert names[0] == "_conv_stem" and names[-1] == "_bn1"
    assert {"_bn0", "_blocks.0", "_blocks.3", "_blocks.15", "_conv_head"} <= set(names)
    assert not {"_blocks", "_conv_stem.static_padding", "_fc", "_avg_pooling", "_swish"} & set(names)
    outputs = activations(model, torch.randn(1, 3, 32, 32), names)
    assert all(out.ndim == 4 for out in outputs.values())


# ----------------------------------------------------------------------------- activations


def test_feature_maps_have_the_hand_computed_shape():
    model = tiny_model()
    image = images(1)[0]
    # 16x16 input; stride-2 convs with kernel 3, padding 1: (16 + 2 - 3) // 2 + 1 = 8, then 4.
    assert feature_maps(model, image, "0.0").shape == (8, 16, 16)
    assert feature_maps(model, image, "1").shape == (16, 8, 8)
    assert feature_maps(model, image, "2.1").shape == (16, 4, 4)


def test_feature_maps_equal_the_eval_mode_output_even_before_an_inplace_relu():
    model = tiny_model().eval()
    x = images(3)
    with torch.no_grad():
        expected = model[0][1](model[0][0](x))
    got = activations(model, x, ["0.1"])["0.1"]
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.allclose(got, expected)
    assert (got < 0).any()  # the following ReLU(inplace=True) did not overwrite the copy


def test_activations_remove_hooks_and_restore_modes_without_touching_batchnorm_statistics():
    model = tiny_model()
    model.train()
    model[1].eval()
    stats = model[0][1].running_mean.clone()
    out = feature_maps(model, images(1)[0], "1.1")
    assert out.shape == (16, 8, 8)
    assert no_hooks_left(model)
    assert model.training and model[0].training and model[0][1].training
    assert not model[1].training and not model[1][1].training
    assert torch.equal(model[0][1].running_mean, stats)


def test_an_unknown_layer_raises_config_error_naming_valid_layers_and_leaves_the_model_as_it_was():
    model = tiny_model().train()
    model[2].eval()
    with pytest.raises(ConfigError, match=r"'nope'.*0\.0"):
        feature_maps(model, images(1)[0], "nope")
    assert no_hooks_left(model)
    assert model.training and not model[2].training


def test_an_error_during_the_forward_pass_still_removes_hooks_and_restores_modes():
    model = tiny_model().train()
    model[2].eval()
    with pytest.raises(RuntimeError):
        activations(model, torch.randn(2, 5, 16, 16), ["0.0", "2"])  # wrong channel count
    assert no_hooks_left(model)
    assert model.training and model[0].training and not model[2].training


def test_reading_an_early_layer_does_not_run_the_rest_of_the_network():
    calls = []

    class Spy(nn.Module):
        def forward(self, x):
            calls.append(1)
            return x

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Spy(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1))
    activations(model, images(2), ["0"])
    assert calls == []
    activations(model, images(2), ["2"])
    assert calls == [1]


# ----------------------------------------------------------------------------- fine-tuning


def test_frozen_layers_keep_their_outputs_after_fine_tuning_and_trained_layers_change():
    before = tiny_model().eval()
    after = fine_tune_with_first_block_frozen(before)
    x = images(8)
    acts_before = activations(before, x, TINY_LAYERS)
    acts_after = activations(after, x, TINY_LAYERS)
    for layer in ["0", "0.0", "0.1"]:
        assert torch.equal(acts_before[layer], acts_after[layer]), layer
    for layer in ["1.0", "2", "2.1"]:
        assert not torch.allclose(acts_before[layer], acts_after[layer]), layer

    change = weight_change(before, after)
    assert change["0.0"] == 0.0 and change["0.1"] == 0.0
    assert change["1.0"] > 0 and change["2.0"] > 0 and change["5"] > 0

    cka = cka_by_layer(before, after, x, ["0", "0.1", "2"])
    assert cka["0"] == pytest.approx(1.0, abs=1e-12) and cka["0.1"] == pytest.approx(1.0, abs=1e-12)
    assert 0.0 <= cka["2"] < 1.0 - 1e-6


def test_weight_change_pools_a_groups_parameters_and_is_zero_for_a_frozen_group():
    before = tiny_model().eval()
    after = fine_tune_with_first_block_frozen(before)
    change = weight_change(before, after, {"stem": ["0"], "middle": ["1", "2"], "head": ["5"]})
    assert change["stem"] == 0.0
    b = [p for m in (before[1], before[2]) for p in m.parameters()]
    a = [p for m in (after[1], after[2]) for p in m.parameters()]
    diff = math.sqrt(sum(float((q.detach().double() - p.detach().double()).square().sum())
                         for p, q in zip(b, a, strict=True)))
    base = math.sqrt(sum(float(p.detach().double().square().sum()) for p in b))
    assert change["middle"] == pytest.approx(diff / base, rel=1e-12)
    assert change["head"] > 0


def test_weight_change_reports_a_replaced_classifier_as_nan():
    before = tiny_model(num_classes=4)
    after = copy.deepcopy(before)
    after[5] = nn.Linear(16, 7)
    change = weight_change(before, after)
    assert math.isnan(change["5"])
    assert all(v == 0.0 for k, v in change.items() if k != "5")
    assert math.isnan(weight_change(before, after, {"head": ["5"]})["head"])

    with_mlp = copy.deepcopy(before)
    with_mlp[5] = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 7))
    change = weight_change(before, with_mlp)
    assert math.isnan(change["5"]) and "5.0" not in change


def test_weight_change_rejects_a_group_with_an_unknown_module():
    model = tiny_model()
    with pytest.raises(ConfigError):
        weight_change(model, model, {"stem": ["stem"]})


def test_cka_by_layer_gives_the_same_result_in_any_chunk_size_and_for_pooled_maps():
    a, b = tiny_model(seed=0), tiny_model(seed=5)
    x = images(7)
    whole = cka_by_layer(a, b, x, ["1", "2.1"], batch_size=100)
    chunked = cka_by_layer(a, b, x, ["1", "2.1"], batch_size=3)
    assert whole == pytest.approx(chunked, rel=1e-6)
    pooled = cka_by_layer(a, b, x, ["1", "2.1"], flatten="pool")
    assert all(0.0 <= v <= 1.0 for v in pooled.values())
    with pytest.raises(ConfigError):
        cka_by_layer(a, b, x, ["1"], flatten="avg")


# ----------------------------------------------------------------------------- channels


def test_channel_order_by_change_puts_the_perturbed_channel_first():
    g = torch.Generator().manual_seed(6)
    before = torch.randn(6, 4, 4, generator=g)
    after = before + 0.01 * torch.randn(6, 4, 4, generator=g)
    after[3] += 5.0
    after[1] -= 1.0
    assert channel_order(before, after, by="change")[:2] == [3, 1]


def test_channel_order_by_strength_puts_the_strongest_channel_first():
    g = torch.Generator().manual_seed(7)
    before = torch.randn(5, 3, 3, generator=g)
    after = before.clone()
    before[2] *= 20.0
    after[4] *= 50.0
    order = channel_order(before, after, by="strength")
    assert order[:2] == [4, 2] and sorted(order) == list(range(5))
    with pytest.raises(ConfigError):
        channel_order(before, after, by="size")


def test_top_activating_finds_the_image_made_strongest_for_a_channel():
    model = tiny_model().eval()
    conv = model[0][0]
    with torch.no_grad():
        conv.weight[1] = 0.0
        conv.weight[1, 0, 1, 1] = 1.0  # channel 1 copies the red input channel
        conv.bias[1] = 0.0
    x = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    x[7, 0] += 3.0
    x[2, 0] += 1.0
    top = top_activating(model, x, "0.0", channel=1, k=3, batch_size=3)
    assert [i for i, _ in top[:2]] == [7, 2] and len(top) == 3
    assert top[0][1] == pytest.approx(float(x[7, 0].mean()), rel=1e-5)
    assert top[0][1] >= top[1][1] >= top[2][1]
    assert len(top_activating(model, x, "0.0", channel=1, k=50)) == 10
    with pytest.raises(ConfigError):
        top_activating(model, x, "0.0", channel=8)


# ----------------------------------------------------------------------------- cache


def test_feature_cache_keeps_the_most_recently_used_items():
    cache = FeatureCache(max_items=2)
    cache["a"] = 1
    cache["b"] = 2
    assert cache["a"] == 1  # "a" is now the most recent
    cache["c"] = 3
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2
    calls = []
    assert cache.get_or_compute("d", lambda: calls.append(1) or 4) == 4
    assert cache.get_or_compute("d", lambda: calls.append(1) or 5) == 4
    assert calls == [1]


def test_feature_cache_with_a_byte_budget_drops_its_oldest_tensors_first():
    cache = FeatureCache(max_items=10, max_bytes=3000)
    for name in "abc":
        cache[name] = torch.zeros(250)  # 1,000 bytes each
    assert cache.nbytes == 3000 and len(cache) == 3
    cache["a"]  # now the most recent
    cache["d"] = torch.zeros(500)  # 2,000 bytes: the two least recent go
    assert "b" not in cache and "c" not in cache and {"a", "d"} <= {k for k in "abcd" if k in cache}
    assert cache.nbytes == 3000
    cache["huge"] = torch.zeros(10_000)  # over the budget alone: kept, everything older goes
    assert len(cache) == 1 and "huge" in cache


def test_feature_cache_stays_bounded_under_concurrent_writers():
    cache = FeatureCache(max_items=8)

    def write(offset):
        for i in range(200):
            cache[(offset, i)] = i
            cache.get((offset, i - 1))

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 8


def test_tensor_key_changes_with_values_and_shape():
    x = torch.arange(6.0)
    assert tensor_key(x) == tensor_key(x.clone())
    assert tensor_key(x) != tensor_key(x.reshape(2, 3))
    y = x.clone()
    y[0] = 0.5
    assert tensor_key(x) != tensor_key(y)


def test_after_fit_frozen_groups_keep_their_maps_and_the_depth_profile_shows_where_training_acted():
    from core import models
    from core.analysis.features import depth_profile
    from core.train.base import TrainConfig
    from core.train.fitting import fit
    from tests.toys import Shapes

    before = models.starting_model("efficientnet_lite0", ["disc", "square"], image_size=32, seed=3)
    after = models.starting_model("efficientnet_lite0", ["disc", "square"], image_size=32, seed=3)
    frozen = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5"]
    fit(after, Shapes(16, 0), Shapes(6, 1), TrainConfig(epochs=2, batch_size=8, freeze=frozen, image_size=32))
    image = torch.randn(3, 32, 32)
    assert torch.equal(feature_maps(before, image, "_blocks.10"), feature_maps(after, image, "_blocks.10"))
    assert not torch.equal(feature_maps(before, image, "_blocks.15"), feature_maps(after, image, "_blocks.15"))
    profile = {row["group"]: row for row in depth_profile(before, after, before.layer_groups, torch.randn(6, 3, 32, 32))}
    for group in frozen:
        assert profile[group]["weight_change"] == 0.0 and profile[group]["cka"] == pytest.approx(1.0)
    for group in ["stage6", "stage7", "top", "head"]:
        assert profile[group]["weight_change"] > 0
    assert profile["head"]["cka"] < 1.0
