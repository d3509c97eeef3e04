"""The training engine: one loop (``Trainer``), objectives that say what a batch's loss is, and
callbacks for what varies. ``core.training.fit`` and the other public trainers are thin wrappers."""

from core.train.base import BatchProgress, Callback, EpochMetrics, FitInfo, History, TrainConfig
from core.train.loop import DivergenceGuard, Trainer
from core.train.objectives import Classification, Objective

__all__ = ["Trainer", "Objective", "Classification", "Callback", "DivergenceGuard", "TrainConfig",
           "EpochMetrics", "History", "FitInfo", "BatchProgress"]
