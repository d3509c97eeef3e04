"""Training: one loop (``Trainer``), objectives that say what a batch's loss is, callbacks for what
varies, the preset strategies, and ``fit``, the loop's public face.

- ``base``: the vocabulary (``TrainConfig``, ``EpochMetrics``, ``History``, ``Callback``) and the
  building blocks every objective shares (freezing, optimizers, schedules, augmentation);
- ``loop`` and ``caches``: the one loop and its feature caches; ``callbacks``: the divergence guard
  and early stopping; ``distributed``: one rank of a ``torchrun`` job;
- ``objectives``: classification; ``multitask``: one loss per task over a shared body;
- ``strategies``: feature extraction, last stage, progressive unfreezing, full fine-tuning;
- ``fitting``: ``fit`` and ``clone_model``.

Objectives that define a method of their own (DAN, distillation, episodic meta-learning) live with
that method in ``core.methods``.
"""

from core.train.base import (
    HEAD_PATIENCE,
    BatchProgress,
    Callback,
    EpochMetrics,
    FitInfo,
    History,
    TrainConfig,
    discriminative_multipliers,
    training_plan,
)
from core.train.callbacks import DivergenceGuard, EarlyStopping
from core.train.fitting import clone_model, fit
from core.train.loop import Trainer
from core.train.multitask import WEIGHTINGS, MultiTask, MultiTaskEpochMetrics, fit_multitask
from core.train.objectives import Classification, Objective
from core.train.strategies import STRATEGIES, strategy_config, strategy_of

__all__ = ["Trainer", "Objective", "Classification", "MultiTask", "MultiTaskEpochMetrics", "WEIGHTINGS", "Callback",
           "DivergenceGuard", "EarlyStopping", "TrainConfig", "EpochMetrics", "History", "FitInfo", "BatchProgress",
           "HEAD_PATIENCE", "STRATEGIES", "fit", "fit_multitask", "clone_model", "strategy_config", "strategy_of",
           "training_plan", "discriminative_multipliers"]
