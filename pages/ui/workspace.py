"""One workspace per person: the dataset, backbone, strategy and training settings they work with,
which settings they edited and which a link locks, and the run on screen.

Every page, the sidebar and the link read ``workspace()``; every change goes through its methods,
which apply the locks (core.workspace holds the rules). A lesson runs in a workspace of its own
(``Workspace.detached``), so it never changes the person's; "Continue with this setup" copies it
over with ``adopt``, through the same locks.

The person's workspace keeps its fields in session state under the keys the pages have always
used (``dataset``, ``model_choice``, ``train_config``, ``current_run``, ...), so a test that reads
``st.session_state.train_config`` reads the workspace. Pages never touch those keys themselves
(tests/project/test_workspace_keys.py checks): a write there would slip past the locks.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field, replace

import streamlit as st

from core import data, models
from core import workspace as rules
from core.runs.store import is_run_id
from core.train.base import TrainConfig, discriminative_multipliers
from core.train.strategies import strategy_config

__all__ = ["DEMO_LABEL", "demo", "ModelChoice", "PRESETS", "KEPT_SETTINGS", "preset_config", "preset_freeze",
           "Workspace", "workspace", "init_workspace", "discriminative_spread"]

DEMO_LABEL = "Demo shapes"


@st.cache_data(show_spinner="Generating the demo images…")
def _demo(domain: str, per_class: int, seed: int) -> data.ImageDataset:
    return data.demo_dataset(domain, per_class=per_class, seed=seed)


def demo(domain: str = "source", per_class: int = 20, seed: int = 0) -> data.ImageDataset:
    return _demo(domain, per_class, seed)


@dataclass
class ModelChoice:
    """What the Model page decided, read by the Train page."""

    backbone: str = models.DEFAULT_BACKBONE
    pretrained: bool = True
    weights_path: str | None = None
    weights_name: str | None = None  # the person's own name for the file at weights_path
    freeze: list[str] = field(default_factory=list)
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    strategy: str = "Feature extraction"
    unfreeze_every: int = 0
    train_bn: bool = False


# The Model page's strategies and the core preset each starts from ("Custom" keeps what is set).
PRESETS = {
    "Feature extraction": "feature_extraction",
    "Fine-tune the last stage": "last_stage",
    "Fine-tune all": "full",
    "Discriminative learning rates": "full",
    "Progressive unfreezing": "progressive",
}


# Settings of the person's that a change of strategy keeps (they describe the data, not the strategy).
KEPT_SETTINGS = ("seed", "image_size", "flip", "color_jitter", "device")


def preset_config(strategy: str, groups: list[str], current: TrainConfig | None = None) -> TrainConfig:
    """The core preset's TrainConfig for a Model-page strategy, keeping ``current``'s data settings."""
    kept = {k: getattr(current, k) for k in KEPT_SETTINGS} if current is not None else {}
    return strategy_config(PRESETS.get(strategy, "feature_extraction"), groups, **kept)


def preset_freeze(strategy: str, groups: list[str]) -> list[str]:
    """Which groups a preset strategy keeps frozen (the head always trains)."""
    return list(preset_config(strategy, groups).freeze)


# The model choice's fields and the link lock that holds each (None: no lock holds it).
_MODEL_LOCKS = {"backbone": "backbone", "pretrained": "pretrained", "weights_path": "backbone",
                "weights_name": "backbone", "train_bn": None}
# Settings held both by the model choice (the Model page's table) and by the training config.
_SHARED = ("freeze", "lr_multipliers", "unfreeze_every")


class Workspace:
    """What one person (or one lesson) works with, over a mapping that stores it."""

    def __init__(self, state: MutableMapping):
        self._state = state

    @classmethod
    def detached(cls, dataset, label: str, model: ModelChoice, config: TrainConfig) -> Workspace:
        """A workspace of its own (a lesson's), stored apart from the person's."""
        ws = cls({})
        ws._state.update(dataset=dataset, dataset_label=label, load_report=None, model_choice=model,
                         train_config=config, current_run=None)
        return ws

    # --- what it holds ---------------------------------------------------------------------------------------
    @property
    def dataset(self):
        return self._state["dataset"]

    @property
    def dataset_label(self) -> str:
        return self._state["dataset_label"]

    @property
    def load_report(self):
        return self._state.get("load_report")

    @property
    def model(self) -> ModelChoice:
        return self._state["model_choice"]

    @property
    def config(self) -> TrainConfig:
        return self._state["train_config"]

    @property
    def current_run(self) -> str | None:
        return self._state.get("current_run")

    @property
    def edited(self) -> set[str]:
        """The training settings the person changed by hand (a preset keeps them)."""
        return self._state.setdefault("_edited", set())

    @property
    def locks(self) -> set[str]:
        """The settings this session's link locks (keys of core.links.LOCKABLE)."""
        return set(self._state.get("link_lock", ()))

    def is_locked(self, setting: str) -> bool:
        return setting in self.locks

    # --- the one place that changes it ------------------------------------------------------------------------
    def set_dataset(self, dataset, label: str, report=None) -> bool:
        """Work on ``dataset`` from now on; False (and nothing changes) when a link locks the data."""
        if self.is_locked("data") and dataset.fingerprint != self.dataset.fingerprint:
            return False
        self._state.update(dataset=dataset, dataset_label=label, load_report=report)
        return True

    def set_window(self, window) -> bool:
        """See the dataset through ``window`` (None: the default percentiles); False (and nothing changes)
        when a link locks the data, since the window decides what the model sees."""
        return self.set_dataset(self.dataset.with_window(window), self.dataset_label, self.load_report)

    def change(self, by_hand: bool = False, **changes) -> list[str]:
        """Change model and training settings (TrainConfig fields, or backbone, pretrained, weights_path,
        weights_name, train_bn), except locked ones; the names refused. ``by_hand``: the person typed
        them, so a later preset keeps them."""
        mc, refused = self.model, []
        for name in [k for k in changes if k in _MODEL_LOCKS]:
            value = changes.pop(name)
            lock = _MODEL_LOCKS[name]
            if lock and self.is_locked(lock) and value != getattr(mc, name):
                refused.append(name)
                continue
            if name == "backbone" and value != mc.backbone:
                mc.backbone, mc.weights_path, mc.weights_name = value, None, None
                self.choose_strategy(mc.strategy)  # the new backbone's groups, the same strategy
            setattr(mc, name, value)
            if name == "train_bn":
                changes["train_bn"] = bool(value)
        if self.is_locked("strategy") and any(changes.get(k, getattr(mc, k)) != getattr(mc, k) for k in _SHARED):
            # frozen groups decide the strategy: changing them would turn a locked strategy into "Custom"
            refused += [k for k in _SHARED if k in changes and changes.pop(k) != getattr(mc, k)]
        if "lr_multipliers" in changes:
            changes["lr_multipliers"] = _without_ones(changes["lr_multipliers"])
        config, held = rules.apply_changes(self.config, changes, self.locks)
        self._state["train_config"] = config
        for name in _SHARED:
            setattr(mc, name, _copy(getattr(config, name)))
        if by_hand:
            self.edited.update(k for k in changes if k not in held)
        return refused + held

    def choose_strategy(self, strategy: str, lowest: float | None = None) -> list[str] | None:
        """Make ``strategy`` (a Model page label) the one to train with and put back its preset, except
        what the person edited or a link locks; the preset's fields that kept their value, or None when
        a link locks another strategy."""
        mc = self.model
        if self.is_locked("strategy") and strategy != mc.strategy:
            return None
        groups = models.group_names(mc.backbone)
        if strategy not in PRESETS:  # Custom: what is set stays, on this backbone's groups
            mc.strategy = strategy
            self.change(freeze=[g for g in mc.freeze if g in groups],
                        lr_multipliers={g: m for g, m in mc.lr_multipliers.items() if g in groups})
            return []
        config, kept = rules.preset_changes(PRESETS[strategy], groups, self.config, self.edited, self.locks)
        if strategy == "Discriminative learning rates" and "lr_multipliers" not in kept:
            config = replace(config, lr_multipliers=discriminative_spread(groups, lowest or 0.01))
        self._state["train_config"] = replace(config, train_bn=mc.train_bn,
                                              lr_multipliers=_without_ones(config.lr_multipliers))
        mc.strategy = strategy
        for name in _SHARED:
            setattr(mc, name, _copy(getattr(config, name)))
        return kept

    def select_run(self, run_id: str | None) -> None:
        self._state["current_run"] = run_id

    def adopt(self, other: Workspace) -> list[str]:
        """Take ``other``'s data, model and settings (a lesson's setup), through this workspace's
        locks; the settings refused."""
        refused = [] if self.set_dataset(other.dataset, other.dataset_label, other.load_report) else ["data"]
        refused += self.change(backbone=other.model.backbone, pretrained=other.model.pretrained)
        if self.choose_strategy(other.model.strategy) is None:
            refused.append("strategy")
        theirs = other.config.to_dict()
        changes = {k: theirs[k] for k in ("epochs", "lr", "seed", "image_size", "batch_size", "early_stopping",
                                          "warmup_epochs", *_SHARED)}
        refused += self.change(**changes)
        self.select_run(other.current_run)
        return list(dict.fromkeys(refused))


def discriminative_spread(groups: list[str], lowest: float = 0.01) -> dict[str, float]:
    """The multipliers of "Discriminative learning rates": the stem at ``lowest``, the head at 1."""
    return _without_ones({g: round(m, 4) for g, m in discriminative_multipliers(groups, lowest).items()})


def _without_ones(multipliers: dict) -> dict:
    # a multiplier of 1 is no multiplier: leaving it out keeps one spelling of each setup
    return {g: float(m) for g, m in multipliers.items() if float(m) != 1.0}


def _copy(value):
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def workspace() -> Workspace:
    """This person's workspace."""
    return Workspace(st.session_state)


def init_workspace() -> None:
    """A new person's workspace: the demo set, the offline default backbone, feature extraction."""
    ss = st.session_state
    if "dataset" not in ss:
        ss.dataset = demo()
        ss.dataset_label = f"{DEMO_LABEL} (source look)"
        ss.load_report = None
    ss.setdefault("val_fraction", 0.25)
    ss.setdefault("split_seed", 0)
    if "model_choice" not in ss:
        preset = preset_config("Feature extraction", models.group_names(models.DEFAULT_BACKBONE))
        ss.model_choice = ModelChoice(freeze=list(preset.freeze), lr_multipliers=dict(preset.lr_multipliers))
    ss.setdefault("train_config", TrainConfig())
    mc, cfg = ss.model_choice, ss.train_config
    shared = {name: _copy(getattr(mc, name)) for name in (*_SHARED, "train_bn")}
    if any(getattr(cfg, name) != value for name, value in shared.items()):
        # what trains is what the Model page shows: a config set from elsewhere (a test, an older
        # session) takes the model choice's frozen groups, rates and pace
        ss.train_config = replace(cfg, **shared)
    if "current_run" not in ss:
        run_id = st.query_params.get("run", "")
        ss.current_run = run_id if is_run_id(run_id) else None
        if "run" in st.query_params and ss.current_run is None:
            # A mistyped or cut link would otherwise stay in the address bar and fail silently.
            del st.query_params["run"]
            ss.link_note = ("This link's run id is not valid (a run id is 16 characters, 0–9 and a–f), so it was "
                            "removed from the address bar. Check the link you were given.")
