"""A backbone with a new head: the ``Classifier`` every run trains, and the model contract (as timm's)
that caches, adaptation, few-shot prototypes and multi-task heads read instead of hooking the head."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from core.errors import ConfigError
from core.hooks import capture
from core.models.backbones import Backbone, LayerGroup, eval_transform, load
from core.seeding import seeded

__all__ = ["Classifier", "classifier", "new_head", "starting_model", "group_parameters"]


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
        self._net.set_submodule(self.head_module, new_head(in_features, len(classes), head))
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
        for (_, a), (_, b) in zip(self.named_modules(), clone.named_modules(), strict=True):
            b.training = a.training
        return clone


def new_head(in_features: int, num_classes: int, head: str) -> nn.Module:
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
    old = net.get_submodule(backbone.head_module)
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"{backbone.name}'s head {backbone.head_module} is not a Linear layer.")
    net.set_submodule(backbone.head_module, new_head(old.in_features, num_classes, head))
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
