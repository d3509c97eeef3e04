"""How far apart two sets of features are: kernel MMD, its permutation test, and a domain classifier.

The Gaussian kernel is ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``; with several sigmas the kernel
is their mean. One kernel matrix of the pooled sample serves the statistic and every permutation,
so a 1,000-permutation test costs about two matrix products of size N x N.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

from core.errors import ConfigError, UserInputError

__all__ = [
    "MMDResult",
    "median_bandwidth",
    "bandwidths",
    "kernel_matrix",
    "mmd2",
    "mmd_test",
    "mmd_loss",
    "proxy_a_distance",
    "verdict",
]

# Pooled sizes up to this are computed in float64 on the CPU: exact enough to compare with a
# textbook formula and still well under a second. Larger ones use float32 where the data lives.
_FLOAT64_MAX_N = 4096
# Points used by the median heuristic; the median of ~500k distances is already stable.
_MEDIAN_SUBSAMPLE = 1000
# Elements in one (B x N) block of permutation indicators: 16 MiB of float32, 32 MiB of indices.
_PERMUTATION_BLOCK = 1 << 22


@dataclass
class MMDResult:
    """Outcome of :func:`mmd_test`; ``null`` holds the permuted statistics for a histogram."""

    mmd2: float
    p_value: float
    bandwidths: list[float]
    null: np.ndarray = field(repr=False, compare=False)
    n_permutations: int = 0


# ----------------------------------------------------------------------------- checking input


def _as_features(a, name: str) -> torch.Tensor:
    """A detached 2-D floating tensor, or a UserInputError that says what is wrong."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        try:
            array = np.asarray(a)
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"The {name} features must be a numeric array or tensor ({exc}).") from None
        if array.dtype.kind not in "biuf":
            raise UserInputError(f"The {name} features must be real numbers, not {array.dtype}.")
        t = torch.as_tensor(array)
    if t.is_complex() or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise UserInputError(f"The {name} features must be real numbers, not {t.dtype}.")
    if t.ndim != 2:
        raise UserInputError(
            f"The {name} features must be a 2-D array (samples x feature width); got shape "
            f"{tuple(t.shape)}. Flatten or pool each sample's features first."
        )
    if t.shape[0] < 2:
        raise UserInputError(f"The {name} set needs at least 2 samples; it has {t.shape[0]}.")
    if t.shape[1] < 1:
        raise UserInputError(f"The {name} features are empty (width 0).")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise UserInputError(
            f"The {name} features contain NaN or infinite values; check the model's outputs "
            "(a diverged training run produces them)."
        )
    return t


_INT_DTYPES = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets checked, with the same width."""
    tx, ty = _as_features(x, "first"), _as_features(y, "second")
    if tx.shape[1] != ty.shape[1]:
        raise UserInputError(
            f"The two sets have different feature widths ({tx.shape[1]} and {ty.shape[1]}); "
            "compare features taken from the same layer."
        )
    return tx, ty


def _pooled(x, y) -> tuple[torch.Tensor, int]:
    """The pooled sample in the working precision, and the size of the first set."""
    tx, ty = _pair(x, y)
    n_total = tx.shape[0] + ty.shape[0]
    if n_total <= _FLOAT64_MAX_N:
        dtype, device = torch.float64, torch.device("cpu")
    else:
        dtype, device = torch.float32, tx.device if tx.device == ty.device else torch.device("cpu")
    z = torch.cat([tx.to(device=device, dtype=dtype), ty.to(device=device, dtype=dtype)])
    return z, tx.shape[0]


def _check_sigmas(values) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"Every kernel bandwidth must be a positive number; got {v!r}.")
        out.append(float(v))
    if not out:
        raise ConfigError("The list of kernel bandwidths is empty; give at least one positive number.")
    return out


# ----------------------------------------------------------------------------- kernel


def _squared_distances(z: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances by one matrix product: O(N^2) memory, never O(N^2 d)."""
    # Distances do not change when the pooled mean is removed, but the cancellation in
    # |a|^2 + |b|^2 - 2ab does: it shrinks with the norms.
    z = z - z.mean(dim=0, keepdim=True)
    sq = (z * z).sum(dim=1)
    if z.requires_grad and torch.is_grad_enabled():
        d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
        return d2.clamp_min(0.0)
    d2 = torch.addmm(sq[None, :], z, z.T, alpha=-2.0)
    d2.add_(sq[:, None]).clamp_(min=0.0)
    d2.fill_diagonal_(0.0)
    return d2


def _kernel_from_distances(d2: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    scales = [-1.0 / (2.0 * s * s) for s in sigmas]
    if d2.requires_grad and torch.is_grad_enabled():
        return sum(torch.exp(d2 * c) for c in scales) / len(scales)
    if len(scales) == 1:
        return d2.mul_(scales[0]).exp_()
    k = torch.exp(d2 * scales[0])
    term = torch.empty_like(d2)
    for c in scales[1:]:
        torch.mul(d2, c, out=term)
        k.add_(term.exp_())
    return k.div_(len(scales))


def kernel_matrix(z: torch.Tensor, sigmas) -> torch.Tensor:
    """Gaussian kernel matrix ``[N, N]`` of the rows of ``z``, averaged over ``sigmas``.

    Keeps ``z``'s dtype and device and is differentiable when ``z`` requires grad.
    """
    if isinstance(sigmas, numbers.Real):
        sigmas = [sigmas]
    sigmas = _check_sigmas(list(sigmas))
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        raise UserInputError("kernel_matrix needs a 2-D tensor (samples x feature width).")
    return _kernel_from_distances(_squared_distances(z), sigmas)


# ----------------------------------------------------------------------------- bandwidth


def _median_sigma(z: torch.Tensor) -> float:
    """Median pairwise distance of (a fixed random subsample of) the rows of ``z``."""
    z = z.detach()
    if z.shape[0] > _MEDIAN_SUBSAMPLE:
        generator = torch.Generator().manual_seed(0)
        idx = torch.randperm(z.shape[0], generator=generator)[:_MEDIAN_SUBSAMPLE]
        z = z[idx.to(z.device)]
    d2 = _squared_distances(z.to(torch.float64))
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=d2.device)
    dist = d2[iu[0], iu[1]].sqrt()
    sigma = float(torch.quantile(dist, 0.5))
    if sigma > 0:
        return sigma
    # Mostly duplicated points: the typical distance between points that differ at all.
    positive = dist[dist > 0]
    return float(torch.quantile(positive, 0.5)) if positive.numel() else 1.0


def median_bandwidth(x, y) -> float:
    """The median heuristic: sigma = median distance between points of the pooled sample."""
    z, _ = _pooled(x, y)
    return _median_sigma(z)


def _resolve(z: torch.Tensor, bandwidth) -> list[float]:
    if isinstance(bandwidth, str):
        kind = bandwidth.strip().lower()
        if kind == "median":
            return [_median_sigma(z)]
        if kind == "multi":
            median = _median_sigma(z)
            return [median * 2.0**k for k in range(-2, 3)]
        raise ConfigError(
            f'Unknown bandwidth {bandwidth!r}: use "median", "multi", a positive number or a list of them.'
        )
    if isinstance(bandwidth, numbers.Real) and not isinstance(bandwidth, bool):
        return _check_sigmas([bandwidth])
    if isinstance(bandwidth, (list, tuple, np.ndarray, torch.Tensor)):
        values = bandwidth.tolist() if hasattr(bandwidth, "tolist") else list(bandwidth)
        if not isinstance(values, list):
            values = [values]
        return _check_sigmas(values)
    raise ConfigError(
        f'The bandwidth must be "median", "multi", a positive number or a list of them; got {bandwidth!r}.'
    )


def bandwidths(x, y, bandwidth="median") -> list[float]:
    """The kernel sigmas meant by ``bandwidth``: "median", "multi" (median x 2^-2..2^2), a number or a list."""
    z, _ = _pooled(x, y)
    return _resolve(z, bandwidth)


# ----------------------------------------------------------------------------- statistic


def _total(t: torch.Tensor, accumulate=None) -> torch.Tensor:
    """Sum of all entries; with ``accumulate``, rows are summed natively and the row sums in it."""
    if accumulate is None:
        return t.sum()
    # sum(dtype=float64) of a float32 matrix converts element by element and is ~15x slower.
    rows = t.sum(dim=-1) if t.ndim > 1 else t
    return rows.to(accumulate).sum()


def _unbiased_mmd2(k: torch.Tensor, n: int, accumulate=None) -> torch.Tensor:
    """Unbiased MMD^2 from the pooled kernel matrix whose first ``n`` rows are the first set."""
    m = k.shape[0] - n
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    sxx = _total(kxx, accumulate) - _total(kxx.diagonal(), accumulate)
    syy = _total(kyy, accumulate) - _total(kyy.diagonal(), accumulate)
    sxy = _total(kxy, accumulate)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (n * m)


def mmd2(x, y, bandwidth="median") -> float:
    """Unbiased estimate of the squared MMD between two sets of features (rows are samples)."""
    z, n = _pooled(x, y)
    sigmas = _resolve(z, bandwidth)
    with torch.no_grad():
        k = kernel_matrix(z, sigmas)
        return float(_unbiased_mmd2(k, n, accumulate=torch.float64))


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be a whole number of at least {minimum}; got {value!r}.")
    return int(value)


def _permuted_statistics(kc: torch.Tensor, n: int, indicators: torch.Tensor, row_sums, total) -> torch.Tensor:
    """MMD^2 for each row ``a`` of the 0/1 ``indicators`` [B, N] (1 = first set), by one product.

    ``kc`` is symmetric with a zero diagonal, so with r its row sums and T its total:
    s_xx = a'Ka, s_xy = a'r - s_xx and s_yy = T - 2a'r + s_xx.
    """
    m = kc.shape[0] - n
    ak = indicators @ kc
    sxx = (indicators * ak).sum(dim=1).to(torch.float64)
    ar = indicators.to(torch.float64) @ row_sums
    sxy = ar - sxx
    syy = total - 2.0 * ar + sxx
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (n * m)


def mmd_test(x, y, n_permutations: int = 1000, bandwidth="median", seed: int = 0) -> MMDResult:
    """Permutation test of "both sets come from the same distribution" with the unbiased MMD^2.

    The p-value is (1 + #permutations at least as large as the observed statistic) /
    (1 + n_permutations), so it is never 0. The same seed gives the same result.
    """
    n_permutations = _check_count(n_permutations, "The number of permutations", 1)
    seed = _check_count(seed, "The seed", 0)
    z, n = _pooled(x, y)
    n_total = z.shape[0]
    sigmas = _resolve(z, bandwidth)
    with torch.no_grad():
        k = kernel_matrix(z, sigmas)
        del z
        observed = float(_unbiased_mmd2(k, n, accumulate=torch.float64))
        # The MMD does not change when a constant is added to the off-diagonal kernel; centring
        # it keeps the float32 sums of the permutation products small and accurate.
        k.fill_diagonal_(0.0)
        offdiag_mean = float(_total(k, torch.float64)) / (n_total * (n_total - 1))
        k.sub_(offdiag_mean).fill_diagonal_(0.0)
        # float32 products are 3-4x faster; their rounding (~1e-8 of a kernel value once
        # centred) is far below the spread of the null. Tiny problems stay in float64.
        small = n_total * n_total * n_permutations <= 10**9
        kc = k if small else k.to(torch.float32)
        del k
        row_sums = kc.sum(dim=1).to(torch.float64)
        total = row_sums.sum()
        scale = float(torch.linalg.vector_norm(kc, 1)) / (n_total * (n_total - 1))
        # Ties (identical partitions, duplicated points) must count as "at least as large"
        # although the rounding of different summation orders separates them slightly.
        tolerance = 1e-6 * scale if kc.dtype == torch.float32 else 1e-12 * scale

        first = torch.zeros(1, n_total, dtype=kc.dtype, device=kc.device)
        first[0, :n] = 1.0
        reference = float(_permuted_statistics(kc, n, first, row_sums, total)[0])

        generator = torch.Generator().manual_seed(seed)
        block = max(1, min(n_permutations, _PERMUTATION_BLOCK // n_total))
        null = []
        for start in range(0, n_permutations, block):
            b = min(block, n_permutations - start)
            chosen = torch.stack([torch.randperm(n_total, generator=generator)[:n] for _ in range(b)])
            indicators = torch.zeros(b, n_total, dtype=kc.dtype)
            indicators.scatter_(1, chosen, 1.0)
            null.append(_permuted_statistics(kc, n, indicators.to(kc.device), row_sums, total).cpu())
        null_stats = torch.cat(null).numpy()
    exceed = int(np.count_nonzero(null_stats >= reference - tolerance))
    return MMDResult(
        mmd2=observed,
        p_value=(1 + exceed) / (1 + n_permutations),
        bandwidths=sigmas,
        null=null_stats,
        n_permutations=n_permutations,
    )


# ----------------------------------------------------------------------------- training loss


def mmd_loss(source: torch.Tensor, target: torch.Tensor, sigmas=None) -> torch.Tensor:
    """Differentiable unbiased MMD^2 between two batches, for DAN-style domain adaptation.

    ``sigmas=None`` uses five kernels, median x 2^-2..2^2, with the median taken from the
    detached batch; otherwise anything :func:`bandwidths` accepts. Batch sizes may differ.
    """
    for t, name in ((source, "source"), (target, "target")):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            raise UserInputError(f"mmd_loss needs 2-D {name} features (batch x width).")
        if t.shape[0] < 2:
            raise UserInputError(f"mmd_loss needs at least 2 {name} samples per batch; got {t.shape[0]}.")
    if source.shape[1] != target.shape[1]:
        raise UserInputError(
            f"Source and target features have different widths ({source.shape[1]} and {target.shape[1]})."
        )
    z = torch.cat([source, target.to(dtype=source.dtype, device=source.device)])
    resolved = _resolve(z.detach(), "multi" if sigmas is None else sigmas)
    return _unbiased_mmd2(kernel_matrix(z, resolved), source.shape[0])


# ----------------------------------------------------------------------------- domain classifier


def proxy_a_distance(a, b, seed: int = 0) -> float:
    """Proxy A-distance 2(1 - 2 err) of a linear domain classifier, in [0, 2].

    Trained on a stratified half of each set, ``err`` is its balanced error on the other half:
    near 0 when the sets cannot be told apart, 2 when they always can.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seed = _check_count(seed, "The seed", 0)
    ta, tb = _pair(a, b)
    if min(ta.shape[0], tb.shape[0]) < 4:
        raise UserInputError("The proxy A-distance needs at least 4 samples in each set (2 to train, 2 to test).")
    features = np.concatenate([ta.cpu().double().numpy(), tb.cpu().double().numpy()])
    labels = np.concatenate([np.zeros(ta.shape[0], dtype=int), np.ones(tb.shape[0], dtype=int)])
    f_train, f_test, l_train, l_test = train_test_split(
        features, labels, test_size=0.5, stratify=labels, random_state=seed
    )
    classifier = make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000)
    )
    classifier.fit(f_train, l_train)
    error = 1.0 - balanced_accuracy_score(l_test, classifier.predict(f_test))
    return float(np.clip(2.0 * (1.0 - 2.0 * error), 0.0, 2.0))


# ----------------------------------------------------------------------------- words


def _format_p(p: float) -> str:
    if p < 0.001:
        return "p < 0.001"
    if p < 0.01:
        return f"p = {p:.3f}"
    return f"p = {p:.2f}"


def verdict(result: MMDResult, alpha: float = 0.01) -> str:
    """One plain sentence for a teacher: do the two sets differ at this layer?"""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise ConfigError(f"The significance level must be between 0 and 1 (e.g. 0.01); got {alpha!r}.")
    p = result.p_value
    if p <= alpha:
        return f"The two sets differ at this layer ({_format_p(p)})."
    return f"No evidence of a difference at this layer ({_format_p(p)})."
