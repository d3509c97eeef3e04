"""Unsupervised domain adaptation by MMD (DAN): close the gap between a labelled and an unlabelled set.

Every step takes a labelled source batch and an unlabelled target batch of the same size and
runs them through the network together; the loss is the cross-entropy on the source batch plus
λ times the multi-kernel MMD^2 between the two batches' features at one layer (by default the
head's input, the pooled penultimate features). With λ = 0 it is plain fine-tuning on the
source labels, the target batch still going through the network: the two arms of
:func:`compare_adaptation` then differ in the loss alone.

As in ``core.training.fit``, frozen groups run in eval mode and, when they form a prefix of the
network, their output is computed once per image (and per cached augmented view), so each step
runs only the layers that train; both arms of a comparison share that cache. Every BatchNorm
layer keeps its running statistics during adaptation (see :func:`fit_dan`).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from core import backbones
from core.backbones import Classifier
from core.devices import autocast_dtype, pick_device
from core.domain import HEAD_INPUT, Task, pool
from core.errors import ConfigError, UserInputError
from core.features import tensor_key
from core.mmd import mmd2, mmd_loss
from core.seeding import reseed
from core.training import (
    CACHE_BUDGET_BYTES,
    BatchProgress,
    Callback,
    EpochMetrics,
    FitInfo,
    History,
    TrainConfig,
    apply_epoch_plan,
    augment_batch,
    build_param_groups,
    collect_activations,
    encode_images,
    labels_of,
    make_augmenter,
    make_optimizer,
    make_scheduler,
    normalise,
    restore_if_diverged,
    skip_prefix,
    training_plan,
)

__all__ = [
    "DEFAULT_LAMBDA",
    "DANEpoch",
    "DANHistory",
    "ArmResult",
    "AdaptationComparison",
    "adaptation_config",
    "default_freeze",
    "fit_dan",
    "compare_adaptation",
    "AdaptationRun",
    "start_comparison",
]

# Measured on the demo set (15-20 images a class, 96 px, seeds 0-2): λ = 1 cuts the MMD at the
# head input three- to fourfold against plain fine-tuning and raises target accuracy by 7-18
# points; 0.5 and 2 do nearly as well, so the default is not a knife-edge.
DEFAULT_LAMBDA = 1.0


@dataclass
class DANEpoch(EpochMetrics):
    """One epoch of :func:`fit_dan`: ``train_loss`` = ``ce`` + λ·``mmd`` (means over the epoch)."""

    ce: float = math.nan
    mmd: float = math.nan  # the MMD^2 term between source and target batches, before λ
    target_loss: float = math.nan
    target_acc: float = math.nan  # nan without target labels
    layer_mmd: float = math.nan  # MMD^2 at the adapted layer, all source vs all target, eval mode


@dataclass
class DANHistory(History):
    lam: float = 0.0
    layer: str = HEAD_INPUT
    mmd_before: float = math.nan  # layer_mmd before the first step

    @property
    def mmd_after(self) -> float:
        return self.epochs[-1].layer_mmd if self.epochs else self.mmd_before

    def final(self, key: str = "target_acc") -> float:
        return getattr(self.epochs[-1], key) if self.epochs else math.nan


def default_freeze(group_names: Sequence[str], trainable: int = 2) -> list[str]:
    """Every group but the head and the last ``trainable`` groups before it."""
    body = [g for g in group_names if g != "head"]
    return body[:max(0, len(body) - trainable)]


def adaptation_config(backbone: str = backbones.DEFAULT_BACKBONE, **overrides) -> TrainConfig:
    """Settings that adapt on the demo set in well under a minute on a laptop CPU.

    96 px (the demo images' own size); the last two groups before the head and the head train,
    so the frozen rest is computed once per image and view and each step runs only the end of
    the network. With three trainable groups plain fine-tuning already reaches ~100% on the demo
    target, which leaves adaptation nothing to show.
    """
    settings = dict(epochs=6, batch_size=16, lr=1e-3, image_size=96, augment=True, cached_views=3,
                    freeze=default_freeze(backbones.group_names(backbone), trainable=2), seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


# ----------------------------------------------------------------------------- where the layer sits


def _layer_position(model: nn.Module, layer: str) -> tuple[list[str], int, bool]:
    """Module names in order, the layer's position, and whether the layer is the head's input."""
    names = [name for name, _ in model.named_modules()]
    if layer == HEAD_INPUT:
        head = getattr(model, "head_module", None)
        if head not in names:
            raise ConfigError("This model has no known classifier head; name the layer to adapt instead.")
        return names, names.index(head), True
    if not layer or layer not in names:
        raise ConfigError(f"This model has no layer {layer!r}; pick one of its layer groups' modules.")
    return names, names.index(layer), False


def _feeds(names: list[str], position: int, strict: bool, module: str) -> bool:
    """Whether ``module``'s parameters can change what is at ``position`` (a module's output, or
    with ``strict`` the input of the module there)."""
    layer = names[position]
    for i, name in enumerate(names):
        if name == module or name.startswith(module + "."):
            if i < position:
                return True
            if not strict and (name == layer or name.startswith(layer + ".")):
                return True
    return False


def _check_adaptable(model: Classifier, config: TrainConfig, lam: float, layer: str) -> None:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ConfigError(f"λ (the weight of the MMD term) must be a number of at least 0; got {lam!r}.")
    names, position, strict = _layer_position(model, layer)
    config.validate([g.name for g in model.layer_groups])
    if lam == 0:
        return
    plan = training_plan([g.name for g in model.layer_groups], config)
    trains = [g for g in model.layer_groups if any(epoch[g.name] > 0 for epoch in plan)]
    if not any(_feeds(names, position, strict, m) for g in trains for m in g.modules):
        shown = "the head's input" if strict else layer
        raise ConfigError(
            f"Adaptation needs trainable layers before the adapted layer: everything up to {shown} is "
            "frozen, so the MMD there cannot change. Unfreeze a stage or two before it, or set λ to 0."
        )


# ----------------------------------------------------------------------------- one training run


class _Stream:
    """Endless shuffled indices of a set: each pass is a new permutation (cycles a smaller set)."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.pending = torch.empty(0, dtype=torch.long)

    def take(self, k: int) -> torch.Tensor:
        while len(self.pending) < k:
            self.pending = torch.cat([self.pending, torch.randperm(self.n, generator=self.generator)])
        out, self.pending = self.pending[:k], self.pending[k:]
        return out


def _prefix_key(modules: list[nn.Module]) -> str:
    """A digest of the frozen prefix's weights and buffers: equal prefixes compute equal outputs."""
    digest = hashlib.blake2b(digest_size=16)
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor_key(tensor).encode())
    return digest.hexdigest()


def fit_dan(model: Classifier, source_train, source_val, target_ds, config: TrainConfig, lam: float,
            layer: str | None = None, callbacks: Sequence[Callback] = (), stop: threading.Event | None = None,
            target_eval=None, *, prefix_cache: dict | None = None, batch_stats: bool = False) -> DANHistory:
    """Train ``model`` in place on labelled ``source_train`` and unlabelled ``target_ds`` (DAN).

    The loss is cross-entropy on the source batch + ``lam`` · multi-kernel MMD^2 between the
    source and target batches' features at ``layer`` (default: the head's input, read with a
    forward pre-hook on ``model.head_module``). An epoch is as many steps as the larger set needs;
    the smaller one is cycled. After each epoch the model is evaluated on ``source_val``, on the
    labelled ``target_eval`` when given (its classes must be the model's), and the MMD^2 at the
    layer between all source and all target images is measured in eval mode without augmentation
    (``DANEpoch.layer_mmd``; ``DANHistory.mmd_before`` is the same before the first step).

    ``prefix_cache``: a dict shared by runs whose frozen prefix may be identical (the arms of
    :func:`compare_adaptation`): its cached outputs are keyed by a digest of the prefix's weights
    and of the images, so they are computed once for all of them.

    ``batch_stats=False`` (the default) keeps every BatchNorm layer on its running statistics,
    training only its scale and shift: batches that mix two domains would otherwise normalise
    differently in training than in evaluation (and EfficientNet's BN momentum of 0.01 barely
    moves the running statistics in a short run), so the MMD that training lowers would not be
    the MMD measured afterwards. Frozen groups run in eval mode in any case.

    Hooks are always removed and ``requires_grad`` and train/eval modes put back. ``stop`` ends
    the run within one batch; a NaN loss ends it with the last good epoch's weights.
    """
    layer = HEAD_INPUT if layer is None else layer
    _check_adaptable(model, config, lam, layer)
    lam = float(lam)
    if len(source_train) < 2 or len(target_ds) < 2:
        raise ConfigError("Adaptation needs at least two source training images and two target images.")
    n_classes = len(model.classes)
    source_labels, val_labels = labels_of(source_train), labels_of(source_val)
    if int(source_labels.max()) >= n_classes:
        raise ConfigError("The source set has more classes than the model's head.")
    eval_labels = labels_of(target_eval) if target_eval is not None else None
    if eval_labels is not None and len(eval_labels) and int(eval_labels.max()) >= n_classes:
        raise ConfigError("The labelled target set has classes the model does not know.")

    device = pick_device(config.device)
    amp_dtype = autocast_dtype(device) if config.mixed_precision else None
    reseed(config.seed)
    shuffler = torch.Generator().manual_seed(config.seed)
    size = int(config.image_size)
    source_images, target_images = encode_images(source_train, size), encode_images(target_ds, size)
    val_images = encode_images(source_val, size)
    eval_images = None
    if target_eval is not None:
        eval_images = target_images if target_eval is target_ds else encode_images(target_eval, size)

    modes = [(m, m.training) for m in model.modules()]
    original_requires_grad = {id(p): p.requires_grad for p in model.parameters()}
    model.to(device)
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)

    group_names = [g.name for g in model.layer_groups]
    plan = training_plan(group_names, config)
    never_trained = [g for g in model.layer_groups if all(epoch[g.name] == 0 for epoch in plan)]
    ever = TrainConfig(**{**config.to_dict(), "freeze": [g.name for g in never_trained]})

    names, position, strict = _layer_position(model, layer)
    layer_module = model.get_submodule(model.head_module if strict else layer)
    captured: dict[str, torch.Tensor] = {}
    if strict:
        handle = layer_module.register_forward_pre_hook(lambda _m, args: captured.__setitem__("f", args[0]))
    else:
        handle = layer_module.register_forward_hook(
            lambda _m, _a, out: captured.__setitem__("f", out[0] if isinstance(out, (tuple, list)) else out))

    history = DANHistory(plan=plan, lam=lam, layer=layer)
    try:
        param_groups = build_param_groups(model, ever)
        by_group = {g["name"]: g["params"] for g in param_groups}
        trainable_list = [p for g in param_groups for p in g["params"]]

        # The frozen prefix is computed once per image and view, unless the adapted layer lies inside it.
        prefix = []
        for g in model.layer_groups:
            if g not in never_trained:
                break
            prefix.append(g)
        cache = bool(config.cache_features and prefix and not (config.train_bn and never_trained)
                     and "other" not in by_group)
        if cache:
            boundary_name = prefix[-1].modules[-1]
            boundary_end = max(i for i, n in enumerate(names)
                               if n == boundary_name or n.startswith(boundary_name + "."))
            cache = position > boundary_end
        augmenter = make_augmenter(size) if config.augment else None
        # view 0 is the plain image (evaluation and the MMD read it); the others are augmented
        views = (config.cached_views if augmenter else 1) if cache else 0
        stash: dict = {}
        if cache:
            boundary = model.get_submodule(boundary_name)
            prefix_modules = [model.get_submodule(m) for g in prefix for m in g.modules if m != boundary_name]
            model.eval()
            probe = collect_activations(model, boundary, source_images[:1], mean, std, device, 1, amp_dtype,
                                        lambda: None)
            per_image = probe[0].numel() * 4
            if per_image * ((len(source_images) + len(target_images)) * views + len(val_images)
                            + (len(eval_images) if eval_images is not None else 0)) > CACHE_BUDGET_BYTES:
                cache, views = False, 0
        if cache:
            shared = prefix_cache if prefix_cache is not None else {}
            base_key = (_prefix_key([model.get_submodule(m) for g in prefix for m in g.modules]),
                        boundary_name, size, str(device))

        batch = min(config.batch_size, len(source_images), len(target_images))
        if batch < 2:
            raise ConfigError("The MMD needs batches of at least 2 images: raise the batch size.")
        steps = math.ceil(max(len(source_images), len(target_images)) / batch)
        cache_units = (math.ceil(len(source_images) / config.batch_size)
                       + math.ceil(len(target_images) / config.batch_size)) * views
        total_units = cache_units + steps * config.epochs
        done_units = 0

        def tick(epoch: int, b: int, loss: float, phase: str = "train") -> None:
            nonlocal done_units
            done_units += 1
            progress = BatchProgress(epoch, b, steps, loss, min(1.0, done_units / max(1, total_units)), phase)
            for cb in callbacks:
                cb.on_batch_end(progress)

        def stopped() -> bool:
            return stop is not None and stop.is_set()

        def bank(images: torch.Tensor, seed: int | None) -> torch.Tensor:
            key = base_key + (tensor_key(images), seed)
            if key not in shared:
                chosen = augment_batch(images, augmenter, seed) if seed is not None else images
                shared[key] = collect_activations(model, boundary, chosen, mean, std, device, config.batch_size,
                                                  amp_dtype, lambda: tick(0, 0, math.nan, "cache"))
            return shared[key]

        optimizer = make_optimizer(config, param_groups)
        scheduler = make_scheduler(config, optimizer, steps * config.epochs)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        n_trainable = sum(p.numel() for p in trainable_list)
        info = FitInfo(config.epochs, steps, len(source_images), len(val_images), str(device), cache, n_trainable,
                       sum(p.numel() for p in model.parameters()) - n_trainable,
                       tuple(g["name"] for g in param_groups), "prefix" if cache else "")
        history.used_feature_cache, history.cache = cache, "prefix" if cache else ""
        for cb in callbacks:
            cb.on_fit_start(info)

        if cache:
            model.eval()
            source_bank = torch.stack([bank(source_images, None if v == 0 else config.seed * 1000 + v)
                                       for v in range(views)])
            target_bank = torch.stack([bank(target_images, None if v == 0 else config.seed * 1000 + 500 + v)
                                       for v in range(views)])
            val_bank = bank(val_images, None)
            eval_bank = bank(eval_images, None) if eval_images is not None else None

        def forward(x: torch.Tensor) -> torch.Tensor:
            if cache:
                stash["x"] = x
                # the skipped prefix never reads its input: a tiny stand-in carries the batch size
                return model(torch.zeros(len(x), 3, 8, 8, device=device))
            return model(x)

        def inputs(images: torch.Tensor, cached: torch.Tensor | None, idx: torch.Tensor, seed: int) -> torch.Tensor:
            if cached is not None:
                if len(cached) > 1:
                    pick = torch.randint(len(cached), (len(idx),), generator=shuffler)
                    return cached[pick.to(device), idx.to(device)]
                return cached[0, idx.to(device)]
            chosen = images[idx]
            if augmenter is not None:
                chosen = augment_batch(chosen, augmenter, seed)
            return normalise(chosen.to(device), mean, std)

        def in_eval(images: torch.Tensor, cached: torch.Tensor | None, labels: torch.Tensor | None):
            """(mean CE, accuracy, pooled features at the layer) in eval mode, without augmentation."""
            if images is None or len(images) == 0:
                return math.nan, math.nan, None
            model.eval()
            total, correct, feats = 0.0, 0, []
            with torch.inference_mode(), (skip_prefix(prefix_modules, boundary, stash) if cache else nullcontext()):
                for start in range(0, len(images), 64):
                    x = cached[start:start + 64] if cache else normalise(images[start:start + 64].to(device), mean, std)
                    captured.clear()
                    logits = forward(x).float()
                    feats.append(pool(captured["f"]).float().cpu())
                    if labels is not None:
                        y = labels[start:start + 64].to(device)
                        total += nn.functional.cross_entropy(logits, y, reduction="sum").item()
                        correct += (logits.argmax(1) == y).sum().item()
            if labels is None:
                return math.nan, math.nan, torch.cat(feats)
            return total / len(images), correct / len(images), torch.cat(feats)

        def measure() -> tuple[float, float, float, float, float]:
            """Source val (loss, acc), target (loss, acc) and the eval-mode MMD^2 at the layer."""
            val_loss, val_acc, val_f = in_eval(val_images, val_bank if cache else None, val_labels)
            _, _, train_f = in_eval(source_images, source_bank[0] if cache else None, None)
            if eval_images is target_images:
                target_loss, target_acc, target_f = in_eval(target_images, target_bank[0] if cache else None,
                                                            eval_labels)
            else:
                target_loss, target_acc, _ = in_eval(eval_images, eval_bank if cache else None, eval_labels)
                _, _, target_f = in_eval(target_images, target_bank[0] if cache else None, None)
            source_f = torch.cat([train_f] + ([val_f] if val_f is not None else []))
            return val_loss, val_acc, target_loss, target_acc, mmd2(source_f, target_f)

        history.mmd_before = measure()[4]
        source_stream = _Stream(len(source_images), shuffler)
        target_stream = _Stream(len(target_images), shuffler)
        last_good = [p.detach().clone() for p in trainable_list]
        seen, train_seconds = 0, 0.0
        for epoch in range(1, config.epochs + 1):
            if stopped():
                history.stopped = "cancelled"
                break
            started = time.perf_counter()
            active = plan[epoch - 1]
            apply_epoch_plan(model, by_group, active, config.train_bn)
            if not batch_stats:
                for module in model.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
            sums = {"loss": 0.0, "ce": 0.0, "mmd": 0.0}
            correct, count, diverged = 0, 0, False
            with skip_prefix(prefix_modules, boundary, stash) if cache else nullcontext():
                for b in range(steps):
                    if stopped():
                        history.stopped = "cancelled"
                        break
                    si, ti = source_stream.take(batch), target_stream.take(batch)
                    seed = hash((config.seed, epoch, b)) & 0x7FFFFFFF
                    xs = inputs(source_images, source_bank if cache else None, si, seed)
                    xt = inputs(target_images, target_bank if cache else None, ti, seed + 1)
                    y = source_labels[si].to(device)
                    captured.clear()
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = forward(torch.cat([xs, xt]))[:batch].float()
                        ce = criterion(logits, y)
                    features = pool(captured["f"]).float()
                    if lam > 0:
                        term = mmd_loss(features[:batch], features[batch:])
                        loss = ce + lam * term
                    else:
                        with torch.no_grad():
                            term = mmd_loss(features[:batch].detach(), features[batch:].detach())
                        loss = ce
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        diverged = True
                        break
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    if scheduler is not None:
                        scheduler.step()
                    sums["loss"] += loss_value * batch
                    sums["ce"] += ce.item() * batch
                    sums["mmd"] += term.item() * batch
                    correct += int((logits.detach().argmax(1) == y).sum())
                    count += batch
                    tick(epoch, b + 1, loss_value)
            seen += 2 * count
            if restore_if_diverged(trainable_list, last_good, diverged):
                history.stopped = "diverged"
                history.message = (
                    f"Adaptation stopped in epoch {epoch}: the loss became NaN or infinite. The weights of the "
                    f"last good epoch were kept; try a learning rate 10x smaller ({config.lr / 10:g}) or a smaller λ."
                )
                break
            if history.stopped == "cancelled" and count == 0:
                break
            train_seconds += time.perf_counter() - started
            val_loss, val_acc, target_loss, target_acc, shift = measure()
            metrics = DANEpoch(
                epoch=epoch, train_loss=sums["loss"] / max(1, count), train_acc=correct / max(1, count),
                val_loss=val_loss, val_acc=val_acc, seconds=time.perf_counter() - started,
                lr=optimizer.param_groups[-1]["lr"], ce=sums["ce"] / max(1, count),
                mmd=sums["mmd"] / max(1, count), target_loss=target_loss, target_acc=target_acc, layer_mmd=shift,
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
            history.message = f"Adaptation was stopped after {len(history.epochs)} epoch(s)."
        history.images_per_second = seen / train_seconds if train_seconds > 0 else 0.0
    finally:
        handle.remove()
        for p in model.parameters():
            p.requires_grad_(original_requires_grad.get(id(p), True))
        model.train(modes[0][1])
        for module, mode in modes:
            module.training = mode
    for cb in callbacks:
        cb.on_fit_end(history)
    return history


# ----------------------------------------------------------------------------- plain vs DAN


@dataclass
class ArmResult:
    """One arm of the comparison: its training history and the MMD at the adapted layer."""

    name: str
    lam: float
    history: DANHistory
    mmd_before: float
    mmd_after: float
    seconds: float
    model: Classifier | None = field(default=None, repr=False, compare=False)

    @property
    def target_acc(self) -> float:
        return self.history.final("target_acc")

    @property
    def val_acc(self) -> float:
        return self.history.final("val_acc")


@dataclass
class AdaptationComparison:
    plain: ArmResult
    dan: ArmResult
    layer: str
    seconds: float

    @property
    def arms(self) -> list[ArmResult]:
        return [self.plain, self.dan]


def compare_adaptation(source_train, source_val, target_ds, config: TrainConfig, lam: float = DEFAULT_LAMBDA,
                       layer: str | None = None, *, backbone: str = backbones.DEFAULT_BACKBONE,
                       pretrained: bool = True, head: str = "linear", target_eval=None,
                       callbacks_for: Callable[[str], Sequence[Callback]] | None = None,
                       stop: threading.Event | None = None, keep_models: bool = False) -> AdaptationComparison:
    """Plain fine-tuning (λ = 0) and DAN (``lam``) from the same starting model, same everything else.

    Both arms start from ``core.backbones.starting_model`` with ``config.seed``. ``target_eval``
    defaults to ``target_ds`` itself when its classes are the source's (the usual transductive
    protocol: the target images are unlabelled for training and labelled for scoring).
    """
    classes = list(source_train.classes)
    if len(classes) < 2:
        raise UserInputError("Adaptation needs a labelled source set with at least two classes.")
    if target_eval is None and list(getattr(target_ds, "classes", [])) == classes:
        target_eval = target_ds
    layer = HEAD_INPUT if layer is None else layer

    def start() -> Classifier:
        return backbones.starting_model(backbone, classes, pretrained=pretrained, seed=config.seed,
                                        image_size=config.image_size, head=head)

    started = time.perf_counter()
    model = start()
    _check_adaptable(model, config, lam, layer)  # fail before the plain arm has run
    shared: dict = {}  # both arms start from the same weights: their frozen prefix is computed once
    arms = []
    for name, arm_lam in (("plain", 0.0), ("DAN", float(lam))):
        if stop is not None and stop.is_set():
            break
        arm_started = time.perf_counter()
        model = model if not arms else start()
        history = fit_dan(model, source_train, source_val, target_ds, config, arm_lam, layer,
                          callbacks=callbacks_for(name) if callbacks_for else (), stop=stop,
                          target_eval=target_eval, prefix_cache=shared)
        arms.append(ArmResult(name, arm_lam, history, history.mmd_before, history.mmd_after,
                              time.perf_counter() - arm_started, model if keep_models else None))
    if len(arms) < 2:
        raise UserInputError("The comparison was stopped before both arms had trained.")
    return AdaptationComparison(arms[0], arms[1], layer, time.perf_counter() - started)


# ----------------------------------------------------------------------------- from a page


class _ArmRecorder(Callback):
    def __init__(self, task: Task, arm: str, index: int):
        self.task, self.arm, self.index = task, arm, index

    def on_batch_end(self, progress: BatchProgress) -> None:
        text = "Caching the frozen layers' output" if progress.phase == "cache" else f"epoch {progress.epoch}"
        self.task.report((self.index + progress.fraction) / 2, f"{self.arm}: {text}…")

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self.task.add_epoch(metrics, self.arm)


class AdaptationRun(Task):
    """A plain-vs-DAN comparison as a background task; a page polls ``snapshot()``.

    It waits for a slot in the server's training queue like any run, so a classroom cannot
    start more trainings at once than the server allows. ``snapshot().epochs`` is per arm.
    """

    kind = "comparison"

    def __init__(self, source_train, source_val, target_ds, config: TrainConfig, lam: float,
                 layer: str | None = None, queue=None, **options):
        from core.tasks import get_queue

        super().__init__(name="adapt", queue=queue or get_queue(), arms=("plain", "DAN"))
        self.lam, self.config = float(lam), config
        self._text = "Waiting for a free training slot…"
        self._work = (source_train, source_val, target_ds, layer, options)

    @property
    def task(self) -> "AdaptationRun":  # pages written for the former wrapper
        return self

    def _body(self) -> AdaptationComparison:
        source_train, source_val, target_ds, layer, options = self._work
        self._work = None
        self.report(0.0, "Loading the model and measuring the MMD before training…")
        return compare_adaptation(
            source_train, source_val, target_ds, self.config, self.lam, layer, stop=self.stop,
            callbacks_for=lambda arm: [_ArmRecorder(self, arm, 0 if arm == "plain" else 1)], **options)


def start_comparison(source_train, source_val, target_ds, config: TrainConfig, lam: float = DEFAULT_LAMBDA,
                     layer: str | None = None, **options) -> AdaptationRun:
    """Validate the settings now (so a page can show the error at once), then train in the background."""
    classes = list(source_train.classes)
    if len(classes) < 2:
        raise UserInputError("Adaptation needs a labelled source set with at least two classes.")
    # an untrained skeleton of the same architecture is enough to check the layer and the freezing
    skeleton = backbones.classifier(backbones.load(options.get("backbone", backbones.DEFAULT_BACKBONE),
                                                   pretrained=False), len(classes))
    _check_adaptable(skeleton, config, lam, HEAD_INPUT if layer is None else layer)
    return AdaptationRun(source_train, source_val, target_ds, config, lam, layer, **options).start()
