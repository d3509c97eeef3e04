"""Feature extraction and fine-tuning through one ``fit``.

Frozen layer groups stay exactly as they were (their BatchNorm layers run in eval mode, so
their running statistics do not move). When everything but the head is frozen, the backbone's
output is computed once per image (and per augmented view) and only the head trains on those
cached features: epochs after the first then cost milliseconds instead of seconds.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2 as T

from core.backbones import Classifier, group_parameters
from core.devices import autocast_dtype, pick_device
from core.errors import ConfigError
from core.seeding import seeded

__all__ = [
    "TrainConfig",
    "EpochMetrics",
    "History",
    "FitInfo",
    "BatchProgress",
    "Callback",
    "fit",
    "encode_images",
    "evaluate",
    "predict_proba",
    "build_param_groups",
]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass
class TrainConfig:
    """Everything ``fit`` needs to know; every field but the first few has a default."""

    epochs: int = 5
    batch_size: int = 16
    lr: float = 3e-3
    freeze: list[str] = field(default_factory=list)
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    augment: bool = True
    image_size: int = 128
    train_bn: bool = False  # let frozen groups' BatchNorm layers update their statistics
    cache_features: bool = True
    cached_views: int = 3  # augmented views per image cached for a frozen backbone
    label_smoothing: float = 0.0
    mixed_precision: bool = True  # on CUDA only

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
        if not 1 <= self.cached_views <= 16:
            raise ConfigError("Cached views must be between 1 and 16.")
        for name, mult in self.lr_multipliers.items():
            if not (isinstance(mult, (int, float)) and math.isfinite(mult) and 0 <= mult <= 1000):
                raise ConfigError(f"The learning-rate multiplier of {name} must be a number from 0 to 1000.")
        if group_names is not None:
            unknown = sorted(set(self.freeze) - set(group_names))
            if unknown:
                raise ConfigError(f"Unknown layer groups to freeze: {', '.join(unknown)}.")
            trainable = [g for g in group_names if g not in self.freeze and self.lr_multipliers.get(g, 1.0) > 0]
            if not trainable:
                raise ConfigError("Every layer group is frozen: unfreeze at least the head to train.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
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
    stopped: str | None = None  # None (ran to the end), "cancelled" or "diverged"
    message: str = ""
    used_feature_cache: bool = False
    images_per_second: float = 0.0  # training throughput over the whole run

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


@dataclass(frozen=True)
class BatchProgress:
    epoch: int  # 1-based
    batch: int  # 1-based within the epoch
    batches: int
    loss: float
    fraction: float  # of the whole run, in [0, 1]
    phase: str = "train"  # "cache" while the frozen backbone's features are computed


class Callback:
    """Hooks that ``fit`` calls; each does nothing unless overridden."""

    def on_fit_start(self, info: FitInfo) -> None:
        """Called once the model, data and optimizer are ready."""

    def on_batch_end(self, progress: BatchProgress) -> None:
        """Called after every optimizer step (and every cached batch of features)."""

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        """Called after each epoch's evaluation."""

    def on_fit_end(self, history: History) -> None:
        """Called once, after the last epoch or a stop."""


# --- data ----------------------------------------------------------------------------------


def encode_images(ds, size: int) -> torch.Tensor:
    """All images of ``ds`` as uint8 Tensor[N, 3, size, size]: short side resized, centre crop."""
    resize = T.Compose([T.ToImage(), T.Resize(size, antialias=True), T.CenterCrop(size)])
    if len(ds) == 0:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.stack([resize(ds[i][0]) for i in range(len(ds))])


def _labels(ds) -> torch.Tensor:
    labels = getattr(ds, "labels", None)
    if labels is None:
        labels = [ds[i][1] for i in range(len(ds))]
    return torch.as_tensor(list(labels), dtype=torch.long)


def _augmenter(size: int) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.2, 0.2, 0.2),
        ]
    )


def _augment(images: torch.Tensor, augmenter, generator_seed: int) -> torch.Tensor:
    # torchvision's v2 transforms draw from torch's global RNG: seed it for this batch alone.
    with seeded(generator_seed):
        return torch.stack([augmenter(img) for img in images])


def _normalise(batch_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (batch_uint8.float().div_(255) - mean) / std


# --- model state -----------------------------------------------------------------------------


def _apply_freeze(model: Classifier, frozen_modules: list[nn.Module], train_bn: bool) -> None:
    model.train()
    for module in frozen_modules:
        if train_bn:
            for sub in module.modules():
                if not isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    sub.eval()
        else:
            module.eval()


def _make_optimizer(config: TrainConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=True)
    return torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)


def _make_scheduler(config: TrainConfig, optimizer, total_steps: int):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(2, total_steps)
        )
    return None


@torch.inference_mode()
def _cache_head_inputs(model, head, images, mean, std, device, batch_size, dtype, on_batch) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].float()))
    try:
        for start in range(0, len(images), batch_size):
            x = _normalise(images[start:start + batch_size].to(device, non_blocking=True), mean, std)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                model(x)
            on_batch()
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.empty(0)


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
                x = _normalise(images[start:start + batch_size].to(device), mean, std)
                y = labels[start:start + batch_size].to(device)
                logits = model(x).float()
                total_loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
    finally:
        model.train(was_training)
    return total_loss / len(images), correct / len(images)


def predict_proba(model: Classifier, images, device: str | torch.device = "cpu", batch_size: int = 64) -> torch.Tensor:
    """Class probabilities for a list of PIL images (or a dataset), Tensor[N, classes]."""
    device = torch.device(device)
    size = model.image_size
    resize = T.Compose([T.ToImage(), T.Resize(size, antialias=True), T.CenterCrop(size)])
    batch = torch.stack([resize(img) for img in images])
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(batch), batch_size):
            x = _normalise(batch[start:start + batch_size].to(device), mean, std)
            out.append(model(x).float().softmax(1).cpu())
    return torch.cat(out)


# --- fit -----------------------------------------------------------------------------------


def _frozen_groups(model: Classifier, config: TrainConfig) -> set[str]:
    # a multiplier of 0 freezes a group as surely as listing it
    return set(config.freeze) | {g.name for g in model.layer_groups if config.lr_multipliers.get(g.name, 1.0) == 0}


def build_param_groups(model: Classifier, config: TrainConfig) -> list[dict]:
    """One optimizer param group per trainable layer group, at lr × its multiplier.

    Sets ``requires_grad`` to match: False for every parameter of a frozen group.
    """
    frozen = _frozen_groups(model, config)
    groups = []
    for name, params in group_parameters(model, model.layer_groups).items():
        trainable = name not in frozen
        for p in params:
            p.requires_grad_(trainable)
        if trainable and params:
            groups.append({"params": params, "lr": config.lr * config.lr_multipliers.get(name, 1.0), "name": name})
    return groups


def fit(model: Classifier, train_ds, val_ds, config: TrainConfig, callbacks: Sequence[Callback] = (),
        stop=None) -> History:
    """Train ``model`` in place on ``train_ds``, evaluating on ``val_ds`` after every epoch.

    Setting ``stop`` (a ``threading.Event``) ends the run within one batch. A loss that becomes
    NaN or infinite ends the run with a message, and the weights of the last good epoch are
    put back.
    """
    group_names = [g.name for g in model.layer_groups]
    config.validate(group_names)
    if len(train_ds) < 2:
        raise ConfigError("Training needs at least two training images.")
    n_classes = len(model.classes)
    train_labels = _labels(train_ds)
    val_labels = _labels(val_ds)
    if len(train_labels) and int(train_labels.max()) >= n_classes:
        raise ConfigError("The dataset has more classes than the model's head.")

    device = pick_device(config.device)
    amp_dtype = autocast_dtype(device) if config.mixed_precision else None
    torch.manual_seed(config.seed)
    shuffler = torch.Generator().manual_seed(config.seed)

    size = int(config.image_size)
    train_images = encode_images(train_ds, size)
    val_images = encode_images(val_ds, size)
    if device.type == "cuda":
        train_images, val_images = train_images.pin_memory(), val_images.pin_memory()

    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)

    frozen_groups = _frozen_groups(model, config)
    frozen_modules = [model.get_submodule(m) for g in model.layer_groups if g.name in frozen_groups for m in g.modules]
    original_requires_grad = {id(p): p.requires_grad for p in model.parameters()}
    param_groups = build_param_groups(model, config)
    trainable_params = sum(p.numel() for g in param_groups for p in g["params"])
    frozen_params = sum(p.numel() for p in model.parameters()) - trainable_params

    # Only the head trains: cache what flows into it and train the head alone on that.
    head_group = next((g for g in model.layer_groups if any(
        model.head_module == m or model.head_module.startswith(m + ".") for m in g.modules)), None)
    use_cache = (
        config.cache_features
        and head_group is not None
        and len(head_group.modules) == 1
        and all(g.name in frozen_groups for g in model.layer_groups if g is not head_group)
        and not (config.train_bn and frozen_groups)
        and "other" not in {g["name"] for g in param_groups}
    )

    drop_last = len(train_images) % config.batch_size == 1  # a batch of one breaks BatchNorm
    batches = len(train_images) // config.batch_size if drop_last else math.ceil(len(train_images) / config.batch_size)
    views = (config.cached_views if config.augment else 1) if use_cache else 0
    cache_batches = math.ceil(len(train_images) / config.batch_size) * views + (
        math.ceil(len(val_images) / config.batch_size) if use_cache else 0)
    total_units = cache_batches + batches * config.epochs
    done_units = 0

    optimizer = _make_optimizer(config, param_groups)
    scheduler = _make_scheduler(config, optimizer, batches * config.epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    augmenter = _augmenter(size) if config.augment else None

    history = History(used_feature_cache=use_cache)
    info = FitInfo(config.epochs, batches, len(train_images), len(val_images), str(device), use_cache,
                   trainable_params, frozen_params, tuple(g["name"] for g in param_groups))
    for cb in callbacks:
        cb.on_fit_start(info)

    def tick(epoch: int, batch: int, loss: float, phase: str = "train") -> None:
        nonlocal done_units
        done_units += 1
        progress = BatchProgress(epoch, batch, batches, loss, min(1.0, done_units / max(1, total_units)), phase)
        for cb in callbacks:
            cb.on_batch_end(progress)

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    trainable_list = [p for g in param_groups for p in g["params"]]
    last_good = [p.detach().clone() for p in trainable_list]
    head = model.get_submodule(head_group.modules[0]) if use_cache else None
    seen_images, train_seconds = 0, 0.0

    try:
        if use_cache:
            model.eval()
            cached_views = []
            for v in range(views):
                source = _augment(train_images, augmenter, config.seed * 1000 + v) if augmenter else train_images
                cached_views.append(_cache_head_inputs(model, head, source, mean, std, device, config.batch_size,
                                                       amp_dtype, lambda: tick(0, 0, float("nan"), "cache")))
                if stopped():
                    break
            feature_bank = torch.stack(cached_views)
            val_features = _cache_head_inputs(model, head, val_images, mean, std, device, config.batch_size,
                                              amp_dtype, lambda: tick(0, 0, float("nan"), "cache"))
            train_labels_dev = train_labels.to(device)
            val_labels_dev = val_labels.to(device)

        for epoch in range(1, config.epochs + 1):
            if stopped():
                history.stopped = "cancelled"
                break
            started = time.perf_counter()
            if use_cache:
                head.train()
            else:
                _apply_freeze(model, frozen_modules, config.train_bn)
            order = torch.randperm(len(train_images), generator=shuffler)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            count = 0
            diverged = False
            for b in range(batches):
                if stopped():
                    history.stopped = "cancelled"
                    break
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                if use_cache:
                    # each image shows up as one of its cached augmented views, drawn at random
                    if len(feature_bank) > 1:
                        pick = torch.randint(len(feature_bank), (len(idx),), generator=shuffler)
                        x = feature_bank[pick.to(device), idx.to(device)]
                    else:
                        x = feature_bank[0, idx.to(device)]
                    y = train_labels_dev[idx.to(device)]
                else:
                    batch = train_images[idx]
                    if augmenter is not None:
                        batch = _augment(batch, augmenter, hash((config.seed, epoch, b)) & 0x7FFFFFFF)
                    x = _normalise(batch.to(device, non_blocking=True), mean, std)
                    if device.type == "cuda":
                        x = x.contiguous(memory_format=torch.channels_last)
                    y = train_labels[idx].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = (head(x) if use_cache else model(x)).float()
                    loss = criterion(logits, y)
                loss_value = loss.item()  # one sync per step: the live curve and the NaN guard need it
                if not math.isfinite(loss_value):
                    diverged = True
                    break
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                count += len(y)
                tick(epoch, b + 1, loss_value)
            train_seconds += time.perf_counter() - started
            seen_images += count
            if not diverged and any(not torch.isfinite(p).all() for p in trainable_list):
                diverged = True
            if diverged:
                with torch.no_grad():
                    for p, good in zip(trainable_list, last_good):
                        p.copy_(good)
                history.stopped = "diverged"
                history.message = (
                    f"Training stopped in epoch {epoch}: the loss became NaN or infinite, which usually "
                    f"means the learning rate ({config.lr:g}) is too high. The weights of the last good "
                    "epoch were kept; try a learning rate 10× smaller."
                )
                break
            if history.stopped == "cancelled" and count == 0:
                break
            if use_cache:
                val_loss, val_acc = _evaluate_head(head, val_features, val_labels_dev)
            else:
                val_loss, val_acc = evaluate(model, val_images, val_labels, mean, std, device)
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=(loss_sum / max(1, count)).item(),
                train_acc=correct.item() / max(1, count),
                val_loss=val_loss,
                val_acc=val_acc,
                seconds=time.perf_counter() - started,
                lr=optimizer.param_groups[-1]["lr"],
            )
            history.epochs.append(metrics)
            with torch.no_grad():
                for p, good in zip(trainable_list, last_good):
                    good.copy_(p)
            for cb in callbacks:
                cb.on_epoch_end(metrics)
            if history.stopped == "cancelled":
                break
        if history.stopped == "cancelled" and not history.message:
            history.message = f"Training was stopped after {len(history.epochs)} epoch(s)."
    finally:
        for p in model.parameters():
            p.requires_grad_(original_requires_grad.get(id(p), True))
        model.eval()
    history.images_per_second = seen_images / train_seconds if train_seconds > 0 else 0.0
    for cb in callbacks:
        cb.on_fit_end(history)
    return history


def _evaluate_head(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(features) == 0:
        return float("nan"), float("nan")
    head.eval()
    with torch.inference_mode():
        logits = head(features).float()
        loss = F.cross_entropy(logits, labels).item()
        acc = (logits.argmax(1) == labels).float().mean().item()
    return loss, acc


def clone_model(model: Classifier) -> Classifier:
    """An independent copy (for 'before/after' comparisons)."""
    return copy.deepcopy(model)


__all__.append("clone_model")
