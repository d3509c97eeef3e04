"""How far apart two image sets are inside a network: features, MMD by depth, pictures of the gap.

A layer's features are its output averaged over space (global average pooling), one vector of
C numbers per image, so that even early, high-resolution layers give small widths and the MMD
of different layers can be compared. ``HEAD_INPUT`` names what flows into the classifier head:
the pooled penultimate features, where DAN-style adaptation usually aligns the two sets.

Features are cached process-wide by (model key, layer, dataset fingerprint, input size); the
caller supplies the model key ("pretrained:efficientnet_lite0", a run id) because an object's
``id`` does not change when a model is trained in place, and is reused after it is freed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from core.analysis import mmd
from core.analysis.features import activations
from core.cache import FeatureCache
from core.data.encoded import encode_images, normalise
from core.data.splits import split
from core.errors import ConfigError, UserInputError

__all__ = [
    "HEAD_INPUT",
    "FEATURE_CACHE",
    "PROFILE_PERMUTATIONS",
    "TEST_PERMUTATIONS",
    "pool",
    "extract_features",
    "layer_profile",
    "embedding",
    "kernel_heatmap",
    "split_halves",
    "ShiftAnalysis",
    "analyse_shift",
]

HEAD_INPUT = "head input"
TEST_PERMUTATIONS = 1000
PROFILE_PERMUTATIONS = 200  # ten layers in the time of two main tests; p can still reach 1/201

# Entries are one layer of one dataset (N x C float32): 80 images x 1280 channels is 400 kB.
FEATURE_CACHE = FeatureCache(max_items=256)


# ----------------------------------------------------------------------------- features


def pool(output: torch.Tensor) -> torch.Tensor:
    """One vector per sample: spatial maps averaged over space, anything else flattened."""
    if output.ndim > 2:
        return output.flatten(2).mean(dim=2)
    if output.ndim == 1:
        return output[:, None]
    return output


def _normalisation(model: nn.Module, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    mean = mean if mean is not None else getattr(model, "mean", None)
    std = std if std is not None else getattr(model, "std", None)
    if mean is None or std is None:
        raise ConfigError("This model does not say how its inputs are normalised: pass its mean and std.")
    return torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)


def _one_pass(model: nn.Module, x: torch.Tensor, layers: list[str], head_module: str | None) -> dict[str, torch.Tensor]:
    """Pooled features of every layer in ``layers`` from one forward pass of ``x``."""
    wanted = [name for name in layers if name != HEAD_INPUT]
    grabbed: list[torch.Tensor] = []
    handle = None
    if HEAD_INPUT in layers:
        if not head_module:
            raise ConfigError("This model has no known classifier head, so its head input cannot be read.")
        head = model.get_submodule(head_module)

        def grab(_module, args):
            if not grabbed:
                grabbed.append(pool(args[0].detach().to("cpu", torch.float32, copy=True)))

        handle = head.register_forward_pre_hook(grab)
        # activations() stops the pass once its own layers are read: it must wait for the head
        if head_module not in wanted:
            wanted.append(head_module)
    try:
        acts = activations(model, x, wanted)
    finally:
        if handle is not None:
            handle.remove()
    out = {name: pool(acts[name]) for name in layers if name != HEAD_INPUT}
    if HEAD_INPUT in layers:
        out[HEAD_INPUT] = grabbed[0]
    return out


def extract_features(model: nn.Module, ds, layers: list[str], image_size: int, batch_size: int = 32, *,
                     model_key: str | None = None, mean=None, std=None,
                     head_module: str | None = None) -> dict[str, torch.Tensor]:
    """Pooled features Tensor[N, C] (float32, CPU) of every image of ``ds`` at each layer.

    One forward pass per batch serves all layers; the model's hooks and train/eval modes are
    put back. With ``model_key``, each layer's features are cached per (model key, layer,
    ``ds.fingerprint``, ``image_size``) and only the layers not cached yet are computed.

    Args:
        layers: module names as in ``named_modules()``, or ``HEAD_INPUT``.
        mean, std: the model's input normalisation (default: ``model.mean`` / ``model.std``).
        head_module: where ``HEAD_INPUT`` is read (default: ``model.head_module``).
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = list(dict.fromkeys(layers))
    if not layers:
        return {}
    if len(ds) == 0:
        raise UserInputError("This dataset has no images to compare.")
    if batch_size < 1:
        raise ConfigError("The batch size must be at least 1.")
    image_size = int(image_size)

    def key(layer: str):
        return (model_key, (layer,), ds.fingerprint, image_size)

    result: dict[str, torch.Tensor] = {}
    if model_key is not None:
        for layer in layers:
            cached = FEATURE_CACHE.get(key(layer))
            if cached is not None:
                result[layer] = cached
    missing = [layer for layer in layers if layer not in result]
    if missing:
        mean_t, std_t = _normalisation(model, mean, std)
        head_module = head_module or getattr(model, "head_module", None)
        images = encode_images(ds, image_size)
        parts: dict[str, list[torch.Tensor]] = {layer: [] for layer in missing}
        for start in range(0, len(images), batch_size):
            x = normalise(images[start:start + batch_size], mean_t, std_t)
            for layer, feats in _one_pass(model, x, missing, head_module).items():
                parts[layer].append(feats)
        for layer in missing:
            result[layer] = torch.cat(parts[layer]).contiguous()
            if model_key is not None:
                FEATURE_CACHE[key(layer)] = result[layer]
    return {layer: result[layer] for layer in layers}


# ----------------------------------------------------------------------------- statistics


def layer_profile(model: nn.Module, ds_a, ds_b, layer_groups, image_size: int = 96, *,
                  model_key: str | None = None, n_permutations: int = PROFILE_PERMUTATIONS,
                  bandwidth="median", seed: int = 0, batch_size: int = 32, mean=None, std=None) -> list[dict]:
    """MMD^2 and its permutation p-value at every layer group, input to output.

    A group's features are the pooled output of its last module. Returns one dict per group:
    ``group``, ``layer``, ``mmd2``, ``p_value`` and ``width`` (channels).
    """
    layers = [g.modules[-1] for g in layer_groups]
    common = dict(model_key=model_key, mean=mean, std=std, batch_size=batch_size)
    fa = extract_features(model, ds_a, layers, image_size, **common)
    fb = extract_features(model, ds_b, layers, image_size, **common)
    return _profile(fa, fb, layer_groups, n_permutations, bandwidth, seed)


def _profile(fa: dict, fb: dict, layer_groups, n_permutations: int, bandwidth, seed: int) -> list[dict]:
    rows = []
    for group in layer_groups:
        layer = group.modules[-1]
        result = mmd.mmd_test(fa[layer], fb[layer], n_permutations=n_permutations, bandwidth=bandwidth, seed=seed)
        rows.append({"group": group.name, "layer": layer, "mmd2": result.mmd2, "p_value": result.p_value,
                     "width": int(fa[layer].shape[1])})
    return rows


def embedding(xa, xb, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Both sets' features in 2-D, rows of ``xa`` first: PCA, or t-SNE (on the top 50 PCs)."""
    from sklearn.decomposition import PCA

    a = np.asarray(xa.detach().cpu() if isinstance(xa, torch.Tensor) else xa, dtype=np.float64)
    b = np.asarray(xb.detach().cpu() if isinstance(xb, torch.Tensor) else xb, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise UserInputError("Both sets need 2-D features of the same width to share one picture.")
    z = np.concatenate([a, b])
    if z.shape[0] < 3:
        raise UserInputError("A 2-D picture needs at least 3 images in all.")
    z = z - z.mean(axis=0, keepdims=True)
    method = method.lower()
    if method == "pca":
        k = min(2, z.shape[1])
        out = PCA(n_components=k, random_state=seed).fit_transform(z) if k else np.zeros((len(z), 0))
        if out.shape[1] < 2:  # a one-channel layer: the second axis carries nothing
            out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
        return out.astype(np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        k = min(50, z.shape[1], z.shape[0])
        reduced = PCA(n_components=k, random_state=seed).fit_transform(z) if z.shape[1] > k else z
        perplexity = float(min(30.0, max(2.0, (z.shape[0] - 1) / 3)))
        # the exact gradient is several times faster than Barnes-Hut's tree below a few hundred points
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    method="exact" if z.shape[0] <= 400 else "barnes_hut")
        return tsne.fit_transform(reduced).astype(np.float32)
    raise ConfigError(f"Unknown embedding {method!r}: use 'pca' or 'tsne'.")


def kernel_heatmap(xa, xb, bandwidth="median") -> np.ndarray:
    """The Gaussian kernel matrix of both sets, rows and columns ordered ``xa`` then ``xb``."""
    sigmas = list(bandwidth) if isinstance(bandwidth, (list, tuple)) else mmd.bandwidths(xa, xb, bandwidth)
    z = torch.cat([torch.as_tensor(xa).detach().cpu().double(), torch.as_tensor(xb).detach().cpu().double()])
    with torch.no_grad():
        return mmd.kernel_matrix(z, sigmas).numpy()


def split_halves(ds, seed: int = 0):
    """Two stratified halves of one dataset: the control, where no difference should be found."""
    if len(ds) < 4:
        raise UserInputError("Splitting into halves needs at least 4 images.")
    return split(ds, 0.5, seed)


# ----------------------------------------------------------------------------- the whole analysis


@dataclass
class ShiftAnalysis:
    """Everything the Domain shift page shows for two sets at one layer."""

    layer: str
    test: mmd.MMDResult
    verdict: str
    profile: list[dict]
    embedding: np.ndarray  # [Na + Nb, 2], set A first
    kernel: np.ndarray  # [n, n] over ``kernel_index``
    kernel_index: np.ndarray  # rows of [A; B] shown in the kernel matrix
    proxy_a: float
    n_a: int
    n_b: int
    seconds: dict[str, float] = field(default_factory=dict)


def analyse_shift(model: nn.Module, ds_a, ds_b, layer: str, layer_groups, image_size: int, *,
                  model_key: str | None = None, bandwidth="median", method: str = "pca",
                  n_permutations: int = TEST_PERMUTATIONS, alpha: float = 0.01, seed: int = 0,
                  mean=None, std=None, head_module: str | None = None, kernel_points: int = 300,
                  progress: Callable[[float, str], None] | None = None) -> ShiftAnalysis:
    """MMD test with verdict, the MMD along the depth, a 2-D picture, the kernel matrix and
    the proxy A-distance for two image sets; features come from one (cached) pass per set."""
    report = progress or (lambda _f, _t: None)
    seconds: dict[str, float] = {}
    layers = list(dict.fromkeys([g.modules[-1] for g in layer_groups] + [layer]))
    common = dict(model_key=model_key, mean=mean, std=std, head_module=head_module)

    started = time.perf_counter()
    report(0.0, "Computing the first set's features…")
    fa = extract_features(model, ds_a, layers, image_size, **common)
    report(0.3, "Computing the second set's features…")
    fb = extract_features(model, ds_b, layers, image_size, **common)
    seconds["features"] = time.perf_counter() - started
    xa, xb = fa[layer], fb[layer]

    started = time.perf_counter()
    report(0.6, "Permutation test…")
    test = mmd.mmd_test(xa, xb, n_permutations=n_permutations, bandwidth=bandwidth, seed=seed)
    seconds["test"] = time.perf_counter() - started

    started = time.perf_counter()
    report(0.7, "MMD at every layer group…")
    profile = _profile(fa, fb, layer_groups, PROFILE_PERMUTATIONS, bandwidth, seed)
    seconds["profile"] = time.perf_counter() - started

    started = time.perf_counter()
    report(0.85, "2-D picture and kernel matrix…")
    points = embedding(xa, xb, method=method, seed=seed)
    n_total = len(xa) + len(xb)
    # an evenly spaced subset keeps a big upload's heatmap readable and cheap to draw
    index = np.unique(np.linspace(0, n_total - 1, min(kernel_points, n_total)).round().astype(int))
    z = torch.cat([xa, xb])[torch.as_tensor(index)]
    in_a = torch.as_tensor(index < len(xa))
    kernel = kernel_heatmap(z[in_a], z[~in_a], test.bandwidths)
    seconds["picture"] = time.perf_counter() - started

    started = time.perf_counter()
    report(0.95, "Domain classifier…")
    proxy = mmd.proxy_a_distance(xa, xb, seed=seed)
    seconds["proxy_a"] = time.perf_counter() - started
    report(1.0, "Done")
    return ShiftAnalysis(layer, test, mmd.verdict(test, alpha), profile, points, kernel, index, proxy,
                         len(xa), len(xb), seconds)
