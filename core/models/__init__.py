"""Models: the backbone registry, the weights a person brings, and the heads put on a backbone.

- ``backbones``: the registry (each entry knows its weights, preprocessing and layer groups) and
  ``load``, which returns a fresh pretrained backbone the caller owns;
- ``weights``: weights files read without running code, and checked to fit before loading;
- ``heads``: ``Classifier``, a backbone with a new head, and the model contract
  (``forward_features``, ``forward_head``, ``get_classifier``, ``reset_classifier``, ``layer_groups``);
- ``multitask``: one head per task on one shared body (``multitask_classifier``).
"""

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
from core.models.heads import Classifier, classifier, group_parameters, new_head, starting_model
from core.models.multitask import (
    MultiTaskClassifier,
    TaskHeads,
    multitask_classifier,
    starting_multitask_model,
    task_view,
)
from core.models.weights import MAX_WEIGHTS_BYTES, read_state_dict

__all__ = [
    "DEFAULT_BACKBONE",
    "MAX_WEIGHTS_BYTES",
    "Backbone",
    "BackboneInfo",
    "LayerGroup",
    "Classifier",
    "MultiTaskClassifier",
    "TaskHeads",
    "list_backbones",
    "load",
    "group_names",
    "eval_transform",
    "display_crop",
    "imagenet_categories",
    "read_state_dict",
    "classifier",
    "new_head",
    "starting_model",
    "group_parameters",
    "multitask_classifier",
    "starting_multitask_model",
    "task_view",
]
