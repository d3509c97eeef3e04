"""Specifications of core.analysis.mmd: the statistic, its permutation test, the training loss, the words."""

import itertools
import math

import numpy as np
import pytest
import torch

from core.analysis.mmd import (
    MMDResult,
    bandwidths,
    kernel_matrix,
    median_bandwidth,
    mmd2,
    mmd_loss,
    mmd_test,
    proxy_a_distance,
    verdict,
)
from core.errors import ConfigError, UserInputError


def gaussian(n, d=4, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) + shift


def kernel_by_hand(a, b, sigmas):
    squared = sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True))
    return sum(math.exp(-squared / (2 * s * s)) for s in sigmas) / len(sigmas)


def mmd2_by_hand(x, y, sigmas):
    """Textbook unbiased MMD^2 with explicit loops over pairs."""
    n, m = len(x), len(y)
    xx = sum(kernel_by_hand(x[i], x[j], sigmas) for i in range(n) for j in range(n) if i != j)
    yy = sum(kernel_by_hand(y[i], y[j], sigmas) for i in range(m) for j in range(m) if i != j)
    xy = sum(kernel_by_hand(x[i], y[j], sigmas) for i in range(n) for j in range(m))
    return xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2 * xy / (n * m)


def pairwise_distances_by_hand(z):
    return np.array([np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))])


# ----------------------------------------------------------------------------- the statistic


def test_mmd2_equals_the_textbook_formula_with_one_fixed_bandwidth():
    x, y = gaussian(7, 3, seed=1), gaussian(9, 3, shift=0.5, seed=2)
    assert mmd2(x, y, bandwidth=1.3) == pytest.approx(mmd2_by_hand(x, y, [1.3]), rel=1e-10, abs=1e-12)


def test_mmd2_equals_the_textbook_formula_with_several_bandwidths():
    x, y = gaussian(8, 3, seed=3), gaussian(6, 3, shift=0.3, seed=4)
    sigmas = [0.5, 1.0, 4.0]
    assert mmd2(x, y, bandwidth=sigmas) == pytest.approx(mmd2_by_hand(x, y, sigmas), rel=1e-10, abs=1e-12)


def test_mmd2_takes_numpy_arrays_and_tensors_alike_and_is_symmetric():
    x, y = gaussian(10, seed=5), gaussian(12, shift=1.0, seed=6)
    from_numpy = mmd2(x, y)
    assert mmd2(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)) == pytest.approx(
        from_numpy, rel=1e-5
    )
    assert mmd2(y, x) == pytest.approx(from_numpy, rel=1e-12)


def test_mmd2_of_large_sets_in_float32_stays_close_to_float64():
    # Above 4,096 pooled points the kernel is computed in float32.
    x, y = gaussian(2050, 2, seed=7), gaussian(2050, 2, shift=0.1, seed=8)
    from scipy.spatial.distance import cdist

    z = np.concatenate([x, y])
    k = np.exp(-cdist(z, z, "sqeuclidean") / (2 * 1.5**2))
    n = len(x)
    expected = (
        (k[:n, :n].sum() - n) / (n * (n - 1))
        + (k[n:, n:].sum() - n) / (n * (n - 1))
        - 2 * k[:n, n:].sum() / (n * n)
    )
    assert mmd2(x, y, bandwidth=1.5) == pytest.approx(expected, abs=2e-6)


def test_kernel_matrix_is_the_mean_of_gaussians_with_ones_on_the_diagonal():
    z = torch.tensor(gaussian(6, 3, seed=9))
    sigmas = [0.7, 2.0]
    k = kernel_matrix(z, sigmas)
    expected = [[kernel_by_hand(a, b, sigmas) for b in z.numpy()] for a in z.numpy()]
    np.testing.assert_allclose(k.numpy(), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(k.diagonal().numpy(), np.ones(6))


# ----------------------------------------------------------------------------- bandwidths


def test_median_heuristic_is_the_median_distance_of_the_pooled_sample():
    x, y = gaussian(11, 3, seed=10), gaussian(8, 3, shift=2.0, seed=11)
    expected = np.median(pairwise_distances_by_hand(np.concatenate([x, y])))
    assert median_bandwidth(x, y) == pytest.approx(expected, rel=1e-12)
    assert bandwidths(x, y, "median") == pytest.approx([expected], rel=1e-12)


def test_multi_bandwidth_spreads_five_kernels_around_the_median():
    x, y = gaussian(10, seed=12), gaussian(10, seed=13)
    median = median_bandwidth(x, y)
    assert bandwidths(x, y, "multi") == pytest.approx([median * f for f in (0.25, 0.5, 1, 2, 4)])
    assert bandwidths(x, y, 2) == [2.0]
    assert bandwidths(x, y, (1, 3.5)) == [1.0, 3.5]


def test_median_heuristic_on_many_points_is_repeatable_and_close_to_the_full_median():
    from scipy.spatial.distance import pdist

    x, y = gaussian(800, 3, seed=14), gaussian(700, 3, shift=1.0, seed=15)
    full = np.median(pdist(np.concatenate([x, y])))
    first = median_bandwidth(x, y)
    assert median_bandwidth(x, y) == first
    assert first == pytest.approx(full, rel=0.03)


# ----------------------------------------------------------------------------- the test


def test_samples_from_one_distribution_rarely_give_small_p_values():
    p_values = [
        mmd_test(gaussian(50, seed=2 * s), gaussian(50, seed=2 * s + 1), n_permutations=200, seed=s).p_value
        for s in range(8)
    ]
    assert p_values[0] > 0.05
    assert sum(p > 0.05 for p in p_values) >= 6


def test_a_shifted_mean_is_detected():
    result = mmd_test(gaussian(50, seed=20), gaussian(50, shift=1.0, seed=21), n_permutations=500)
    assert result.p_value <= 0.01
    assert result.mmd2 > result.null.max()


def test_p_value_is_never_zero_even_for_an_enormous_shift():
    result = mmd_test(gaussian(20, seed=22), gaussian(20, shift=100.0, seed=23), n_permutations=9)
    assert result.p_value == pytest.approx(1 / 10)


def test_the_result_reports_the_statistic_bandwidths_and_null_it_used():
    x, y = gaussian(30, seed=24), gaussian(25, shift=0.5, seed=25)
    result = mmd_test(x, y, n_permutations=300, bandwidth="multi", seed=3)
    assert isinstance(result, MMDResult)
    assert result.bandwidths == pytest.approx(bandwidths(x, y, "multi"))
    assert result.mmd2 == pytest.approx(mmd2(x, y, bandwidth="multi"), rel=1e-12)
    assert result.null.shape == (300,) and result.n_permutations == 300
    exceeding = np.count_nonzero(result.null >= result.mmd2)
    assert result.p_value == pytest.approx((1 + exceeding) / 301)


def test_every_permuted_statistic_is_the_mmd2_of_some_split_of_the_pooled_sample():
    x, y = gaussian(2, 2, seed=26), gaussian(4, 2, shift=1.0, seed=27)
    z = np.concatenate([x, y])
    splits = {
        round(mmd2(z[list(s)], z[[i for i in range(6) if i not in s]], bandwidth=1.0), 9)
        for s in itertools.combinations(range(6), 2)
    }
    result = mmd_test(x, y, n_permutations=100, bandwidth=1.0)
    assert {round(v, 9) for v in result.null} <= splits
    assert len(set(np.round(result.null, 9))) == len(splits)  # 100 draws reach all 15 splits


def test_permuted_statistics_average_to_zero_because_the_estimate_is_unbiased():
    result = mmd_test(gaussian(40, seed=28), gaussian(60, shift=0.5, seed=29), n_permutations=2000)
    assert abs(result.null.mean()) < 4 * result.null.std() / math.sqrt(2000)


def test_the_same_seed_gives_the_same_test_and_another_seed_another_null():
    x, y = gaussian(30, seed=30), gaussian(30, seed=31)
    a, b = mmd_test(x, y, n_permutations=100, seed=5), mmd_test(x, y, n_permutations=100, seed=5)
    np.testing.assert_array_equal(a.null, b.null)
    assert a.p_value == b.p_value
    assert not np.array_equal(a.null, mmd_test(x, y, n_permutations=100, seed=6).null)


def test_sets_of_one_repeated_point_tie_with_every_permutation_and_give_p_one():
    result = mmd_test(np.ones((5, 3)), np.ones((4, 3)), n_permutations=50)
    assert result.mmd2 == 0.0
    assert result.p_value == 1.0


# ----------------------------------------------------------------------------- training loss


def test_mmd_loss_agrees_with_mmd2_for_the_same_bandwidths():
    x, y = gaussian(9, seed=33), gaussian(13, shift=0.4, seed=34)
    loss = mmd_loss(torch.tensor(x), torch.tensor(y))
    assert loss.item() == pytest.approx(mmd2(x, y, bandwidth="multi"), rel=1e-10)
    assert mmd_loss(torch.tensor(x), torch.tensor(y), sigmas=[0.8]).item() == pytest.approx(
        mmd2(x, y, bandwidth=0.8), rel=1e-10
    )


def test_following_the_gradient_of_mmd_loss_brings_the_source_towards_the_target():
    target = torch.tensor(gaussian(24, 3, seed=35), dtype=torch.float32)
    source = torch.tensor(gaussian(16, 3, shift=2.0, seed=36), dtype=torch.float32).requires_grad_(True)
    before = mmd2(source.detach(), target, bandwidth=2.0)
    for _ in range(30):
        (gradient,) = torch.autograd.grad(mmd_loss(source, target), source)
        assert torch.isfinite(gradient).all()
        with torch.no_grad():
            source -= 5.0 * gradient
    assert mmd2(source.detach(), target, bandwidth=2.0) < 0.5 * before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mmd_loss_runs_on_cuda():
    source = torch.randn(32, 8, device="cuda", requires_grad=True)
    loss = mmd_loss(source, torch.randn(20, 8, device="cuda") + 1)
    loss.backward()
    assert loss.device.type == "cuda" and source.grad is not None


# ----------------------------------------------------------------------------- domain classifier


def test_proxy_a_distance_is_near_zero_for_one_distribution():
    assert proxy_a_distance(gaussian(200, seed=37), gaussian(200, seed=38)) < 0.5


def test_proxy_a_distance_is_near_two_for_well_separated_sets():
    assert proxy_a_distance(gaussian(100, seed=39), gaussian(120, shift=5.0, seed=40)) > 1.9


def test_proxy_a_distance_is_repeatable_for_a_seed():
    a, b = gaussian(60, seed=41), gaussian(60, shift=0.3, seed=42)
    assert proxy_a_distance(a, b, seed=4) == proxy_a_distance(a, b, seed=4)


# ----------------------------------------------------------------------------- words


def test_verdict_says_in_plain_words_whether_the_sets_differ():
    differ = MMDResult(mmd2=0.3, p_value=1 / 1001, bandwidths=[1.0], null=np.zeros(1000), n_permutations=1000)
    same = MMDResult(mmd2=0.0, p_value=0.43, bandwidths=[1.0], null=np.zeros(1000), n_permutations=1000)
    assert verdict(differ) == "The two sets differ at this layer (p < 0.001)."
    assert verdict(same) == "No evidence of a difference at this layer (p = 0.43)."
    assert verdict(same, alpha=0.5).startswith("The two sets differ")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "x, y, words",
    [
        (gaussian(5, 3), gaussian(5, 4), "different feature widths"),
        (gaussian(1, 3), gaussian(5, 3), "at least 2 samples"),
        (gaussian(5, 3), np.full((4, 3), np.nan), "NaN or infinite"),
        (np.arange(5.0), gaussian(5, 1), "2-D"),
        (np.array([["a", "b"], ["c", "d"]]), gaussian(2, 2), "real numbers"),
    ],
)
def test_unusable_features_are_refused_with_a_message_that_says_why(x, y, words):
    for call in (lambda: mmd2(x, y), lambda: mmd_test(x, y, n_permutations=10), lambda: median_bandwidth(x, y)):
        with pytest.raises(UserInputError, match=words):
            call()


@pytest.mark.parametrize("bandwidth", ["wide", -1.0, 0, float("nan"), [], [1.0, -2.0], True, None])
def test_unusable_bandwidths_are_refused(bandwidth):
    with pytest.raises(ConfigError, match="bandwidth"):
        mmd2(gaussian(5), gaussian(5), bandwidth=bandwidth)


def test_unusable_test_settings_are_refused():
    x, y = gaussian(5), gaussian(5)
    with pytest.raises(ConfigError, match="permutations"):
        mmd_test(x, y, n_permutations=0)
    with pytest.raises(ConfigError, match="seed"):
        mmd_test(x, y, seed=-1)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        verdict(mmd_test(x, y, n_permutations=10), alpha=1.5)
    with pytest.raises(UserInputError, match="at least 4 samples"):
        proxy_a_distance(gaussian(3), gaussian(10))
    with pytest.raises(UserInputError, match="at least 2 source samples"):
        mmd_loss(torch.zeros(1, 4), torch.zeros(5, 4))
