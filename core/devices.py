"""Which device to compute on, and how to describe it to a person."""

from __future__ import annotations

import torch

from core.errors import ConfigError

__all__ = ["pick_device", "describe_device", "autocast_dtype"]


def pick_device(prefer: str = "auto") -> torch.device:
    """CUDA when present, else MPS, else CPU; ``"cpu"``, ``"cuda"`` or ``"mps"`` force one."""
    prefer = (prefer or "auto").lower()
    if prefer == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if prefer.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("A CUDA GPU was asked for, but this server has none. Choose 'auto' or 'cpu'.")
    if prefer == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("Apple's MPS device was asked for, but it is not available here.")
    if prefer not in {"cpu", "mps"} and not prefer.startswith("cuda"):
        raise ConfigError(f"Unknown device {prefer!r}: use 'auto', 'cpu', 'cuda' or 'mps'.")
    return torch.device(prefer)


def describe_device(device: torch.device) -> str:
    """A short label for the sidebar: 'CPU (2 threads)' or the GPU's name."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"GPU: {torch.cuda.get_device_name(index)}"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({torch.get_num_threads()} threads)"


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for training on ``device``, or None for full precision."""
    if device.type != "cuda":
        return None
    # is_bf16_supported() also counts emulation (T4, V100), which is slow: bfloat16 from Ampere on
    native = torch.cuda.get_device_capability(device)[0] >= 8 and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16
