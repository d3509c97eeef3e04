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
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2 as T

from core.backbones import Classifier, group_parameters
from core.devices import autocast_dtype, pick_device
from core.errors import ConfigError
from core.seeding import reseed, seeded

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
    "training_plan",
    "discriminative_multipliers",
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
    unfreeze_every: int = 0  # progressive unfreezing: one more group, from the top, every k epochs
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
        if not isinstance(self.unfreeze_every, int) or not 0 <= self.unfreeze_every <= 100:
            raise ConfigError("Unfreeze every k epochs: k must be a whole number from 0 (off) to 100.")
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
    cache: str = ""  # "head", "prefix" or "" (no cache)
    plan: list[dict[str, float]] = field(default_factory=list)  # per epoch, group -> lr multiplier

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


# --- the loop's building blocks, shared with the other trainers (adaptation, distillation, the
# learning-rate finder) so that every one of them freezes, augments and normalises alike ---------


def labels_of(ds) -> torch.Tensor:
    labels = getattr(ds, "labels", None)
    if labels is None:
        labels = [ds[i][1] for i in range(len(ds))]
    return torch.as_tensor(list(labels), dtype=torch.long)


def make_augmenter(size: int) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.2, 0.2, 0.2),
        ]
    )


def augment_batch(images: torch.Tensor, augmenter, generator_seed: int) -> torch.Tensor:
    # torchvision's v2 transforms draw from torch's global RNG: seed it for this batch alone.
    with seeded(generator_seed):
        return torch.stack([augmenter(img) for img in images])


def normalise(batch_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (batch_uint8.float().div_(255) - mean) / std


# --- model state -----------------------------------------------------------------------------


def apply_freeze(model: Classifier, frozen_modules: list[nn.Module], train_bn: bool) -> None:
    model.train()
    for module in frozen_modules:
        if train_bn:
            for sub in module.modules():
                if not isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    sub.eval()
        else:
            module.eval()


def apply_epoch_plan(model: Classifier, by_group: dict[str, list[nn.Parameter]], active: dict[str, float],
                     train_bn: bool) -> None:
    """Make this epoch's groups trainable and freeze the rest, BatchNorm statistics included."""
    for name, params in by_group.items():
        for p in params:
            p.requires_grad_(active.get(name, 0) > 0)
    resting = [model.get_submodule(m) for g in model.layer_groups if active[g.name] == 0 for m in g.modules]
    apply_freeze(model, resting, train_bn)


def restore_if_diverged(params: list[nn.Parameter], last_good: list[torch.Tensor], diverged: bool) -> bool:
    """Whether the epoch diverged (a non-finite loss was seen, or a weight is no longer finite); if it
    did, the weights go back to the last good epoch's."""
    diverged = diverged or any(not torch.isfinite(p).all() for p in params)
    if diverged:
        with torch.no_grad():
            for p, good in zip(params, last_good):
                p.copy_(good)
    return diverged


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
            x = normalise(batch[start:start + batch_size].to(device), mean, std)
            out.append(model(x).float().softmax(1).cpu())
    return torch.cat(out)


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

    Groups in ``config.freeze`` (or with multiplier 0) never train. With ``unfreeze_every = k``
    (progressive unfreezing), only the top trainable group trains at first and the next one
    down joins every k epochs, until every trainable group, down to the stem, trains.
    """
    base = {g: 0.0 if g in config.freeze else float(config.lr_multipliers.get(g, 1.0)) for g in group_names}
    trainable = [g for g in group_names if base[g] > 0]
    plan = []
    for epoch in range(config.epochs):
        if config.unfreeze_every > 0:
            active = set(trainable[len(trainable) - min(len(trainable), 1 + epoch // config.unfreeze_every):])
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


@contextmanager
def skip_prefix(modules: list[nn.Module], boundary: nn.Module, stash: dict):
    """Make the frozen prefix free: its modules pass their input through, and the boundary
    module returns the cached activation in ``stash["x"]`` instead of computing it."""
    try:
        for module in modules:
            module.forward = lambda x, *args, **kwargs: x
        boundary.forward = lambda *args, **kwargs: stash["x"]
        yield
    finally:
        for module in modules + [boundary]:
            module.__dict__.pop("forward", None)


@torch.inference_mode()
def collect_activations(model, module, images, mean, std, device, batch_size, dtype, on_batch,
                        capture="output") -> torch.Tensor:
    """One pass over ``images``; returns what flows into (or out of) ``module`` for each image."""
    captured: list[torch.Tensor] = []

    class _Done(Exception):
        pass

    def grab(value):
        captured.append(value.float())
        raise _Done  # nothing after the captured point is needed

    if capture == "input":
        handle = module.register_forward_pre_hook(lambda _m, args: grab(args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _args, out: grab(out))
    try:
        for start in range(0, len(images), batch_size):
            x = normalise(images[start:start + batch_size].to(device, non_blocking=True), mean, std)
            try:
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    model(x)
            except _Done:
                pass
            on_batch()
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.empty(0)


def fit(model: Classifier, train_ds, val_ds, config: TrainConfig, callbacks: Sequence[Callback] = (),
        stop=None) -> History:
    """Train ``model`` in place on ``train_ds``, evaluating on ``val_ds`` after every epoch.

    Setting ``stop`` (a ``threading.Event``) ends the run within one batch. A loss that becomes
    NaN or infinite ends the run with a message, and the weights of the last good epoch are
    put back. Layer groups that never train are computed once per image (and per cached
    augmented view) when ``config.cache_features`` allows, and only the rest of the network runs.
    """
    group_names = [g.name for g in model.layer_groups]
    config.validate(group_names)
    if len(train_ds) < 2:
        raise ConfigError("Training needs at least two training images.")
    n_classes = len(model.classes)
    train_labels = labels_of(train_ds)
    val_labels = labels_of(val_ds)
    if len(train_labels) and int(train_labels.max()) >= n_classes:
        raise ConfigError("The dataset has more classes than the model's head.")

    device = pick_device(config.device)
    amp_dtype = autocast_dtype(device) if config.mixed_precision else None
    reseed(config.seed)
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

    plan = training_plan(group_names, config)
    never_trained = [g for g in model.layer_groups if all(epoch[g.name] == 0 for epoch in plan)]
    original_requires_grad = {id(p): p.requires_grad for p in model.parameters()}
    ever = TrainConfig(**{**config.to_dict(), "freeze": [g.name for g in never_trained]})
    param_groups = build_param_groups(model, ever)
    by_group = {g["name"]: g["params"] for g in param_groups}
    trainable_params = sum(p.numel() for g in param_groups for p in g["params"])
    frozen_params = sum(p.numel() for p in model.parameters()) - trainable_params

    # What the cache can skip: the longest run of never-trained groups from the input on.
    prefix = []
    for g in model.layer_groups:
        if g not in never_trained:
            break
        prefix.append(g)
    head_group = model.layer_groups[-1]
    cache_mode = None
    if config.cache_features and prefix and not (config.train_bn and never_trained) and "other" not in by_group:
        if len(prefix) == len(model.layer_groups) - 1 and len(head_group.modules) == 1:
            cache_mode = "head"  # only the head trains: run nothing but the head
        else:
            cache_mode = "prefix"
    if cache_mode == "head":
        boundary = model.get_submodule(head_group.modules[0])
    elif cache_mode == "prefix":
        boundary = model.get_submodule(prefix[-1].modules[-1])
        prefix_modules = [model.get_submodule(m) for g in prefix for m in g.modules if m != prefix[-1].modules[-1]]
    views = (config.cached_views if config.augment else 1) if cache_mode else 0
    if cache_mode:
        probe = collect_activations(model.eval(), boundary, train_images[:1], mean, std, device, 1, amp_dtype,
                                    lambda: None, "input" if cache_mode == "head" else "output")
        bytes_needed = probe[0].numel() * 4 * (len(train_images) * views + len(val_images))
        if bytes_needed > CACHE_BUDGET_BYTES:
            cache_mode, views = None, 0

    drop_last = len(train_images) % config.batch_size == 1  # a batch of one breaks BatchNorm
    batches = len(train_images) // config.batch_size if drop_last else math.ceil(len(train_images) / config.batch_size)
    cache_batches = (math.ceil(len(train_images) / config.batch_size) * views
                     + math.ceil(len(val_images) / config.batch_size)) if cache_mode else 0
    total_units = cache_batches + batches * config.epochs
    done_units = 0

    optimizer = make_optimizer(config, param_groups)
    scheduler = make_scheduler(config, optimizer, batches * config.epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    augmenter = make_augmenter(size) if config.augment else None

    history = History(used_feature_cache=cache_mode is not None, cache=cache_mode or "", plan=plan)
    info = FitInfo(config.epochs, batches, len(train_images), len(val_images), str(device), cache_mode is not None,
                   trainable_params, frozen_params, tuple(g["name"] for g in param_groups), cache_mode or "")
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
    seen_images, train_seconds = 0, 0.0
    stash: dict = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch: raw images, or cached activations at the boundary."""
        if cache_mode == "head":
            return boundary(x)
        if cache_mode == "prefix":
            stash["x"] = x
            # the skipped prefix never reads its input: a tiny stand-in carries the batch size
            return model(torch.zeros(len(x), 3, 8, 8, device=device))
        return model(x)

    def cached_eval() -> tuple[float, float]:
        if len(val_bank) == 0:
            return float("nan"), float("nan")
        model.eval()
        total, correct = 0.0, 0
        with torch.inference_mode(), (skip_prefix(prefix_modules, boundary, stash) if cache_mode == "prefix"
                                     else nullcontext()):
            for start in range(0, len(val_bank), 64):
                logits = forward(val_bank[start:start + 64]).float()
                y = val_labels_dev[start:start + 64]
                total += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
        return total / len(val_bank), correct / len(val_bank)

    try:
        if cache_mode:
            model.eval()
            capture = "input" if cache_mode == "head" else "output"
            cached_views = []
            for v in range(views):
                source = augment_batch(train_images, augmenter, config.seed * 1000 + v) if augmenter else train_images
                cached_views.append(collect_activations(model, boundary, source, mean, std, device, config.batch_size,
                                                        amp_dtype, lambda: tick(0, 0, float("nan"), "cache"), capture))
                if stopped():
                    break
            feature_bank = torch.stack(cached_views)
            val_bank = collect_activations(model, boundary, val_images, mean, std, device, config.batch_size,
                                           amp_dtype, lambda: tick(0, 0, float("nan"), "cache"), capture)
            train_labels_dev = train_labels.to(device)
            val_labels_dev = val_labels.to(device)

        for epoch in range(1, config.epochs + 1):
            if stopped():
                history.stopped = "cancelled"
                break
            started = time.perf_counter()
            active = plan[epoch - 1]
            apply_epoch_plan(model, by_group, active, config.train_bn)
            order = torch.randperm(len(train_images), generator=shuffler)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            count = 0
            diverged = False
            skipping = skip_prefix(prefix_modules, boundary, stash) if cache_mode == "prefix" else nullcontext()
            with skipping:
                for b in range(batches):
                    if stopped():
                        history.stopped = "cancelled"
                        break
                    idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                    if cache_mode:
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
                            batch = augment_batch(batch, augmenter, hash((config.seed, epoch, b)) & 0x7FFFFFFF)
                        x = normalise(batch.to(device, non_blocking=True), mean, std)
                        if device.type == "cuda":
                            x = x.contiguous(memory_format=torch.channels_last)
                        y = train_labels[idx].to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = forward(x).float()
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
            if restore_if_diverged(trainable_list, last_good, diverged):
                history.stopped = "diverged"
                history.message = (
                    f"Training stopped in epoch {epoch}: the loss became NaN or infinite, which usually "
                    f"means the learning rate ({config.lr:g}) is too high. The weights of the last good "
                    "epoch were kept; try a learning rate 10× smaller."
                )
                break
            if history.stopped == "cancelled" and count == 0:
                break
            if cache_mode:
                val_loss, val_acc = cached_eval()
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


def clone_model(model: Classifier) -> Classifier:
    """An independent copy (for 'before/after' comparisons)."""
    return copy.deepcopy(model)


__all__.append("clone_model")
