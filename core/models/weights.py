"""Weights files a person brings: read without ever running code from them, and checked to fit the
architecture before they are loaded (a head of its own number of classes is fine)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from core.errors import CheckpointError

__all__ = ["MAX_WEIGHTS_BYTES", "MAX_HEAD_CLASSES", "read_state_dict", "load_user_state"]

# A weights file bigger than this is refused before it is read (ConvNeXt-Base is ~350 MB).
MAX_WEIGHTS_BYTES = 600 * 1024 * 1024
MAX_HEAD_CLASSES = 1000  # a 167 MB file with a 30,000-class head was accepted


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file without ever running code from it.

    Accepts a safetensors file or a PyTorch state_dict saved with ``torch.save`` (read with
    ``weights_only=True``, never retried otherwise). A dict wrapping the state_dict under
    ``state_dict`` or ``model`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No weights file at {path.name}.")
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise CheckpointError(
            f"{path.name} is {size / 2**20:.0f} MB; weights files up to "
            f"{MAX_WEIGHTS_BYTES / 2**20:.0f} MB are accepted."
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name} is not a readable safetensors file ({exc}).") from exc
    elif suffix in {".pt", ".pth", ".bin", ".ckpt"}:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle refusals, truncated files, zip errors
            raise CheckpointError(
                f"{path.name} is not a plain PyTorch state_dict: it was refused because it "
                "would need to run code or is damaged. Save weights with "
                "`torch.save(model.state_dict(), path)` or as .safetensors."
            ) from exc
    else:
        raise CheckpointError(f"{path.name}: weights must be a .safetensors, .pt or .pth file.")
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path.name} does not hold a state_dict (a mapping of names to tensors).")
    return dict(state)



def load_user_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, title: str, head_module: str,
                    filename: str) -> None:
    """Load a person's ``state`` into ``model`` (architecture ``title``, classifier ``head_module``), or
    raise a CheckpointError that says how the file does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        raise CheckpointError(
            f"{filename} does not fit {title}: its keys differ — {'; '.join(parts)}. "
            "Was it saved from another architecture?"
        )
    _check_user_values(state, own, filename, title)
    head_prefix = head_module + "."
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in own.items()
        if tuple(state[k].shape) != tuple(v.shape) and not k.startswith(head_prefix)
    ]
    if wrong:
        listed = "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in wrong[:4])
        raise CheckpointError(f"{filename} has tensors of the wrong shape for {title}: {listed}.")
    head_weight, head_bias = state[head_prefix + "weight"], state.get(head_prefix + "bias")
    in_features = own[head_prefix + "weight"].shape[1]
    if head_weight.ndim == 2 and head_weight.shape[0] > MAX_HEAD_CLASSES:  # a 1-D one is misshapen: said below
        raise CheckpointError(
            f"{filename}'s classifier head has {head_weight.shape[0]:,} outputs; a model here may have at most "
            f"{MAX_HEAD_CLASSES:,} classes (ImageNet's number). Save the backbone with a smaller head, or without it.")
    # The head may have its own number of classes (a fine-tuned model), but it must read this
    # backbone's features and its bias must match its outputs, or the model breaks at its first image.
    if head_weight.ndim != 2 or head_weight.shape[1] != in_features or head_weight.shape[0] < 1:
        raise CheckpointError(
            f"{filename}'s classifier head {head_prefix}weight has shape {tuple(head_weight.shape)}; "
            f"{title} needs (number of classes, {in_features})."
        )
    out_features = head_weight.shape[0]
    if head_bias is not None and tuple(head_bias.shape) != (out_features,):
        raise CheckpointError(
            f"{filename}'s classifier head {head_prefix}bias has shape {tuple(head_bias.shape)}; "
            f"its weight has {out_features} outputs, so the bias needs ({out_features},)."
        )
    if out_features != own[head_prefix + "weight"].shape[0]:
        # A fine-tuned model with its own number of classes: give it a head of that size.
        model.set_submodule(head_module, nn.Linear(in_features, out_features))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # anything the checks above did not foresee is still the file's fault
        raise CheckpointError(f"{filename} does not fit {title}: {exc}") from None


def _check_user_values(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], filename: str,
                       title: str) -> None:
    """Refuse weights that would load but cannot train: integer (quantised) values where the model
    has floating-point ones, and NaN or infinite values."""
    not_float = [(k, state[k].dtype) for k, v in own.items()
                 if v.is_floating_point() and not state[k].is_floating_point()]
    if not_float:
        key, dtype = not_float[0]
        raise CheckpointError(
            f"{filename} holds {str(dtype).replace('torch.', '')} values where {title} has floating-point "
            f"weights ({len(not_float)} tensors, e.g. {key}). A quantised or integer model cannot be trained "
            "here: save the floating-point model's state_dict."
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(
            f"{filename} has NaN or infinite values in {len(broken)} tensors (e.g. {broken[0]}): it was saved "
            "from a model whose training diverged, or it is damaged. Use weights from a run that trained normally."
        )

