"""The old home of the backbone registry and of ``classifier``, kept so that ``core.backbones.load``,
``core.backbones.classifier`` and their neighbours go on working. The names live in ``core.models``
now; multi-task models have their one home in ``core.models.multitask``."""

from core.models.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    BackboneInfo,
    LayerGroup,
    display_crop,
    eval_transform,
    group_names,
    imagenet_categories,
    list_backbones,
    load,
)
from core.models.heads import Classifier, classifier, group_parameters, starting_model
from core.models.weights import MAX_WEIGHTS_BYTES, read_state_dict

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
    "group_parameters",
    "starting_model",
    "group_names",
    "display_crop",
    "imagenet_categories",
]
