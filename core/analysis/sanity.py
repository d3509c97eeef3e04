"""Do the maps depend on the model at all? Adebayo et al. (2018)'s cascading randomization: re-initialise
the layers from the output down and watch how far each method's map drifts from the original."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.analysis.saliency import (
    attribute,
    borrowed,
    check_method,
    default_gradcam_layer,
    model_device,
    model_dtype,
    prepare_image,
    seeded_on,
)
from core.errors import ConfigError

__all__ = ["SanityResult", "sanity_check"]


@dataclass
class SanityResult:
    """Cascading randomization: how similar each method's map stays as layers are re-initialized.

    ``steps[i]`` names the layer (group) randomized at step i, from the output down; every
    ``similarity[method][i]`` and ``maps[method][i]`` is measured after steps 0..i. Similarity is
    Spearman's rank correlation with the original map; a constant map (e.g. all zero once the
    randomized network saturates) ranks nothing and counts as 0. ``original`` holds the maps
    before any randomization; all maps are downsampled for display.
    """

    steps: list[str]
    similarity: dict[str, list[float]]
    maps: dict[str, list[np.ndarray]]
    original: dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# Sanity check (Adebayo et al. 2018, cascading randomization)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = a.ravel(), b.ravel()
    # A constant map ranks nothing: it shares no ordering with the original.
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    rho = spearmanr(a, b).statistic
    return float(rho) if np.isfinite(rho) else 0.0


def _downsample(saliency: np.ndarray, map_size: int | None) -> np.ndarray:
    h, w = saliency.shape
    if not map_size or max(h, w) <= map_size:
        return saliency.copy()
    scale = map_size / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    t = torch.from_numpy(np.ascontiguousarray(saliency))[None, None]
    return F.adaptive_avg_pool2d(t, size)[0, 0].numpy()


def _execution_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Modules holding parameters of their own, in the order the forward pass first runs them."""
    order: dict[str, None] = {}
    handles = []
    try:
        for name, module in model.named_modules():
            if any(True for _ in module.parameters(recurse=False)):
                handles.append(module.register_forward_pre_hook(
                    lambda _m, _i, name=name: order.setdefault(name, None)))
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return list(order)


def _group_names(model: nn.Module, layers: Sequence[Any]) -> list[tuple[str, list[str]]]:
    modules = dict(model.named_modules())
    groups = []
    for item in layers:
        if isinstance(item, str):
            label, names = item, [item]
        elif hasattr(item, "modules") and not isinstance(item, nn.Module):
            names = list(item.modules)
            label = str(getattr(item, "name", None) or "+".join(names))
        else:
            names = [str(n) for n in item]
            label = "+".join(names)
        for name in names:
            if name not in modules or name == "":
                valid = ", ".join(n for n, m in model.named_children() if any(True for _ in m.parameters()))
                raise ConfigError(
                    f"Layer {name!r} is not a module of this model. Use qualified module names, "
                    f"e.g. {valid} or modules inside them."
                )
        groups.append((label, names))
    return groups


def _reinitialize(module: nn.Module) -> None:
    """New random weights for every parameterized module under ``module``."""
    for sub in module.modules():
        own = list(sub.parameters(recurse=False))
        if not own:
            continue
        if callable(getattr(sub, "reset_parameters", None)):
            sub.reset_parameters()
            continue
        with torch.no_grad():
            for param in own:
                fan_in = param[0].numel() if param.dim() >= 2 else param.numel()
                param.normal_(0.0, 1.0 / math.sqrt(max(1, fan_in)))


def _groups(model: nn.Module, x: torch.Tensor, layers: Sequence[Any] | None) -> list[tuple[str, list[str]]]:
    """The groups to randomize, input to output, as (label, module names): ``layers`` as given, else
    every module holding parameters, in the order the forward pass runs them."""
    if layers is None:
        with borrowed(model):
            groups = [(name, [name]) for name in _execution_order(model, x)]
    else:
        groups = _group_names(model, layers)
    if not groups:
        raise ConfigError("This model has no layers with weights to randomize.")
    return groups


def sanity_check(model: nn.Module, image: torch.Tensor, target: int, methods: Sequence[str], *,
                 layers: Sequence[Any] | None = None, seed: int = 0, gradcam_layer: str | None = None,
                 options: dict[str, dict[str, Any]] | None = None, map_size: int | None = 64,
                 progress: Callable[[int, int, str], None] | None = None, stop=None) -> SanityResult:
    """Cascading randomization test on a deep copy of ``model``: a faithful map should stop
    resembling the original once the weights that produce it are random.

    Args:
        layers: layer groups ordered input to output, each a qualified module name, a list of
            them, or an object with ``.name`` and ``.modules`` (e.g. ``Backbone.layer_groups``).
            Default: every module holding parameters, in forward order. They are randomized from
            the last one back, cumulatively.
        options: per method, options for ``attribute``.
        map_size: longest side of the maps kept for display (the similarity uses full maps).
        progress: called as ``progress(step, total_steps, step_name)`` after each step.
        stop: a ``threading.Event``; once set, the check ends after the current step and returns
            the steps done so far.
    """
    methods = [check_method(m) for m in methods]
    options = options or {}
    for method in options:
        check_method(method)
    device = model_device(model)
    x = prepare_image(image, device, model_dtype(model))

    copied = copy.deepcopy(model)
    groups = _groups(copied, x, layers)
    if "gradcam" in methods and gradcam_layer is None:
        gradcam_layer = default_gradcam_layer(copied, image)

    def maps_now() -> dict[str, np.ndarray]:
        return {
            m: attribute(copied, image, target, m, layer=gradcam_layer if m == "gradcam" else None,
                         **options.get(m, {}))
            for m in methods
        }

    original = maps_now()
    result = SanityResult(
        steps=[],
        similarity={m: [] for m in methods},
        maps={m: [] for m in methods},
        original={m: _downsample(original[m], map_size) for m in methods},
    )
    total = len(groups)
    for step, (label, names) in enumerate(reversed(groups)):
        if stop is not None and stop.is_set():
            break
        with seeded_on(seed + step, device):
            for name in names:
                _reinitialize(copied.get_submodule(name))
        now = maps_now()
        result.steps.append(label)
        for m in methods:
            result.similarity[m].append(_spearman(original[m], now[m]))
            result.maps[m].append(_downsample(now[m], map_size))
        if progress is not None:
            progress(step + 1, total, label)
    return result
