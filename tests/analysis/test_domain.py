"""Specifications of core.analysis.domain: pooled features with a cache, MMD by depth, pictures, the control."""

import math
import threading
import uuid

import numpy as np
import pytest
import torch
from torch import nn

from core import data
from core.analysis import domain, mmd
from core.data.encoded import encode_images, normalise
from core.errors import ConfigError, UserInputError
from core.models.backbones import LayerGroup
from core.runs.tasks import Task


class Tiny(nn.Module):
    """A stem, one block and a linear head, with what extract_features reads off a Classifier."""

    head_module = "fc"
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.block(torch.relu(self.bn(self.conv(x))))
        return self.fc(self.pool(x).flatten(1))


TINY_GROUPS = [LayerGroup("stem", ["conv", "bn"]), LayerGroup("block", ["block"]), LayerGroup("head", ["fc"])]


@pytest.fixture
def tiny():
    return Tiny().eval()


@pytest.fixture(scope="module")
def shapes():
    return data.demo_dataset("source", per_class=3, size=32)


def key():
    """A model key no other test uses: the cache is process-wide."""
    return f"test:{uuid.uuid4().hex}"


def count_forwards(model):
    """A pre-hook on the root: extraction stops a pass early, so a forward hook may never fire."""
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls, handle


def no_hooks_left(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ----------------------------------------------------------------------------- features


def test_features_are_space_averaged_float32_rows_on_the_cpu(tiny, shapes):
    feats = domain.extract_features(tiny, shapes, ["conv", "block", domain.HEAD_INPUT, "fc"], 32, batch_size=5)
    assert {name: tuple(f.shape) for name, f in feats.items()} == {
        "conv": (12, 4), "block": (12, 6), domain.HEAD_INPUT: (12, 6), "fc": (12, 3)}
    assert all(f.dtype == torch.float32 and f.device.type == "cpu" for f in feats.values())
    x = normalise(encode_images(shapes, 32), torch.tensor(Tiny.mean).view(1, 3, 1, 1),
                   torch.tensor(Tiny.std).view(1, 3, 1, 1))
    with torch.no_grad():
        expected = tiny.conv(x).mean(dim=(2, 3))
    torch.testing.assert_close(feats["conv"], expected)


def test_the_head_input_is_what_the_head_reads(tiny, shapes):
    feats = domain.extract_features(tiny, shapes, [domain.HEAD_INPUT, "block", "fc"], 32)
    # Tiny's head reads the pooled block output; the head applied to it gives the logits
    torch.testing.assert_close(feats[domain.HEAD_INPUT], feats["block"])
    with torch.no_grad():
        torch.testing.assert_close(tiny.fc(feats[domain.HEAD_INPUT]), feats["fc"])


def test_a_second_call_reads_the_cache_and_does_not_run_the_model(tiny, shapes):
    calls, handle = count_forwards(tiny)
    model_key = key()
    first = domain.extract_features(tiny, shapes, ["conv", "block"], 32, batch_size=5, model_key=model_key)
    assert len(calls) == 3  # 12 images in batches of 5
    again = domain.extract_features(tiny, shapes, ["block", "conv"], 32, batch_size=5, model_key=model_key)
    assert len(calls) == 3
    assert again["conv"] is first["conv"] and again["block"] is first["block"]
    # one new layer: one more pass, for that layer only; the others still come from the cache
    domain.extract_features(tiny, shapes, ["conv", domain.HEAD_INPUT], 32, batch_size=12, model_key=model_key)
    assert len(calls) == 4
    domain.extract_features(tiny, shapes, ["conv"], 48, batch_size=12, model_key=model_key)  # another size
    domain.extract_features(tiny, shapes.subset(range(6)), ["conv"], 32, batch_size=12, model_key=model_key)
    domain.extract_features(tiny, shapes, ["conv"], 32, batch_size=12, model_key=key())  # another model
    assert len(calls) == 7
    domain.extract_features(tiny, shapes, ["conv"], 32, batch_size=12)  # no key: never cached
    domain.extract_features(tiny, shapes, ["conv"], 32, batch_size=12)
    assert len(calls) == 9
    handle.remove()


def test_extraction_puts_modes_back_and_leaves_no_hooks_even_after_an_error(tiny, shapes):
    tiny.train()
    tiny.bn.eval()
    domain.extract_features(tiny, shapes, ["bn", domain.HEAD_INPUT], 32)
    assert tiny.training and tiny.conv.training and not tiny.bn.training
    assert no_hooks_left(tiny)
    with pytest.raises(ConfigError):
        domain.extract_features(tiny, shapes, [domain.HEAD_INPUT, "no_such_layer"], 32)
    assert no_hooks_left(tiny)
    assert tiny.training and not tiny.bn.training


def test_a_model_without_its_normalisation_is_told_what_to_pass(shapes):
    plain = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1))
    with pytest.raises(ConfigError, match="mean and std"):
        domain.extract_features(plain, shapes, ["0"], 32)
    feats = domain.extract_features(plain, shapes, ["0"], 32, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert feats["0"].shape == (12, 2)


# ----------------------------------------------------------------------------- the demo shift


@pytest.fixture(scope="module")
def demo_pair():
    return data.demo_dataset("source", per_class=8), data.demo_dataset("target", per_class=8)


def test_the_demo_looks_differ_at_the_last_groups_of_the_pretrained_backbone(lite0, demo_pair):
    source, target = demo_pair
    profile = domain.layer_profile(lite0.model, source, target, lite0.layer_groups, 64, model_key=key(),
                                   mean=lite0.mean, std=lite0.std)
    assert [row["group"] for row in profile] == [g.name for g in lite0.layer_groups]
    for row in profile[-3:]:
        assert row["mmd2"] > 0 and row["p_value"] <= 0.01, row


def test_two_halves_of_one_set_are_not_told_apart(lite0, demo_pair):
    first, second = domain.split_halves(demo_pair[0], seed=0)
    profile = domain.layer_profile(lite0.model, first, second, lite0.layer_groups, 64, model_key=key(),
                                   mean=lite0.mean, std=lite0.std)
    assert min(row["p_value"] for row in profile) > 0.05, profile
    feats = [domain.extract_features(lite0.model, half, [domain.HEAD_INPUT], 64, mean=lite0.mean, std=lite0.std,
                                     head_module=lite0.head_module)[domain.HEAD_INPUT] for half in (first, second)]
    assert mmd.verdict(mmd.mmd_test(*feats)).startswith("No evidence of a difference")


def test_halves_are_stratified_disjoint_and_cover_the_set(demo_pair):
    source = demo_pair[0]
    first, second = domain.split_halves(source, seed=3)
    assert first.counts() == second.counts() == {c: 4 for c in source.classes}
    assert set(first.names).isdisjoint(second.names)
    assert sorted(first.names + second.names) == sorted(source.names)
    assert domain.split_halves(source, seed=3)[0].names == first.names
    with pytest.raises(UserInputError):
        domain.split_halves(source.subset(range(3)))


# ----------------------------------------------------------------------------- pictures


def clouds(n=20, d=10, shift=5.0):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)), rng.normal(size=(n + 5, d)) + shift


def test_pca_puts_two_far_apart_clouds_on_opposite_sides_of_its_first_axis():
    a, b = clouds()
    points = domain.embedding(torch.tensor(a), torch.tensor(b), "pca")
    assert points.shape == (45, 2) and points.dtype == np.float32
    first = points[:, 0]
    assert (np.sign(first[:20]) != np.sign(first[20:].mean())).all()
    assert (np.sign(first[20:]) == np.sign(first[20:].mean())).all()


def test_tsne_gives_one_point_per_image_and_the_same_points_for_the_same_seed():
    a, b = clouds(n=15)
    points = domain.embedding(a, b, "tsne", seed=1)
    assert points.shape == (35, 2) and np.isfinite(points).all()
    np.testing.assert_array_equal(points, domain.embedding(a, b, "tsne", seed=1))
    with pytest.raises(ConfigError):
        domain.embedding(a, b, "umap")


def test_the_kernel_heatmap_lists_set_a_then_set_b():
    a, b = clouds(n=6, d=3, shift=4.0)
    k = domain.kernel_heatmap(torch.tensor(a), torch.tensor(b))
    assert k.shape == (17, 17)
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(np.diag(k), 1.0)
    within_a, within_b, across = k[:6, :6].mean(), k[6:, 6:].mean(), k[:6, 6:].mean()
    assert within_a > across and within_b > across
    sigma = mmd.median_bandwidth(a, b)
    assert k[0, 7] == pytest.approx(math.exp(-np.sum((a[0] - b[1]) ** 2) / (2 * sigma**2)))


def test_the_whole_analysis_of_two_sets_gives_every_number_the_page_shows(tiny, shapes):
    other = data.demo_dataset("target", per_class=3, size=32)
    seen = []
    result = domain.analyse_shift(tiny, shapes, other, domain.HEAD_INPUT, TINY_GROUPS, 32, model_key=key(),
                                  n_permutations=99, progress=lambda f, text: seen.append(f))
    assert result.n_a == result.n_b == 12 and result.embedding.shape == (24, 2)
    assert [row["group"] for row in result.profile] == ["stem", "block", "head"]
    assert result.kernel.shape == (24, 24) and list(result.kernel_index) == list(range(24))
    assert result.test.n_permutations == 99 and len(result.test.null) == 99
    assert 0 <= result.proxy_a <= 2 and result.verdict.endswith(").")
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)


# ----------------------------------------------------------------------------- background work


def test_a_task_runs_in_the_background_and_keeps_its_result():
    release = threading.Event()

    def work(task):
        task.report(0.5, "half way")
        release.wait(5)
        return 42

    task = Task(work).start()
    assert not task.done
    release.set()
    assert task.join(5)
    state = task.snapshot()
    assert state.status == "finished" and state.progress == 1.0 and task.result == 42


def test_a_task_shows_a_user_error_as_its_message():
    def work(_task):
        raise ConfigError("Pick another layer.")

    task = Task(work).start()
    assert task.join(5)
    assert task.snapshot().status == "failed" and task.snapshot().message == "Pick another layer."
