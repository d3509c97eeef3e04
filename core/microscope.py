"""A microscope for one channel of one layer: the person's images that excite it most, and an image
optimised to excite it (feature visualization).

``top_examples`` ranks images by the channel's mean activation and gives a box around its strongest
position. ``visualize`` follows Olah, Mordvintsev & Schubert (2017), "Feature Visualization"
(Distill): the image is parameterised in Fourier space, its spectrum scaled by 1/frequency so every
frequency learns at a similar speed, its colours decorrelated (a fixed 3×3 colour basis, then a
sigmoid), and each step looks at it through random jitter, scale and rotation, so that what
survives is a pattern the channel responds to rather than adversarial high-frequency noise. The
objective is the channel's mean activation; only the layers up to the chosen one run.

Neither function trains or changes the model: it is put in eval mode, its parameters' gradients are
off for the duration, and both are put back afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.data.encoded import encode_images, normalise
from core.errors import ConfigError, UserInputError
from core.hooks import capture, preserved

__all__ = ["MicroscopeStopped", "layer_module", "channel_count", "channel_stats", "top_examples",
           "changed_channels", "visualize"]

# Lucid's colour correlation of ImageNet (the square root of its covariance, per channel), scaled
# so its largest column has norm 1: the optimisation works in a decorrelated colour space.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()
_SCALES = (1.0, 0.975, 1.025, 0.95, 1.05)


class MicroscopeStopped(UserInputError):
    """The person stopped a visualization before it finished."""


def layer_module(model: nn.Module, layer: str) -> str:
    """A module name for ``layer``: a module of the model, or a layer group (its last module)."""
    for group in getattr(model, "layer_groups", ()):
        if group.name == layer:
            if group is model.layer_groups[-1]:
                raise ConfigError("The head has no channels with a spatial map: pick a layer group below it.")
            return group.modules[-1]
    names = dict(model.named_modules())
    if layer not in names or not layer:
        groups = ", ".join(g.name for g in getattr(model, "layer_groups", ())[:-1])
        raise ConfigError(f"{layer!r} is not a layer of this model. Pick a layer group ({groups}).")
    return layer


def _activation(model: nn.Module, module: str, x: torch.Tensor) -> torch.Tensor:
    out = capture(model, module, x)
    if out.dim() != 4 or out.shape[-1] * out.shape[-2] <= 1:
        raise ConfigError(f"Layer {module} has no spatial output (its output has shape {tuple(out.shape[1:])}): "
                          "pick a convolutional layer group.")
    return out


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_channel(channel: int, count: int, module: str) -> int:
    if not isinstance(channel, (int, np.integer)) or not 0 <= int(channel) < count:
        raise ConfigError(f"Channel {channel} does not exist: {module} has {count} channels (0 to {count - 1}).")
    return int(channel)


def channel_count(model: nn.Module, layer: str, image_size: int | None = None) -> int:
    """How many channels ``layer`` has (one pass of a blank image)."""
    module = layer_module(model, layer)
    size = int(image_size or getattr(model, "image_size", 224))
    with torch.no_grad(), preserved(model):
        model.eval()
        return _activation(model, module, torch.zeros(1, 3, size, size, device=_device(model))).shape[1]


def _encoded(dataset, size: int) -> torch.Tensor:
    if isinstance(dataset, torch.Tensor):
        if dataset.dtype != torch.uint8 or dataset.dim() != 4:
            raise ConfigError("Images must be a uint8 tensor [N, 3, H, W] or a dataset.")
        return dataset
    if len(dataset) == 0:
        raise ConfigError("There are no images to look through: load a dataset on the Data page.")
    return encode_images(dataset, size)


def channel_stats(model: nn.Module, layer: str, dataset, *, image_size: int | None = None, batch_size: int = 32,
                  stop=None) -> dict:
    """Every channel of ``layer`` on every image, in one pass: ``means`` [N, C] (spatial means),
    ``peaks`` [N, C] (flat index of each map's largest value), ``grid`` (H, W) and ``size`` (pixels)."""
    module = layer_module(model, layer)
    size = int(image_size or getattr(model, "image_size", 224))
    images = _encoded(dataset, size)
    size = images.shape[-1]
    device = _device(model)
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    means, peaks, grid = [], [], None
    with torch.no_grad(), preserved(model):
        model.eval()
        for start in range(0, len(images), batch_size):
            if stop is not None and stop.is_set():
                raise MicroscopeStopped("Stopped before the images were all looked at.")
            out = _activation(model, module, normalise(images[start:start + batch_size].to(device), mean, std)).float()
            grid = tuple(out.shape[-2:])
            means.append(out.mean((2, 3)).cpu())
            peaks.append(out.flatten(2).argmax(2).cpu())
    return {"means": torch.cat(means), "peaks": torch.cat(peaks), "grid": grid, "size": size, "layer": module}


def _box(peak: int, grid: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """A square around the strongest position, half the image wide: (left, top, right, bottom) in pixels."""
    h, w = grid
    cy, cx = (peak // w + 0.5) * size / h, (peak % w + 0.5) * size / w
    half = size / 4
    left = int(round(min(max(cx - half, 0), size - 2 * half)))
    top = int(round(min(max(cy - half, 0), size - 2 * half)))
    return left, top, left + int(2 * half), top + int(2 * half)


def top_examples(model: nn.Module, layer: str, channel: int, dataset, k: int = 9, *,
                 image_size: int | None = None, stats: dict | None = None) -> list[tuple[int, float, tuple]]:
    """The ``k`` images of ``dataset`` that excite ``channel`` of ``layer`` most, highest first:
    ``[(index, activation, box)]``, with the channel's mean activation over the image and a box
    (left, top, right, bottom, in pixels of the image at the model's input size) around its
    strongest position. ``stats``: ``channel_stats`` of the same model, layer and images, reused."""
    stats = stats or channel_stats(model, layer, dataset, image_size=image_size)
    means = stats["means"]
    channel = _check_channel(channel, means.shape[1], stats["layer"])
    values, order = means[:, channel].topk(min(int(k), len(means)))
    return [(int(i), float(v), _box(int(stats["peaks"][i, channel]), stats["grid"], stats["size"]))
            for v, i in zip(values, order, strict=True)]


def changed_channels(before: dict, after: dict, k: int = 12) -> list[tuple[int, float]]:
    """The channels whose responses fine-tuning changed most: (channel, change), largest first. The
    change is 1 − the correlation, over the images, of the channel's mean activation before and after:
    0 when the same images excite it as much as before, 1 or more when its top examples are others."""
    a, b = before["means"], after["means"]
    if a.shape != b.shape:
        raise ConfigError("Compare the same layer on the same images before and after.")
    a, b = a - a.mean(0), b - b.mean(0)
    denom = a.norm(dim=0) * b.norm(dim=0)
    corr = torch.where(denom > 0, (a * b).sum(0) / denom.clamp_min(1e-12), torch.ones_like(denom))
    change = 1 - corr
    values, order = change.topk(min(int(k), len(change)))
    return [(int(c), float(v)) for c, v in zip(order, values, strict=True)]


# --- feature visualization ----------------------------------------------------------------------


def _frequency_scale(size: int, decay: float = 1.0) -> torch.Tensor:
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(freqs, min=1.0 / size) ** decay


def _to_image(spectrum: torch.Tensor, scale: torch.Tensor, size: int) -> torch.Tensor:
    """The parameters (Fourier coefficients in a decorrelated colour space) -> an RGB image in [0, 1]."""
    coeffs = torch.view_as_complex(spectrum) * scale
    image = torch.fft.irfft2(coeffs, s=(size, size), norm="ortho")  # [3, H, W]
    image = torch.einsum("cd,dhw->chw", _COLOR_SQRT.to(image.device), image)
    return torch.sigmoid(image)[None]


def _look(image: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    """The image padded, then jittered, scaled and rotated at random (one draw per step)."""
    pad = max(2, size // 10)
    padded = F.pad(image, (pad,) * 4, mode="constant", value=0.5)
    full = padded.shape[-1]

    def draw(n: int) -> int:
        return int(torch.randint(n, (1,), generator=generator))

    scale = _SCALES[draw(len(_SCALES))]
    angle = math.radians(draw(11) - 5)
    shift = [(draw(pad + 1) - pad // 2) * 2 / full for _ in range(2)]
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[[cos, -sin, shift[0]], [sin, cos, shift[1]]]], dtype=image.dtype, device=image.device)
    grid = F.affine_grid(theta, list(padded.shape), align_corners=False)
    moved = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return moved[..., pad:pad + size, pad:pad + size]


def visualize(model: nn.Module, layer: str, channel: int, size: int = 128, steps: int = 256, seed: int = 0, *,
              lr: float = 0.05, progress: Callable[[float, str], None] | None = None, stop=None) -> Image.Image:
    """An image (PIL, ``size``²) optimised to excite ``channel`` of ``layer``: see the module docstring.

    The same seed gives the same image. ``progress(fraction, text)`` is told as it goes; setting
    ``stop`` (a ``threading.Event``) ends it with ``MicroscopeStopped``."""
    if not isinstance(size, int) or not 32 <= size <= 512:
        raise ConfigError("The visualization's size must be a whole number of pixels from 32 to 512.")
    if not isinstance(steps, int) or not 1 <= steps <= 4096:
        raise ConfigError("Steps must be a whole number from 1 to 4096.")
    module = layer_module(model, layer)
    device = _device(model)
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(int(seed))
    scale = _frequency_scale(size).to(device)[None]
    spectrum = (torch.randn(3, size, size // 2 + 1, 2, generator=generator) * 0.01).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([spectrum], lr=lr)
    with preserved(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            count = _activation(model, module, torch.zeros(1, 3, size, size, device=device)).shape[1]
        channel = _check_channel(channel, count, module)
        for step in range(steps):
            if stop is not None and stop.is_set():
                raise MicroscopeStopped("The visualization was stopped before it finished.")
            image = _look(_to_image(spectrum, scale, size), generator, size)
            out = capture(model, module, (image - mean) / std)
            loss = -out[0, channel].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress is not None and (step % 8 == 0 or step == steps - 1):
                progress((step + 1) / steps, f"step {step + 1} of {steps}")
    with torch.no_grad():
        final = _to_image(spectrum.detach(), scale, size)[0]
    array = (final.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


def channel_activation(model: nn.Module, layer: str, channel: int, images: Sequence | torch.Tensor,
                       image_size: int | None = None) -> list[float]:
    """The channel's mean activation on each image (PIL images or a uint8 tensor)."""
    if not isinstance(images, torch.Tensor):
        images = torch.stack([torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1) for img in images])
    stats = channel_stats(model, layer, images, image_size=image_size)
    return stats["means"][:, _check_channel(channel, stats["means"].shape[1], stats["layer"])].tolist()
