"""What a network computes inside: feature maps, how fine-tuning changed them, and where.

For the same images this module reads the intermediate outputs of a pretrained and a fine-tuned
model (forward hooks, one pass), orders channels by how much they changed, measures the relative
weight change of each layer and the linear CKA between the two models' representations, so the
page can show that early layers keep general features while late layers adapt.

Which layers can be shown (:func:`layer_names`) is decided from module types alone, without
running the model:

1. The *head* starts at the first global pooling (``AdaptiveAvgPool2d`` / ``AdaptiveMaxPool2d``)
   or ``Flatten`` module, in ``named_modules()`` order, after which no 2-D convolution follows
   (a squeeze-excitation pool inside a block is followed by convolutions, so it does not count).
   Without one, the first ``Linear`` after the last convolution starts it.
2. Before the head, a module is listed when it is a 2-D convolution (``Conv2d`` and subclasses,
   ``ConvTranspose2d``), a 2-D normalisation (``BatchNorm2d``, ``SyncBatchNorm``,
   ``InstanceNorm2d``, ``GroupNorm``, a class named ``LayerNorm2d``), or a container (a module
   with children that has a forward, so not ``ModuleList``/``ModuleDict``) holding a 2-D
   convolution and lying wholly before the head.
3. The root module, activations, pooling, padding, dropout, ``Linear`` and everything from the
   head on are left out. Names come in ``named_modules()`` order (a block before its parts).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError
from core.hooks import preserved

__all__ = [
    "layer_names",
    "activations",
    "feature_maps",
    "channel_order",
    "weight_change",
    "linear_cka",
    "cka_by_layer",
    "top_activating",
    "channel_means",
    "depth_profile",
    "tile_channels",
]

_CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
_NORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm2d, nn.GroupNorm)
_GLOBAL_REDUCERS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
_NO_FORWARD = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)

# Column block sizes for Gram matrices: keeps the float64 copy of a wide map to ~32 MB.
_GRAM_BLOCK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------- layer names


def _is_spatial_leaf(module: nn.Module) -> bool:
    return isinstance(module, _CONV_TYPES + _NORM_TYPES) or type(module).__name__ == "LayerNorm2d"


def _head_start(entries: list[tuple[str, nn.Module]]) -> int:
    """Index in ``entries`` where the classifier head begins (``len(entries)`` when none)."""
    conv_at = [i for i, (_, m) in enumerate(entries) if isinstance(m, _CONV_TYPES)]
    last_conv = conv_at[-1] if conv_at else -1
    for i, (_, m) in enumerate(entries):
        if i > last_conv and isinstance(m, _GLOBAL_REDUCERS):
            return i
    for i, (_, m) in enumerate(entries):
        if i > last_conv and isinstance(m, nn.Linear):
            return i
    return len(entries)


def layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the modules whose output is a spatial feature map (rule in the module doc)."""
    entries = list(model.named_modules())
    head = _head_start(entries)
    index = {id(m): i for i, (_, m) in enumerate(entries)}
    names = []
    for name, module in entries[:head]:
        if not name:
            continue
        if _is_spatial_leaf(module):
            names.append(name)
            continue
        if isinstance(module, _NO_FORWARD) or not any(True for _ in module.children()):
            continue
        inside = [index[id(m)] for m in module.modules() if id(m) in index]
        has_conv = any(isinstance(m, _CONV_TYPES) for m in module.modules())
        if has_conv and max(inside) < head:
            names.append(name)
    return names


def _unknown_layer(model: nn.Module, layer: str) -> ConfigError:
    valid = layer_names(model)
    if len(valid) > 6:
        shown = ", ".join(valid[:3]) + ", …, " + ", ".join(valid[-2:])
    else:
        shown = ", ".join(valid) or "(none)"
    return ConfigError(f"This model has no layer {layer!r}. Pick one of its {len(valid)} layers: {shown}.")


# ----------------------------------------------------------------------------- activations


class _AllCaptured(Exception):
    """Raised from a hook to skip the rest of the forward pass once every layer is read."""


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device, torch.float32
    return torch.device("cpu"), torch.float32


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def _known_layers(model: nn.Module, modules: dict, layers: Iterable[str] | str) -> list[str]:
    """``layers`` once each, in order; ConfigError naming the valid layers for one the model lacks."""
    wanted = list(dict.fromkeys([layers] if isinstance(layers, str) else layers))
    for name in wanted:
        if not name or name not in modules:
            raise _unknown_layer(model, name)
    return wanted


def activations(model: nn.Module, images: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
    """Each layer's output for ``images`` (Tensor[B, 3, H, W]) from one forward pass in eval mode.

    Outputs are detached float32 copies on the CPU, keyed in the order of ``layers``. A module
    called more than once gives its first output. The model runs on its own device; its hooks and
    the train/eval mode of every submodule are put back afterwards, also after an error.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be a Tensor[B, C, H, W], got shape {tuple(images.shape)}")
    modules = dict(model.named_modules())
    wanted = _known_layers(model, modules, layers)
    if not wanted:
        return {}

    captured: dict[str, torch.Tensor | None] = {}
    # A page's models are shared by the session's pages, and a rerun can start while the last one
    # is still in this forward pass: a hook only acts in the thread that placed it.
    owner = threading.get_ident()

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if name in captured or threading.get_ident() != owner:
                return
            tensor = _first_tensor(output)
            # A copy, because a following in-place op (ReLU(inplace=True)) would overwrite it.
            captured[name] = None if tensor is None else tensor.detach().to("cpu", torch.float32, copy=True)
            if len(captured) == len(wanted):
                raise _AllCaptured

        return hook

    device, dtype = _model_device_dtype(model)
    handles = []
    try:
        with preserved(model):
            for name in wanted:
                handles.append(modules[name].register_forward_hook(make_hook(name)))
            model.eval()
            x = images.to(device=device, dtype=dtype if images.is_floating_point() else None)
            with torch.no_grad():
                try:
                    model(x)
                except _AllCaptured:
                    pass
    finally:
        for handle in handles:
            handle.remove()

    result = {}
    for name in wanted:
        if name not in captured:
            raise ConfigError(f"Layer {name!r} is not used when this model runs; pick another layer.")
        if captured[name] is None:
            raise ConfigError(f"Layer {name!r} does not output a tensor; pick another layer.")
        result[name] = captured[name]
    return result


def feature_maps(model: nn.Module, image: torch.Tensor, layer: str) -> torch.Tensor:
    """The feature maps Tensor[C, h, w] that ``layer`` computes for one image Tensor[3, H, W]."""
    if image.ndim != 3:
        raise ValueError(f"image must be a Tensor[3, H, W], got shape {tuple(image.shape)}")
    output = activations(model, image.unsqueeze(0), [layer])[layer]
    if output.ndim != 4:
        raise ConfigError(
            f"Layer {layer!r} gives an output of shape {tuple(output.shape[1:])}, not feature maps; "
            "pick one of the layers the model lists."
        )
    return output[0]


def _batched(model: nn.Module, images: torch.Tensor, layers: list[str], batch_size: int,
             reduce: Callable[[str, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Activations over ``images`` in chunks, each reduced right away so memory stays bounded."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for start in range(0, images.shape[0], batch_size):
        acts = activations(model, images[start:start + batch_size], layers)
        for name in layers:
            parts[name].append(reduce(name, acts.pop(name)))
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


# ----------------------------------------------------------------------------- channels


def channel_order(before: torch.Tensor, after: torch.Tensor, by: str = "change") -> list[int]:
    """Channel indices of two Tensor[C, h, w] maps, most changed (or strongest) first.

    ``by="change"``: mean absolute difference between ``after`` and ``before``.
    ``by="strength"``: the larger of the two maps' mean absolute activation, so a channel strong
    in either model comes early. Ties keep channel order.
    """
    if before.shape != after.shape:
        raise ValueError(f"maps differ in shape: {tuple(before.shape)} vs {tuple(after.shape)}")
    if before.ndim < 1:
        raise ValueError("maps need a channel dimension")
    a = before.detach().to("cpu", torch.float64).reshape(before.shape[0], -1)
    b = after.detach().to("cpu", torch.float64).reshape(after.shape[0], -1)
    if by == "change":
        score = (b - a).abs().mean(dim=1)
    elif by == "strength":
        score = torch.maximum(a.abs().mean(dim=1), b.abs().mean(dim=1))
    else:
        raise ConfigError(f"Unknown channel order {by!r}: use 'change' or 'strength'.")
    return torch.sort(score, descending=True, stable=True).indices.tolist()


def channel_means(model: nn.Module, images: torch.Tensor, layer: str, batch_size: int = 32) -> torch.Tensor:
    """Every channel's mean activation at ``layer`` for every image: Tensor[N, C]."""
    if images.ndim != 4:
        raise ValueError(f"images must be a Tensor[N, C, H, W], got shape {tuple(images.shape)}")

    def means(_name: str, out: torch.Tensor) -> torch.Tensor:
        if out.ndim < 2:
            raise ConfigError(f"Layer {layer!r} has no channels; pick another layer.")
        return out.reshape(out.shape[0], out.shape[1], -1).mean(dim=2)

    return _batched(model, images, [layer], batch_size, means)[layer]


def top_activating(model: nn.Module, images: torch.Tensor, layer: str, channel: int, k: int = 6,
                   batch_size: int = 32, means: torch.Tensor | None = None) -> list[tuple[int, float]]:
    """The ``k`` images (index, value) whose mean activation of ``channel`` at ``layer`` is highest.

    ``means``: the layer's ``channel_means`` for these images, when already computed (switching
    channels then costs nothing)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    if means is None:
        means = channel_means(model, images, layer, batch_size)
    if not 0 <= channel < means.shape[1]:
        raise ConfigError(f"Layer {layer!r} has {means.shape[1]} channels; pick a channel from 0 to "
                          f"{means.shape[1] - 1}.")
    values, indices = torch.sort(means[:, channel], descending=True, stable=True)
    k = min(k, means.shape[0])
    return [(int(i), float(v)) for i, v in zip(indices[:k], values[:k], strict=True)]


# ----------------------------------------------------------------------------- weights


def weight_change(before: nn.Module, after: nn.Module,
                  groups: Mapping[str, list[str]] | None = None) -> dict[str, float]:
    """Relative weight change ||W_after - W_before|| / ||W_before|| per layer (Frobenius norms).

    Without ``groups``: one entry per module of ``before`` that owns parameters directly, pooling
    its weight and bias. With ``groups`` (group name -> module names): one entry per group, pooling
    every parameter of those modules and their submodules.

    Only parameters present with the same shape in both models are compared. An entry with none
    left (the replaced classifier, whose output size differs) is ``nan``; modules that exist only
    in ``after`` (a new head's own layers) are not reported. BatchNorm running statistics are
    buffers, not weights, and do not count. An untouched (frozen) layer gives exactly 0.0.
    """
    params_a = dict(before.named_parameters(remove_duplicate=False))
    params_b = dict(after.named_parameters(remove_duplicate=False))

    units: dict[str, list[str]] = {}
    if groups is None:
        for name, module in before.named_modules():
            owned = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
            if owned:
                units[name] = owned
    else:
        modules_a = dict(before.named_modules())
        for group, module_names in groups.items():
            owned = []
            for module_name in module_names:
                if module_name not in modules_a:
                    raise _unknown_layer(before, module_name)
                owned += [p for p, _ in modules_a[module_name].named_parameters(prefix=module_name,
                                                                               remove_duplicate=False)]
            units[group] = list(dict.fromkeys(owned))

    result = {}
    for unit, names in units.items():
        diff_sq = 0.0
        base_sq = 0.0
        compared = 0
        for pname in names:
            a = params_a[pname]
            b = params_b.get(pname)
            if b is None or b.shape != a.shape:
                continue
            a64 = a.detach().to(torch.float64)
            b64 = b.detach().to(device=a.device, dtype=torch.float64)
            diff_sq += float((b64 - a64).square().sum())
            base_sq += float(a64.square().sum())
            compared += 1
        if compared == 0:
            result[unit] = math.nan
        elif base_sq == 0.0:
            result[unit] = 0.0 if diff_sq == 0.0 else math.inf
        else:
            result[unit] = math.sqrt(diff_sq) / math.sqrt(base_sq)
    return result


# ----------------------------------------------------------------------------- CKA


def _centered_gram(x: torch.Tensor) -> torch.Tensor:
    """Xc Xc^T in float64 for x: Tensor[n, p], built in column blocks so wide maps fit in memory."""
    n, p = x.shape
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    step = max(1, _GRAM_BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, p, step):
        block = x[:, start:start + step].to(torch.float64)
        block = block - block.mean(dim=0, keepdim=True)
        gram += block @ block.T
    return gram


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al., 2019) of x: Tensor[n, p] and y: Tensor[n, q], in [0, 1].

    Rows are the same n examples; columns are centred. Computed in float64, in the feature-space
    form ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) or the equal n x n Gram form, whichever
    costs less for these shapes. Extra dimensions are flattened per example. ``nan`` when a
    representation does not vary across the examples.
    """
    x = x.detach().reshape(x.shape[0], -1) if x.ndim != 2 else x.detach()
    y = y.detach().reshape(y.shape[0], -1) if y.ndim != 2 else y.detach()
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same examples (rows): {x.shape[0]} vs {y.shape[0]}")
    n, p = x.shape
    q = y.shape[1]
    if n < 2:
        raise ValueError("CKA needs at least two examples")
    y = y.to(x.device)

    feature_cost = n * (p * q + p * p + q * q)
    gram_cost = n * n * (p + q) + 3 * n * n
    if feature_cost <= gram_cost:
        xc = x.to(torch.float64)
        yc = y.to(torch.float64)
        xc = xc - xc.mean(dim=0, keepdim=True)
        yc = yc - yc.mean(dim=0, keepdim=True)
        cross = float(torch.linalg.matrix_norm(yc.T @ xc) ** 2)
        norm_x = float(torch.linalg.matrix_norm(xc.T @ xc))
        norm_y = float(torch.linalg.matrix_norm(yc.T @ yc))
    else:
        kx = _centered_gram(x)
        ky = _centered_gram(y)
        cross = float((kx * ky).sum())
        norm_x = float(torch.linalg.matrix_norm(kx))
        norm_y = float(torch.linalg.matrix_norm(ky))
    if norm_x == 0.0 or norm_y == 0.0:
        return math.nan
    # Mathematically within [0, 1]; rounding can step just outside.
    return min(1.0, max(0.0, cross / (norm_x * norm_y)))


def cka_by_layer(model_a: nn.Module, model_b: nn.Module, images: torch.Tensor, layers: Iterable[str],
                 flatten: str = "full", batch_size: int = 32) -> dict[str, float]:
    """Linear CKA between the two models' outputs at each layer over ``images`` Tensor[B, 3, H, W].

    ``flatten="full"`` compares whole maps (C*h*w per image); ``"pool"`` averages each channel over
    space first (C per image). Images go through each model in chunks of ``batch_size``.
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = list(dict.fromkeys(layers))
    if flatten not in ("full", "pool"):
        raise ConfigError(f"Unknown flatten mode {flatten!r}: use 'full' or 'pool'.")
    if images.ndim != 4:
        raise ValueError(f"images must be a Tensor[B, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise ConfigError("Comparing layers with CKA needs at least two images.")

    def reduce(_name: str, out: torch.Tensor) -> torch.Tensor:
        if flatten == "pool" and out.ndim > 2:
            return out.flatten(2).mean(dim=2)
        return out.reshape(out.shape[0], -1)

    feats_a = _batched(model_a, images, layers, batch_size, reduce)
    feats_b = _batched(model_b, images, layers, batch_size, reduce)
    return {name: linear_cka(feats_a[name], feats_b[name]) for name in layers}


# ----------------------------------------------------------------------------- for the pages


def depth_profile(before: nn.Module, after: nn.Module, layer_groups, images: torch.Tensor,
                  batch_size: int = 32) -> list[dict]:
    """Per layer group, input to output: relative weight change and linear CKA of its output.

    ``layer_groups`` is a list of ``LayerGroup`` (``.name``, ``.modules``); a group's output is
    its last module's output. Frozen groups come out with change 0.0 and CKA 1.0.
    """
    groups = {g.name: list(g.modules) for g in layer_groups}
    change = weight_change(before, after, groups)
    outputs = [g.modules[-1] for g in layer_groups]
    cka = cka_by_layer(before, after, images, outputs, batch_size=batch_size)
    return [
        {"group": g.name, "weight_change": change[g.name], "cka": cka[g.modules[-1]], "layer": g.modules[-1]}
        for g in layer_groups
    ]


def tile_channels(maps: torch.Tensor, channels: list[int], columns: int = 4):
    """Lay chosen channels of ``maps`` Tensor[C, h, w] out as one mosaic for a single heatmap.

    Returns (values, channel_ids): float arrays of the same 2-D shape, NaN in the one-pixel
    gutters between tiles, so a plot can show each pixel's channel and value on hover.
    """
    import numpy as np

    _, h, w = maps.shape
    rows = max(1, math.ceil(len(channels) / columns))
    values = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan, dtype=np.float32)
    ids = np.full(values.shape, np.nan, dtype=np.float32)
    data = maps.detach().float().cpu().numpy()
    for i, channel in enumerate(channels):
        r, c = divmod(i, columns)
        values[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = data[channel]
        ids[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = channel
    return values, ids
