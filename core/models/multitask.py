"""Multi-task models: one shared pretrained body, one head per task (``model(x) -> {task: logits}``).

All heads live in the backbone's one head group, so freezing, learning-rate multipliers and the
feature caches of the loop treat them as they treat a single head. Unlike the slide this started
from, the heads keep the batch dimension (no ``.squeeze()``) and each ends in as many outputs as its
task has classes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from core.errors import ConfigError
from core.models.backbones import load
from core.models.heads import Classifier, new_head
from core.seeding import seeded

__all__ = ["TaskHeads", "MultiTaskClassifier", "multitask_classifier", "task_view", "starting_multitask_model"]


class TaskHeads(nn.Module):
    """One head per task over the same pooled features; ``forward(f) -> {task: logits}``."""

    def __init__(self, in_features: int, tasks: Mapping[str, Sequence[str]], head: str | Mapping[str, str] = "linear"):
        super().__init__()
        kinds = {t: (head.get(t, "linear") if isinstance(head, Mapping) else head) for t in tasks}
        self.heads = nn.ModuleDict({t: new_head(in_features, len(classes), kinds[t]) for t, classes in tasks.items()})
        self.kinds = kinds

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        # features stay [N, D] for any N, a batch of one included (the slide's .squeeze() lost it)
        return {t: head(features) for t, head in self.heads.items()}


def _check_tasks(tasks: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    if not tasks:
        raise ConfigError("A multi-task model needs at least one task.")
    result = {}
    for t, classes in tasks.items():
        if not isinstance(t, str) or not t:
            raise ConfigError("Every task needs a name.")
        if len(classes) < 2:
            raise ConfigError(f"Task {t!r} needs at least two classes.")
        result[t] = [str(c) for c in classes]
    return result


class MultiTaskClassifier(Classifier):
    """A shared backbone with one head per task: ``model(x) -> {task: logits}``.

    The heads replace the backbone's final Linear layer inside its head group, so the layer
    groups (and their names) are the backbone's: "head" holds every task's head.
    """

    def __init__(self, net, *, tasks: Mapping[str, Sequence[str]], **kwargs):
        self_tasks = _check_tasks(tasks)
        super().__init__(net, classes=next(iter(self_tasks.values())), **kwargs)
        self.tasks = self_tasks

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def task_heads(self) -> TaskHeads:
        return self.get_classifier()

    def task_head_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {t: list(h.parameters()) for t, h in self.task_heads.heads.items()}

    def reset_classifier(self, tasks, head="linear") -> None:
        """New, freshly initialised heads for ``tasks`` (task -> class names)."""
        if not isinstance(tasks, Mapping):
            raise ConfigError("A multi-task model's heads are reset with a dict of task -> classes.")
        tasks = _check_tasks(tasks)
        old = self.get_classifier()
        in_features = next(iter(old.heads.values()))
        in_features = in_features.in_features if isinstance(in_features, nn.Linear) else in_features[0].in_features
        self._net.set_submodule(self.head_module, TaskHeads(in_features, tasks, head))
        for child_name, child in self._net.named_children():
            self.add_module(child_name, child)
        self.tasks = tasks
        self.classes = next(iter(tasks.values()))

    def __deepcopy__(self, memo):
        net = copy.deepcopy(self._net, memo)
        clone = MultiTaskClassifier(net, tasks=self.tasks, backbone_name=self.backbone_name,
                                    layer_groups=self.layer_groups, head_module=self.head_module,
                                    mean=self.mean, std=self.std, image_size=self.image_size,
                                    pretrained=self.pretrained, pre_head=self.pre_head)
        clone.train(self.training)
        for (_, a), (_, b) in zip(self.named_modules(), clone.named_modules(), strict=True):
            b.training = a.training
        return clone


def multitask_classifier(backbone, tasks: Mapping[str, Sequence[str]], head: str | Mapping[str, str] = "linear",
                         *, image_size: int | None = None):
    """The backbone (copied) with one new head per task (``head``: "linear" or "mlp", or a dict
    task -> kind); ``model(x)`` returns ``{task: logits}``."""
    tasks = _check_tasks(tasks)
    net = copy.deepcopy(backbone.model)
    old = net.get_submodule(backbone.head_module)
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"{backbone.name}'s head {backbone.head_module} is not a Linear layer.")
    net.set_submodule(backbone.head_module, TaskHeads(old.in_features, tasks, head))
    return MultiTaskClassifier(net, tasks=tasks, backbone_name=backbone.name, layer_groups=backbone.layer_groups,
                               head_module=backbone.head_module, mean=backbone.mean, std=backbone.std,
                               image_size=image_size or backbone.image_size, pretrained=backbone.pretrained,
                               pre_head=backbone.pre_head).eval()


class _TaskView(nn.Module):
    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        # the model's own children, under their own names: a layer of the model (Grad-CAM's, a
        # feature map's) has the same name in the view
        for name, child in model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "model", model)  # not registered: its children already are
        self.task = task

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.task]


def task_view(model: nn.Module, task: str) -> nn.Module:
    """``model`` seen through one task's head: ``view(x)`` is that task's logits, for the tools that
    expect one output (saliency: "where does the colour head look, and where the shape head?")."""
    if task not in getattr(model, "tasks", {}):
        raise ConfigError(f"The model has no task {task!r}.")
    return _TaskView(model, task).train(model.training)


def starting_multitask_model(name: str, tasks: Mapping[str, Sequence[str]], *, pretrained: bool = True,
                             seed: int = 0, image_size: int | None = None, head: str | Mapping[str, str] = "linear",
                             weights_path=None) -> MultiTaskClassifier:
    """The exact multi-task model a run starts from (the same seed gives the same random heads)."""
    with seeded(seed):
        base = load(name, pretrained=pretrained and weights_path is None, weights_path=weights_path)
        return multitask_classifier(base, tasks, head, image_size=image_size)

