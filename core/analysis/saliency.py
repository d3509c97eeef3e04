"""Saliency maps for one image and one class (Captum): where the model looks.

Its overlay on the image is ``core.analysis.overlay``; whether a map depends on the model at all,
Adebayo's sanity check, is ``core.analysis.sanity``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError, DataError
from core.seeding import seeded

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "DEFAULTS",
    "Attribution",
    "attribute",
    "explain",
    "gradcam_maps",
    "top_classes",
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
        # The first try; while the attributions miss more than `tolerance` of the score's change
        # (Captum's convergence delta), the steps go up fourfold, to at most `max_steps`: 32 steps
        # left a 23 % completeness error on EfficientNet-Lite0 and 128 steps 2.5 %, while a small
        # model is done at 32.
        "n_steps": 32,
        "max_steps": 256,
        "tolerance": 0.05,
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
    steps: int | None = None  # Integrated Gradients: the steps it took to converge
    # The attribution before reducing channels and clipping: [C, H, W] (Grad-CAM: [1, H, W]).
    raw: np.ndarray | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------------------
# Leaving the model as it was found


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    if param is None:
        param = next(model.buffers(), None)
    return param.device if param is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
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
def borrowed(model: nn.Module) -> Iterator[None]:
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
def seeded_on(seed: int | None, device: torch.device) -> Iterator[None]:
    """Draw random numbers from ``seed`` without disturbing anyone else's random stream."""
    if seed is None:
        yield
        return
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with seeded(int(seed), devices):
        yield


# --------------------------------------------------------------------------------------------
# Checking what we were given


def check_method(method: str) -> str:
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


def prepare_image(image: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
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
    device = model_device(model)
    x = prepare_image(image, device, model_dtype(model))
    with borrowed(model):
        _, candidates = _probe(model, x)
    return _coarse_layers(candidates)


def default_gradcam_layer(model: nn.Module, image: torch.Tensor) -> str:
    """The last module containing a Conv2d whose output is spatial (e.g. ``_conv_head``, ``layer4``)."""
    device = model_device(model)
    x = prepare_image(image, device, model_dtype(model))
    with borrowed(model):
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
         candidates: list[str], opts: dict[str, Any]) -> tuple[torch.Tensor, float | None, int | None]:
    """The raw Captum attribution for ``x`` [1, C, H, W], IG's convergence delta and its steps."""
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
        return Saliency(model).attribute(x, target=target, abs=True), None, None
    if method == "smoothgrad":
        n_samples = max(1, int(opts["n_samples"]))
        span = float(x.detach().max() - x.detach().min())
        stdev = float(opts["noise"]) * (span if span > 0 else 1.0)
        batch = max(1, min(n_samples, int(opts["batch_size"] or n_samples)))
        with seeded_on(opts["seed"], x.device):
            attr = NoiseTunnel(Saliency(model)).attribute(
                x, nt_type="smoothgrad", nt_samples=n_samples, nt_samples_batch_size=batch,
                stdevs=stdev, target=target, abs=True,
            )
        return attr, None, None
    if method == "integrated_gradients":
        return _integrated_gradients(model, x, target, opts, IntegratedGradients)
    if method == "gradcam":
        _, module = _resolve_layer(model, layer, candidates)
        cam = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return cam.clamp_min(0), None, None
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
        return attr, None, None
    raise AssertionError(method)  # check_method guards this


def _integrated_gradients(model: nn.Module, x: torch.Tensor, target: int, opts: dict[str, Any],
                          integrated_gradients) -> tuple[torch.Tensor, float, int]:
    """IG with as many steps as completeness needs: n_steps, then fourfold, up to max_steps."""
    baseline = _baseline(x.detach(), model, opts)
    steps = max(2, int(opts["n_steps"]))
    most = max(steps, int(opts.get("max_steps", steps)))
    tolerance = float(opts.get("tolerance", 0.0))
    while True:
        attr, delta = integrated_gradients(model).attribute(
            x, baselines=baseline, target=target, n_steps=steps,
            internal_batch_size=max(1, int(opts["internal_batch_size"])), return_convergence_delta=True,
        )
        delta = float(delta.reshape(-1)[0])
        # Captum's delta is sum(attr) - (f(x) - f(baseline)): the share of the score's change missed.
        change = float(attr.detach().sum()) - delta
        missed = abs(delta) / abs(change) if abs(change) > 1e-12 else 0.0
        if missed <= tolerance or steps >= most:
            return attr, delta, steps
        steps = min(most, steps * 4)


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
    check_method(method)
    opts = _check_options(method, options)
    if layer is not None and method != "gradcam":
        raise ConfigError(f"A layer only applies to Grad-CAM, not to {method!r}.")
    device = model_device(model)
    x = prepare_image(image, device, model_dtype(model))
    start = time.perf_counter()
    with borrowed(model):
        logits, candidates = _probe(model, x)
        target = _check_target(target, logits.shape[1])
        if method == "gradcam":
            _resolve_layer(model, layer, candidates)
        raw, delta, steps = _run(model, x, target, method, layer, candidates, opts)
    seconds = time.perf_counter() - start
    return Attribution(
        map=_reduce(raw, method),
        method=method,
        target=target,
        seconds=seconds,
        delta=delta,
        steps=steps,
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
    device, dtype = model_device(model), model_dtype(model)
    batch_size = max(1, int(batch_size))
    maps = []
    with borrowed(model):
        logits, candidates = _probe(model, prepare_image(images[0], device, dtype))
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
    device = model_device(model)
    x = prepare_image(image, device, model_dtype(model))
    with borrowed(model), torch.no_grad():
        return int(model(x)[0].argmax())


def top_classes(model: nn.Module, image: torch.Tensor, k: int = 5,
                categories: Sequence[str] | None = None) -> list[tuple[str, float]]:
    """The ``k`` most probable classes as (label or "class i", softmax probability), best first."""
    device = model_device(model)
    x = prepare_image(image, device, model_dtype(model))
    with borrowed(model), torch.no_grad():
        logits = model(x)
    probs = torch.softmax(logits[0].float(), dim=0)
    k = max(1, min(int(k), probs.numel()))
    values, indices = probs.topk(k)
    out = []
    for p, i in zip(values.tolist(), indices.tolist(), strict=True):
        label = categories[i] if categories is not None and i < len(categories) else f"class {i}"
        out.append((str(label), float(p)))
    return out
