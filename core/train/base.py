"""The training engine's vocabulary: settings, metrics, the callback hooks, and the small pieces
every objective shares (encoding and augmenting images, freezing groups, optimizers, schedules)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2 as T

from core.data.encoded import normalise
from core.errors import ConfigError
from core.models.heads import Classifier, group_parameters
from core.seeding import seeded

__all__ = [
    "HEAD_PATIENCE",
    "MAX_PINS",
    "TrainConfig",
    "EpochMetrics",
    "History",
    "FitInfo",
    "BatchProgress",
    "Callback",
    "make_augmenter",
    "config_augmenter",
    "augment_batch",
    "apply_freeze",
    "apply_epoch_plan",
    "make_optimizer",
    "make_scheduler",
    "evaluate",
    "frozen_groups",
    "build_param_groups",
    "training_plan",
    "discriminative_multipliers",
    "CACHE_BUDGET_BYTES",
    "FitCancelled",
]

OPTIMIZERS = ("adamw", "sgd")
MAX_PINS = 8  # pinned validation images a run records at every epoch end
SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass
class TrainConfig:
    """Everything ``fit`` needs to know; every field but the first few has a default."""

    # The defaults are the feature-extraction preset's (core/train/strategies.py): a frozen backbone
    # with a head trained on cached features until the validation loss stops improving.
    epochs: int = 60
    batch_size: int = 32
    lr: float = 3e-3
    freeze: list[str] = field(default_factory=list)
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    augment: bool = True  # random crops (and, when asked, flips and colour jitter) while training
    flip: bool = False  # horizontal flips: off by default, a flip changes what digits and text mean
    color_jitter: bool = False  # brightness/contrast/saturation: off by default (meaningless on grayscale)
    image_size: int = 128
    train_bn: bool = False  # let frozen groups' BatchNorm layers update their statistics
    # BatchNorm layers of the groups that train keep their pretrained running statistics (inference
    # mode; their scale and shift still train). A few images per batch give noisy batch statistics
    # far from the pretrained ones, and switching to them wrecks the features fine-tuning starts from.
    keep_bn_stats: bool = False
    cache_features: bool = True
    cached_views: int = 3  # views per image cached for a frozen backbone: the image itself, then random crops
    unfreeze_every: int = 0  # progressive unfreezing: one more group, from the top, every k epochs
    warmup_epochs: int = 0  # epochs that train the head alone before any backbone group (fastai's fine_tune)
    early_stopping: int = 8  # stop after this many epochs without a better validation loss, keep the best; 0: off
    label_smoothing: float = 0.0
    mixed_precision: bool = True  # on CUDA only
    # validation images (indices) recorded at every epoch end: probabilities and Grad-CAM (core.train.watch)
    watch: tuple[int, ...] = ()
    watch_task: str = ""  # a multi-task model's task the pinned images are watched through ("": the first)

    def __post_init__(self):
        self.watch = tuple(self.watch)  # a JSON settings file gives a list

    def validate(self, group_names: Sequence[str] | None = None) -> None:
        """Raise ConfigError for settings that cannot work together."""
        if not isinstance(self.epochs, int) or not 1 <= self.epochs <= 500:
            raise ConfigError("Epochs must be a whole number between 1 and 500.")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 1024:
            raise ConfigError("Batch size must be between 1 and 1024.")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr <= 10):
            raise ConfigError("The learning rate must be a positive number (at most 10).")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"Unknown schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}.")
        if not 32 <= int(self.image_size) <= 512:
            raise ConfigError("The input size must be between 32 and 512 pixels.")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("Label smoothing must be in [0, 1).")
        if self.weight_decay < 0:
            raise ConfigError("Weight decay cannot be negative.")
        if not isinstance(self.unfreeze_every, int) or not 0 <= self.unfreeze_every <= 100:
            raise ConfigError("Unfreeze every k epochs: k must be a whole number from 0 (off) to 100.")
        if not isinstance(self.warmup_epochs, int) or not 0 <= self.warmup_epochs < max(2, self.epochs):
            raise ConfigError("Warm-up epochs must be a whole number from 0 to one less than the epochs.")
        if not isinstance(self.early_stopping, int) or not 0 <= self.early_stopping <= 100:
            raise ConfigError("Early stopping patience must be a whole number from 0 (off) to 100 epochs.")
        if not 1 <= self.cached_views <= 16:
            raise ConfigError("Cached views must be between 1 and 16.")
        if len(self.watch) > MAX_PINS or not all(isinstance(i, int) and i >= 0 for i in self.watch):
            raise ConfigError(f"Pin at most {MAX_PINS} validation images, by their position (0, 1, …).")
        for name, mult in self.lr_multipliers.items():
            if not (isinstance(mult, (int, float)) and math.isfinite(mult) and 0 <= mult <= 1000):
                raise ConfigError(f"The learning-rate multiplier of {name} must be a number from 0 to 1000.")
        if group_names is not None:
            unknown = sorted(set(self.freeze) - set(group_names))
            if unknown:
                raise ConfigError(f"Unknown layer groups to freeze: {', '.join(unknown)}.")
            unknown = sorted(set(self.lr_multipliers) - set(group_names))
            if unknown:
                raise ConfigError(f"Unknown layer groups in the learning-rate multipliers: {', '.join(unknown)} "
                                  f"(the groups are {', '.join(group_names)}).")
            trainable = [g for g in group_names if g not in self.freeze and self.lr_multipliers.get(g, 1.0) > 0]
            if not trainable:
                raise ConfigError("Every layer group is frozen: unfreeze at least the head to train.")

    def to_dict(self) -> dict:
        """The settings as JSON holds them (the pins as a list), so a run's saved settings compare equal."""
        return {**asdict(self), "watch": list(self.watch)}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    lr: float = 0.0


@dataclass
class History:
    epochs: list[EpochMetrics] = field(default_factory=list)
    stopped: str | None = None  # None (ran to the end), "early" (early stopping), "cancelled" or "diverged"
    message: str = ""
    used_feature_cache: bool = False
    images_per_second: float = 0.0  # training throughput over the whole run
    cache: str = ""  # "head", "prefix" or "" (no cache)
    plan: list[dict[str, float]] = field(default_factory=list)  # per epoch, group -> lr multiplier
    best_epoch: int | None = None  # with early stopping: the epoch whose weights the model kept
    batch_size: int = 0  # the batch size the run ended with (halved after running out of GPU memory)
    # with config.watch: one core.train.watch.WatchFrame per epoch and pinned image, in epoch order
    watch: list = field(default_factory=list)

    def best_val_acc(self) -> float:
        accs = [e.val_acc for e in self.epochs if not math.isnan(e.val_acc)]
        return max(accs) if accs else float("nan")


@dataclass(frozen=True)
class FitInfo:
    epochs: int
    batches_per_epoch: int
    n_train: int
    n_val: int
    device: str
    uses_feature_cache: bool
    trainable_params: int
    frozen_params: int
    trainable_groups: tuple[str, ...]
    cache: str = ""


@dataclass(frozen=True)
class BatchProgress:
    epoch: int  # 1-based
    batch: int  # 1-based within the epoch
    batches: int
    loss: float
    fraction: float  # of the whole run, in [0, 1]
    phase: str = "train"  # "cache" while the frozen backbone's features are computed


class FitCancelled(Exception):
    """Raised inside a fit when its stop flag is set between batches; the fit ends as "cancelled"."""


class Callback:
    """Hooks that the training loop calls; each does nothing unless overridden.

    While a fit runs, ``self.trainer`` is the running ``Trainer`` (as fastai's ``self.learn``):
    a callback may read its state, and end the fit with ``trainer.request_stop(reason, message)``.
    """

    trainer = None

    def on_fit_start(self, info: FitInfo) -> None:
        """Called once the model, data and optimizer are ready."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first batch of each epoch (1-based)."""

    def on_batch_start(self, step: int) -> None:
        """Called before each optimizer step; ``step`` counts from 0 over the whole fit."""

    def on_batch_end(self, progress: BatchProgress) -> None:
        """Called after every optimizer step (and every cached batch of features)."""

    def on_train_epoch_end(self, epoch: int) -> None:
        """Called after an epoch's last step, before its evaluation."""

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        """Called after each epoch's evaluation."""

    def on_fit_end(self, history: History) -> None:
        """Called once, after the last epoch or a stop."""


# --- the loop's building blocks, shared with the other trainers (adaptation, distillation, the
# learning-rate finder) so that every one of them freezes, augments and normalises alike ---------


def make_augmenter(size: int, flip: bool = False, color_jitter: bool = False) -> T.Compose:
    """Random crops of 60–100 % of the image; flips and colour jitter only when asked for."""
    steps = [T.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    if color_jitter:
        steps.append(T.ColorJitter(0.2, 0.2, 0.2))
    return T.Compose(steps)


def config_augmenter(config: TrainConfig):
    """The augmenter ``config`` asks for, or None without augmentation."""
    if not config.augment:
        return None
    return make_augmenter(int(config.image_size), config.flip, config.color_jitter)


def augment_batch(images: torch.Tensor, augmenter, generator_seed: int) -> torch.Tensor:
    # torchvision's v2 transforms draw from torch's global RNG: seed it for this batch alone.
    with seeded(generator_seed):
        return torch.stack([augmenter(img) for img in images])


# --- model state -----------------------------------------------------------------------------


def apply_freeze(model: Classifier, frozen_modules: list[nn.Module], train_bn: bool) -> None:
    """Train mode for the model, eval mode for the frozen modules; with ``train_bn`` the BatchNorm
    layers inside frozen modules stay in train mode and keep updating their statistics."""
    model.train()
    for module in frozen_modules:
        if train_bn:
            # one module at a time: eval() on a block would switch its BatchNorm children too
            for sub in module.modules():
                sub.training = isinstance(sub, nn.modules.batchnorm._BatchNorm)
        else:
            module.eval()


def apply_epoch_plan(model: Classifier, by_group: dict[str, list[nn.Parameter]], active: dict[str, float],
                     train_bn: bool, keep_bn_stats: bool = False) -> None:
    """Make this epoch's groups trainable and freeze the rest, BatchNorm statistics included; with
    ``keep_bn_stats`` the BatchNorm layers of the groups that train normalise with their running
    statistics and leave them be (``train_bn`` still decides for the frozen groups)."""
    for name, params in by_group.items():
        for p in params:
            p.requires_grad_(active.get(name, 0) > 0)
    resting = [model.get_submodule(m) for g in model.layer_groups if active[g.name] == 0 for m in g.modules]
    apply_freeze(model, resting, train_bn)
    if keep_bn_stats:
        training = [model.get_submodule(m) for g in model.layer_groups if active[g.name] > 0 for m in g.modules]
        for module in training:
            for sub in module.modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    sub.eval()


def make_optimizer(config: TrainConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=True)
    return torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer, total_steps: int):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(2, total_steps)
        )
    return None


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std,
             device: torch.device, batch_size: int = 64) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on uint8 images, in eval mode."""
    if len(images) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = normalise(images[start:start + batch_size].to(device), mean, std)
                y = labels[start:start + batch_size].to(device)
                logits = model(x).float()
                total_loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
    finally:
        model.train(was_training)
    return total_loss / len(images), correct / len(images)


# --- fit -----------------------------------------------------------------------------------


def frozen_groups(model: Classifier, config: TrainConfig) -> set[str]:
    # a multiplier of 0 freezes a group as surely as listing it
    return set(config.freeze) | {g.name for g in model.layer_groups if config.lr_multipliers.get(g.name, 1.0) == 0}


def build_param_groups(model: Classifier, config: TrainConfig) -> list[dict]:
    """One optimizer param group per trainable layer group, at lr × its multiplier.

    Sets ``requires_grad`` to match: False for every parameter of a frozen group.
    """
    frozen = frozen_groups(model, config)
    groups = []
    for name, params in group_parameters(model, model.layer_groups).items():
        trainable = name not in frozen
        for p in params:
            p.requires_grad_(trainable)
        if trainable and params:
            groups.append({"params": params, "lr": config.lr * config.lr_multipliers.get(name, 1.0), "name": name})
    return groups


def training_plan(group_names: Sequence[str], config: TrainConfig) -> list[dict[str, float]]:
    """Per epoch, each layer group's learning-rate multiplier; 0 means frozen in that epoch.

    Groups in ``config.freeze`` (or with multiplier 0) never train. The first
    ``config.warmup_epochs`` train the top group (the new head) alone. With ``unfreeze_every = k``
    (progressive unfreezing), only the top trainable group trains at first and the next one
    down joins every k epochs, until every trainable group, down to the stem, trains.
    """
    base = {g: 0.0 if g in config.freeze else float(config.lr_multipliers.get(g, 1.0)) for g in group_names}
    trainable = [g for g in group_names if base[g] > 0]
    plan = []
    for epoch in range(config.epochs):
        if epoch < config.warmup_epochs:
            active = set(trainable[-1:])
        elif config.unfreeze_every > 0:
            since = epoch - config.warmup_epochs
            active = set(trainable[len(trainable) - min(len(trainable), 1 + since // config.unfreeze_every):])
        else:
            active = set(trainable)
        plan.append({g: base[g] if g in active else 0.0 for g in group_names})
    return plan


def discriminative_multipliers(group_names: Sequence[str], lowest: float = 0.01) -> dict[str, float]:
    """Learning-rate multipliers spread geometrically from ``lowest`` (first group) to 1 (last),
    as fastai's ``slice(lo, hi)``: early, general layers move least."""
    if not 0 < lowest <= 1:
        raise ConfigError("The lowest multiplier must be in (0, 1].")
    n = len(group_names)
    if n == 1:
        return {group_names[0]: 1.0}
    return {g: float(lowest ** (1 - i / (n - 1))) for i, g in enumerate(group_names)}


# A cache of activations larger than this is not worth the memory: train without it.
CACHE_BUDGET_BYTES = 1_500_000_000

# How many epochs without a better validation loss a head trained alone on cached features waits
# before it counts as converged: feature extraction's patience, and a fine-tuning warm-up's. Its
# epochs cost milliseconds, and a head stopped too soon hands fine-tuning a worse start.
HEAD_PATIENCE = 8
