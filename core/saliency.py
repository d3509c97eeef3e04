"""Saliency maps for one image and one class (Captum), their overlay, and Adebayo's sanity check."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.errors import ConfigError, DataError
from core.seeding import seeded

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "DEFAULTS",
    "Attribution",
    "SanityResult",
    "attribute",
    "explain",
    "gradcam_maps",
    "top_classes",
    "overlay",
    "sanity_check",
    "gradcam_layers",
    "default_gradcam_layer",
    "predicted_class",
]

METHODS: tuple[str, ...] = ("gradient", "smoothgrad", "integrated_gradients", "gradcam", "occlusion")

METHOD_LABELS: dict[str, tuple[str, str]] = {
    "gradient": (
        "Gradient (saliency)",
        "How much each pixel would change the class score if nudged: |d score / d pixel|.",
    ),
    "smoothgrad": (
        "SmoothGrad",
        "The gradient averaged over noisy copies of the image, which removes speckle.",
    ),
    "integrated_gradients": (
        "Integrated Gradients",
        "Each pixel's share of the score gained on the way from a black image to this one.",
    ),
    "gradcam": (
        "Grad-CAM",
        "Which regions the last convolutional features that support the class respond to (coarse).",
    ),
    "occlusion": (
        "Occlusion",
        "How much the class score drops when a patch of the image is greyed out.",
    ),
}

# Tuned on 2 CPU cores so that each method takes a few seconds at most for EfficientNet-Lite0 at
# 224x224 (see bench/bench_saliency.py); on a GPU they can be raised freely.
DEFAULTS: dict[str, dict[str, Any]] = {
    "gradient": {},
    "smoothgrad": {"n_samples": 16, "noise": 0.15, "batch_size": 4, "seed": 0},
    "integrated_gradients": {
        "n_steps": 32,
        "internal_batch_size": 8,
        # None: black in the model's normalized space when the normalization is known (mean/std,
        # or a Normalize in model.preprocess), else zeros (the dataset's mean colour).
        "baseline": None,
        "mean": None,
        "std": None,
    },
    "gradcam": {},
    "occlusion": {"window": None, "stride": None, "baseline": 0.0, "batch_size": 8},
}

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_HOOK_SIDE_DICTS = (
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


@dataclass
class Attribution:
    """One saliency map with how it was made."""

    map: np.ndarray
    method: str
    target: int
    seconds: float
    delta: float | None = None
    # The attribution before reducing channels and clipping: [C, H, W] (Grad-CAM: [1, H, W]).
    raw: np.ndarray | None = field(default=None, repr=False)


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
# Leaving the model as it was found


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    if param is None:
        param = next(model.buffers(), None)
    return param.device if param is not None else torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def _hook_snapshot(model: nn.Module) -> list[tuple[nn.Module, dict[str, set], Any]]:
    snapshot = []
    for module in model.modules():
        keys = {name: set(getattr(module, name, {}) or {}) for name in _HOOK_DICTS}
        snapshot.append((module, keys, getattr(module, "_is_full_backward_hook", None)))
    return snapshot


def _remove_new_hooks(snapshot: list[tuple[nn.Module, dict[str, set], Any]]) -> None:
    # Captum removes its hooks itself; this is the safety net for an exception raised between a
    # hook's registration and its removal, so a failed map can never leave the model altered.
    for module, keys, full_backward in snapshot:
        for name, before in keys.items():
            hooks = getattr(module, name, None)
            if not hooks:
                continue
            for key in [k for k in hooks if k not in before]:
                del hooks[key]
                for side in _HOOK_SIDE_DICTS:
                    side_dict = getattr(module, side, None)
                    if side_dict is not None:
                        side_dict.pop(key, None)
        if hasattr(module, "_is_full_backward_hook"):
            module._is_full_backward_hook = full_backward


@contextlib.contextmanager
def _borrowed(model: nn.Module) -> Iterator[None]:
    """Eval mode, frozen parameters and grad enabled for the duration; everything put back after."""
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.requires_grad) for param in model.parameters()]
    hooks = _hook_snapshot(model)
    try:
        model.eval()
        # Gradients are only ever taken with respect to the input or an activation; frozen
        # weights keep autograd from saving what it would need for weight gradients.
        for param, _ in grads:
            param.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        _remove_new_hooks(hooks)
        for param, flag in grads:
            param.requires_grad_(flag)
        for module, flag in modes:
            module.training = flag


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Draw random numbers from ``seed`` without disturbing anyone else's random stream."""
    if seed is None:
        yield
        return
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with seeded(int(seed), devices):
        yield


# --------------------------------------------------------------------------------------------
# Checking what we were given


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"Unknown saliency method {method!r}. Choose one of: {', '.join(METHODS)}.")
    return method


def _check_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULTS[method]))
    if unknown:
        valid = ", ".join(DEFAULTS[method]) or "none"
        raise ConfigError(
            f"Option(s) {', '.join(unknown)} do not apply to {method!r}; its options are: {valid}."
        )
    return {**DEFAULTS[method], **options}


def _prepare_image(image: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise DataError("The image must be a preprocessed tensor of shape [3, H, W].")
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3:
        raise DataError(f"The image must be a tensor of shape [3, H, W]; got shape {tuple(image.shape)}.")
    # A private copy: the caller's tensor (and its requires_grad) is never touched.
    return image.detach().to(device=device, dtype=dtype).clone().unsqueeze(0)


def _check_target(target: int, num_classes: int) -> int:
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise ConfigError(f"The class index must be an integer; got {target!r}.")
    target = int(target)
    if not 0 <= target < num_classes:
        raise ConfigError(
            f"Class index {target} is out of range: this model has {num_classes} classes "
            f"(0 to {num_classes - 1})."
        )
    return target


# --------------------------------------------------------------------------------------------
# Grad-CAM's layer


def _contains_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _is_spatial(output: Any) -> bool:
    return isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1


def _probe(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Logits for ``x`` and the conv-containing modules with a spatial output, in finishing order."""
    finished: dict[str, None] = {}
    handles = []

    def record(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if _is_spatial(output):
                finished.pop(name, None)
                finished[name] = None

        return hook

    try:
        for name, module in model.named_modules():
            if name and _contains_conv(module):
                handles.append(module.register_forward_hook(record(name)))
        with torch.no_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ConfigError("The model must return logits of shape [batch, classes].")
    return logits, list(finished)


def _coarse_layers(candidates: list[str]) -> list[str]:
    """The candidates not nested in another one (stages and blocks), opening a lone wrapper."""
    chosen = set(candidates)

    def ancestors(name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts))]

    def outermost(within: str | None) -> list[str]:
        out = []
        for name in candidates:
            if within is not None and not name.startswith(within + "."):
                continue
            between = [a for a in ancestors(name) if a in chosen and (within is None or a.startswith(within + "."))]
            if name != within and not between:
                out.append(name)
        return out

    layers = outermost(None)
    while len(layers) == 1 and outermost(layers[0]):
        layers = outermost(layers[0])
    # The default layer stays on the list even when a wrapper was opened.
    if candidates and candidates[-1] not in layers:
        layers.append(candidates[-1])
    return layers


def gradcam_layers(model: nn.Module, image: torch.Tensor) -> list[str]:
    """Layers worth offering for Grad-CAM (conv stages/blocks with a spatial output), input to output.

    Any module that contains a Conv2d and has a spatial output for this image is accepted by
    ``attribute(..., layer=...)``; this is the short list for a menu. The last one is the default.
    """
    device = _model_device(model)
    x = _prepare_image(image, device, _model_dtype(model))
    with _borrowed(model):
        _, candidates = _probe(model, x)
    return _coarse_layers(candidates)


def default_gradcam_layer(model: nn.Module, image: torch.Tensor) -> str:
    """The last module containing a Conv2d whose output is spatial (e.g. ``_conv_head``, ``layer4``)."""
    device = _model_device(model)
    x = _prepare_image(image, device, _model_dtype(model))
    with _borrowed(model):
        _, candidates = _probe(model, x)
    if not candidates:
        raise ConfigError("Grad-CAM needs a convolutional layer with a spatial output; this model has none.")
    return candidates[-1]


def _resolve_layer(model: nn.Module, layer: str | None, candidates: list[str]) -> tuple[str, nn.Module]:
    if not candidates:
        raise ConfigError("Grad-CAM needs a convolutional layer with a spatial output; this model has none.")
    name = candidates[-1] if layer is None else layer
    if name not in candidates:
        valid = ", ".join(_coarse_layers(candidates))
        why = "has no spatial convolutional output" if name in dict(model.named_modules()) else "is not a layer of this model"
        raise ConfigError(
            f"Layer {name!r} {why}. Choose one of: {valid} (or a convolutional module inside them)."
        )
    return name, model.get_submodule(name)


# --------------------------------------------------------------------------------------------
# The methods


def _find_normalization(model: nn.Module) -> tuple[Any, Any] | None:
    """The model's own ``mean``/``std``, or those of the ``Normalize`` in ``model.preprocess``."""
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if isinstance(mean, (tuple, list)) and isinstance(std, (tuple, list)) and len(mean) == len(std):
        return tuple(mean), tuple(std)
    seen = 0
    todo = [getattr(model, "preprocess", None)]
    while todo and seen < 50:
        seen += 1
        obj = todo.pop(0)
        if obj is None:
            continue
        mean, std = getattr(obj, "mean", None), getattr(obj, "std", None)
        if mean is not None and std is not None:
            return mean, std
        todo.extend(getattr(obj, "transforms", None) or [])
    return None


def _baseline(x: torch.Tensor, model: nn.Module, opts: dict[str, Any]) -> torch.Tensor:
    baseline = opts["baseline"]
    if isinstance(baseline, torch.Tensor):
        baseline = baseline.detach().to(device=x.device, dtype=x.dtype)
        return baseline.expand_as(x[0]).unsqueeze(0).clone() if baseline.dim() <= 3 else baseline.expand_as(x).clone()
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline in ("zeros", "zero"):
        return torch.zeros_like(x)
    if baseline in (None, "black"):
        norm = (opts["mean"], opts["std"]) if opts["mean"] is not None and opts["std"] is not None else _find_normalization(model)
        if norm is None:
            if baseline == "black":
                raise ConfigError(
                    "A black baseline needs the model's normalization: pass mean=... and std=... "
                    "or baseline='zeros'."
                )
            # Unknown normalization: zero in normalized space, i.e. the dataset's mean colour.
            return torch.zeros_like(x)
        mean = torch.as_tensor(norm[0], device=x.device, dtype=x.dtype).reshape(-1, 1, 1)
        std = torch.as_tensor(norm[1], device=x.device, dtype=x.dtype).reshape(-1, 1, 1)
        return ((torch.zeros_like(x[0]) - mean) / std).expand_as(x[0]).unsqueeze(0).clone()
    raise ConfigError(
        f"Unknown baseline {baseline!r}: use 'black', 'zeros', a number or a tensor shaped like the image."
    )


def _occlusion_window(size: int, window: int | None) -> int:
    # About a seventh of the shorter side: coarse enough to hide object parts, 13x13 windows at 224.
    side = window if window is not None else max(1, round(size / 7))
    return int(min(max(1, side), size))


def _run(model: nn.Module, x: torch.Tensor, target: int, method: str, layer: str | None,
         candidates: list[str], opts: dict[str, Any]) -> tuple[torch.Tensor, float | None]:
    """The raw Captum attribution for ``x`` [1, C, H, W] and IG's convergence delta."""
    from captum.attr import (  # Captum is imported lazily: it is slow to import and only needed here.
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )

    x = x.requires_grad_(True)
    if method == "gradient":
        return Saliency(model).attribute(x, target=target, abs=True), None
    if method == "smoothgrad":
        n_samples = max(1, int(opts["n_samples"]))
        span = float(x.detach().max() - x.detach().min())
        stdev = float(opts["noise"]) * (span if span > 0 else 1.0)
        batch = max(1, min(n_samples, int(opts["batch_size"] or n_samples)))
        with _seeded(opts["seed"], x.device):
            attr = NoiseTunnel(Saliency(model)).attribute(
                x, nt_type="smoothgrad", nt_samples=n_samples, nt_samples_batch_size=batch,
                stdevs=stdev, target=target, abs=True,
            )
        return attr, None
    if method == "integrated_gradients":
        baseline = _baseline(x.detach(), model, opts)
        attr, delta = IntegratedGradients(model).attribute(
            x, baselines=baseline, target=target, n_steps=max(2, int(opts["n_steps"])),
            internal_batch_size=max(1, int(opts["internal_batch_size"])), return_convergence_delta=True,
        )
        return attr, float(delta.reshape(-1)[0])
    if method == "gradcam":
        _, module = _resolve_layer(model, layer, candidates)
        cam = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return cam.clamp_min(0), None
    if method == "occlusion":
        h, w = x.shape[-2:]
        wh, ww = _occlusion_window(h, opts["window"]), _occlusion_window(w, opts["window"])
        stride = opts["stride"]
        strides = (x.shape[1], stride or max(1, wh // 2), stride or max(1, ww // 2))
        attr = Occlusion(model).attribute(
            x, sliding_window_shapes=(x.shape[1], wh, ww), strides=strides,
            baselines=float(opts["baseline"]), target=target,
            perturbations_per_eval=max(1, int(opts["batch_size"])),
        )
        return attr, None
    raise AssertionError(method)  # _check_method guards this


def _reduce(raw: torch.Tensor, method: str) -> np.ndarray:
    """Channels to one non-negative map.

    gradient, smoothgrad: sum over channels of |gradient| (Captum already took the abs).
    integrated_gradients: |sum over channels|, the magnitude of the pixel's share of
    f(x) - f(baseline), so the map still adds up to that difference when all shares agree in sign.
    gradcam: its single channel. occlusion: the channel mean (the window spans all channels,
    so they are equal), negative values (occluding helped the class) clipped to 0.
    """
    raw = raw.detach()[0].float()
    if method in ("gradient", "smoothgrad"):
        out = raw.abs().sum(0)
    elif method == "integrated_gradients":
        out = raw.sum(0).abs()
    elif method == "gradcam":
        out = raw.sum(0)
    else:
        out = raw.mean(0)
    out = torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    return out.cpu().numpy().astype(np.float32)


def _attribute(model: nn.Module, image: torch.Tensor, target: int, method: str, layer: str | None,
               options: dict[str, Any]) -> Attribution:
    _check_method(method)
    opts = _check_options(method, options)
    if layer is not None and method != "gradcam":
        raise ConfigError(f"A layer only applies to Grad-CAM, not to {method!r}.")
    device = _model_device(model)
    x = _prepare_image(image, device, _model_dtype(model))
    start = time.perf_counter()
    with _borrowed(model):
        logits, candidates = _probe(model, x)
        target = _check_target(target, logits.shape[1])
        if method == "gradcam":
            _resolve_layer(model, layer, candidates)
        raw, delta = _run(model, x, target, method, layer, candidates, opts)
    seconds = time.perf_counter() - start
    return Attribution(
        map=_reduce(raw, method),
        method=method,
        target=target,
        seconds=seconds,
        delta=delta,
        raw=raw.detach()[0].float().cpu().numpy(),
    )


def attribute(model: nn.Module, image: torch.Tensor, target: int, method: str, *,
              layer: str | None = None, **options: Any) -> np.ndarray:
    """A [H, W] saliency map, float32, finite and >= 0, of ``model``'s logit ``target`` for ``image``.

    Args:
        image: a preprocessed Tensor[3, H, W] (any H, W), in the model's normalized space.
        method: one of METHODS.
        layer: Grad-CAM's layer, a qualified module name; default: the last module that
            contains a Conv2d and has a spatial output.
        options: per method, see DEFAULTS (e.g. ``n_samples``, ``n_steps``, ``baseline``).

    The model runs in eval mode on its own device; its modes, ``requires_grad`` flags and hooks are
    put back afterwards, also after an error, and its weights are never written.
    """
    return _attribute(model, image, target, method, layer, options).map


def explain(model: nn.Module, image: torch.Tensor, target: int, method: str, *,
            layer: str | None = None, **options: Any) -> Attribution:
    """Like ``attribute`` but returns the map with its method, target, time taken and IG's delta."""
    return _attribute(model, image, target, method, layer, options)


def gradcam_maps(model: nn.Module, images: torch.Tensor, targets: Sequence[int], *, layer: str | None = None,
                 batch_size: int = 16) -> np.ndarray:
    """Grad-CAM of many images at once: float32 [N, H, W], finite and >= 0, one map per (image, target).

    The same maps as ``attribute(model, image, target, "gradcam", layer=layer)`` one at a time, in
    batches of ``batch_size`` (a gallery of mistakes needs two dozen maps, not two dozen passes).
    ``images`` is a preprocessed Tensor[N, 3, H, W]; the model is left as ``attribute`` leaves it.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise DataError("The images must be a preprocessed tensor of shape [N, 3, H, W].")
    if len(targets) != len(images):
        raise ConfigError(f"One class per image: got {len(targets)} classes for {len(images)} images.")
    if len(images) == 0:
        return np.zeros((0, *images.shape[-2:]), dtype=np.float32)
    device, dtype = _model_device(model), _model_dtype(model)
    batch_size = max(1, int(batch_size))
    maps = []
    with _borrowed(model):
        logits, candidates = _probe(model, _prepare_image(images[0], device, dtype))
        checked = [_check_target(t, logits.shape[1]) for t in targets]
        _, module = _resolve_layer(model, layer, candidates)
        cam = LayerGradCam(model, module)
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
            target = torch.tensor(checked[start:start + batch_size], device=device)
            raw = cam.attribute(x, target=target, relu_attributions=True)
            raw = LayerAttribution.interpolate(raw, tuple(x.shape[-2:]), interpolate_mode="bilinear")
            raw = torch.nan_to_num(raw.detach().float().sum(1), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
            maps.append(raw.cpu().numpy().astype(np.float32))
    return np.concatenate(maps)


def predicted_class(model: nn.Module, image: torch.Tensor) -> int:
    """The index of the model's most probable class for ``image``."""
    device = _model_device(model)
    x = _prepare_image(image, device, _model_dtype(model))
    with _borrowed(model), torch.no_grad():
        return int(model(x)[0].argmax())


def top_classes(model: nn.Module, image: torch.Tensor, k: int = 5,
                categories: Sequence[str] | None = None) -> list[tuple[str, float]]:
    """The ``k`` most probable classes as (label or "class i", softmax probability), best first."""
    device = _model_device(model)
    x = _prepare_image(image, device, _model_dtype(model))
    with _borrowed(model), torch.no_grad():
        logits = model(x)
    probs = torch.softmax(logits[0].float(), dim=0)
    k = max(1, min(int(k), probs.numel()))
    values, indices = probs.topk(k)
    out = []
    for p, i in zip(values.tolist(), indices.tolist()):
        label = categories[i] if categories is not None and i < len(categories) else f"class {i}"
        out.append((str(label), float(p)))
    return out


# --------------------------------------------------------------------------------------------
# Showing a map

# A perceptually ordered dark-to-bright colormap in the spirit of "inferno", as anchor colours.
_COLORMAP = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def _colormap(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] to [H, W, 3] float RGB in [0, 255]."""
    positions = np.linspace(0.0, 1.0, len(_COLORMAP))
    return np.stack([np.interp(values, positions, _COLORMAP[:, c]) for c in range(3)], axis=-1)


def _resize(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(saliency, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay(image_rgb: np.ndarray, saliency: np.ndarray, opacity: float = 0.5,
            percentile: float = 99.0) -> np.ndarray:
    """The image with the map blended over it as a heat map: uint8 [H, W, 3].

    The map is scaled so its ``percentile``-th value is full brightness, which keeps a few
    extreme pixels from washing out the rest; a map of another size is resized to the image.
    """
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"The image must be an RGB array of shape [H, W, 3]; got {image.shape}.")
    if not 0.0 <= float(opacity) <= 1.0:
        raise ConfigError(f"Opacity must be between 0 and 1; got {opacity}.")
    sal = np.nan_to_num(np.asarray(saliency, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if sal.ndim != 2:
        raise DataError(f"The saliency map must have shape [H, W]; got {sal.shape}.")
    if sal.shape != image.shape[:2]:
        sal = _resize(sal, image.shape[:2])
    sal = np.clip(sal, 0.0, None)
    scale = float(np.percentile(sal, percentile)) if sal.size else 0.0
    if scale <= 0:
        scale = float(sal.max()) if sal.size else 0.0
    norm = np.clip(sal / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(sal)
    heat = _colormap(norm)
    base = image.astype(np.float32)
    if image.dtype != np.uint8 and base.max(initial=0.0) <= 1.0:
        base = base * 255.0
    blended = (1.0 - opacity) * base + opacity * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


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
    methods = [_check_method(m) for m in methods]
    options = options or {}
    for method in options:
        _check_method(method)
    device = _model_device(model)
    x = _prepare_image(image, device, _model_dtype(model))

    copied = copy.deepcopy(model)
    if layers is None:
        with _borrowed(copied):
            groups = [(name, [name]) for name in _execution_order(copied, x)]
    else:
        groups = _group_names(copied, layers)
    if not groups:
        raise ConfigError("This model has no layers with weights to randomize.")
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
        with _seeded(seed + step, device):
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
