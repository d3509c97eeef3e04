"""The old home of ``fit``, kept so that ``core.training.fit``, ``core.training.strategy_config`` and
``core.training.TrainConfig`` go on working: the names live in ``core.train`` now."""

from core.train import *  # noqa: F403  (every public name of core.train, as this module's own)
from core.train import __all__  # noqa: F401
