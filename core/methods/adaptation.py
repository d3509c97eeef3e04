"""Unsupervised domain adaptation by MMD (DAN): close the gap between a labelled and an unlabelled set.

Every step takes a labelled source batch and an unlabelled target batch of the same size and
runs them through the network together; the loss is the cross-entropy on the source batch plus
λ times the multi-kernel MMD^2 between the two batches' features at one layer (by default the
head's input, the pooled penultimate features). With λ = 0 it is plain fine-tuning on the
source labels, the target batch still going through the network: the two arms of
:func:`compare_adaptation` then differ in the loss alone.

As in ``core.train.fit``, frozen groups run in eval mode and, when they form a prefix of the
network, their output is computed once per image (and per cached augmented view), so each step
runs only the layers that train; both arms of a comparison share that cache. Every BatchNorm
layer keeps its running statistics during adaptation (see :func:`fit_dan`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from core.analysis.domain import HEAD_INPUT, pool
from core.analysis.mmd import mmd2, mmd_loss
from core.data.encoded import labels_of
from core.errors import ConfigError, UserInputError
from core.models import backbones
from core.models.heads import Classifier, starting_model
from core.train.base import Callback, EpochMetrics, FitCancelled, History, TrainConfig, training_plan
from core.train.loop import Trainer
from core.train.objectives import Objective, check_labels

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
    "check_adaptable",
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


def check_adaptable(model: Classifier, config: TrainConfig, lam: float, layer: str) -> None:
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


class DomainAdaptation(Objective):
    """Cross-entropy on a labelled source batch + λ · MMD² between its features and an unlabelled
    target batch's (DAN), both batches through the network together."""

    title = "Adaptation"
    sources = ("train", "target")
    images_per_item = 2  # a source and a target image per item

    def __init__(self, lam: float, layer: str, batch_stats: bool, eval_source: str | None):
        self.lam, self.layer, self.batch_stats, self.eval_source = float(lam), layer, batch_stats, eval_source
        self.handle = None

    def check(self, model, data, config) -> None:
        check_adaptable(model, config, self.lam, self.layer)
        if len(data["train"]) < 2 or len(data["target"]) < 2:
            raise ConfigError("Adaptation needs at least two source training images and two target images.")
        check_labels(model, labels_of(data["train"]), "The source set")
        if self.eval_source is not None:
            check_labels(model, labels_of(data[self.eval_source]), "The labelled target set")
        if min(config.batch_size, len(data["train"]), len(data["target"])) < 2:
            raise ConfigError("The MMD needs batches of at least 2 images: raise the batch size.")

    def cache_ok(self, model, mode, boundary) -> bool:
        names, position, strict = _layer_position(model, self.layer)
        if mode == "head":
            return strict
        boundary_end = max(i for i, n in enumerate(names) if n == boundary or n.startswith(boundary + "."))
        return position > boundary_end

    def new_history(self, **fields) -> DANHistory:
        return DANHistory(lam=self.lam, layer=self.layer, **fields)

    def steps_per_epoch(self, trainer) -> int:
        self.batch = min(trainer.config.batch_size, len(trainer.images["train"]), len(trainer.images["target"]))
        return math.ceil(max(len(trainer.images["train"]), len(trainer.images["target"])) / self.batch)

    def on_fit_start(self, trainer) -> None:
        _, _, self.strict = _layer_position(trainer.model, self.layer)
        if not self.strict:
            self.captured: dict[str, torch.Tensor] = {}
            self.handle = trainer.model.get_submodule(self.layer).register_forward_hook(
                lambda _m, _a, out: self.captured.__setitem__("f", out[0] if isinstance(out, (tuple, list)) else out))
        self.streams = (_Stream(len(trainer.images["train"]), trainer.generator),
                        _Stream(len(trainer.images["target"]), trainer.generator))
        try:
            trainer.history.mmd_before = self.measure(trainer)["layer_mmd"]
        except FitCancelled:  # stopped while measuring: the loop ends the fit at its first step
            trainer.history.mmd_before = math.nan

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if not self.batch_stats:
            for module in trainer.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def batches(self, trainer, epoch: int):
        for b in range(trainer.steps):
            yield self.streams[0].take(self.batch), self.streams[1].take(self.batch), \
                hash((trainer.config.seed, epoch, b)) & 0x7FFFFFFF

    def _forward(self, trainer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled features at the adapted layer)."""
        if self.strict:
            features = trainer.features(x)
            return trainer.head(features), pool(features)
        logits = trainer.logits(x)
        return logits, pool(self.captured["f"])

    def loss(self, trainer, batch):
        si, ti, seed = batch
        n = len(si)
        x = torch.cat([trainer.inputs("train", si, seed), trainer.inputs("target", ti, seed + 1)])
        y = trainer.labels["train"][si].to(trainer.device)
        logits, features = self._forward(trainer, x)
        logits, features = logits[:n].float(), features.float()
        ce = F.cross_entropy(logits, y, label_smoothing=trainer.config.label_smoothing)
        if self.lam > 0:
            term = mmd_loss(features[:n], features[n:])
            loss = ce + self.lam * term
        else:
            with torch.no_grad():
                term = mmd_loss(features[:n].detach(), features[n:].detach())
            loss = ce
        return loss, {"n": n, "correct": (logits.detach().argmax(1) == y).sum(), "ce": ce.detach() * n,
                      "mmd": term.detach() * n}

    @torch.inference_mode()
    def _in_eval(self, trainer, source: str, labelled: bool):
        """(mean CE, accuracy, pooled features) on ``source`` in eval mode, without augmentation."""
        model = trainer.model
        was_training = model.training
        model.eval()
        labels = trainer.labels[source]
        total, correct, feats = 0.0, 0, []
        try:
            for start, x in trainer.eval_inputs(source):
                # a pass over every image before the first step, with nothing frozen, took as long as
                # an epoch and ignored Stop
                if trainer.cancelled():
                    raise FitCancelled()
                logits, features = self._forward(trainer, x)
                feats.append(features.float().cpu())
                if labelled:
                    y = labels[start:start + len(x)].to(trainer.device)
                    total += F.cross_entropy(logits.float(), y, reduction="sum").item()
                    correct += (logits.argmax(1) == y).sum().item()
        finally:
            model.train(was_training)
        n = len(labels)
        feats = torch.cat(feats) if feats else None
        if not labelled or n == 0:
            return math.nan, math.nan, feats
        return total / n, correct / n, feats

    def measure(self, trainer) -> dict:
        """Source val (loss, acc), labelled target (loss, acc) and the eval-mode MMD² at the layer."""
        val_loss, val_acc, val_f = self._in_eval(trainer, "val", True) if "val" in trainer.images \
            else (math.nan, math.nan, None)
        _, _, train_f = self._in_eval(trainer, "train", False)
        target_loss, target_acc, target_f = self._in_eval(trainer, "target", self.eval_source == "target")
        if self.eval_source not in (None, "target"):
            target_loss, target_acc, _ = self._in_eval(trainer, self.eval_source, True)
        source_f = torch.cat([train_f] + ([val_f] if val_f is not None else []))
        return {"val_loss": val_loss, "val_acc": val_acc, "target_loss": target_loss, "target_acc": target_acc,
                "layer_mmd": mmd2(source_f, target_f)}

    evaluate = measure

    def epoch_metrics(self, trainer, epoch, sums, measured, seconds, lr):
        n = max(1, sums.get("n", 0))
        return DANEpoch(epoch=epoch, train_loss=sums["loss"] / n, train_acc=sums["correct"] / n,
                        val_loss=measured["val_loss"], val_acc=measured["val_acc"], seconds=seconds, lr=lr,
                        ce=sums["ce"] / n, mmd=sums["mmd"] / n, target_loss=measured["target_loss"],
                        target_acc=measured["target_acc"], layer_mmd=measured["layer_mmd"])

    def teardown(self, trainer) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def fit_dan(model: Classifier, source_train, source_val, target_ds, config: TrainConfig, lam: float,
            layer: str | None = None, callbacks: Sequence[Callback] = (), stop: threading.Event | None = None,
            target_eval=None, *, prefix_cache: dict | None = None, batch_stats: bool = False) -> DANHistory:
    """Train ``model`` in place on labelled ``source_train`` and unlabelled ``target_ds`` (DAN).

    The loss is cross-entropy on the source batch + ``lam`` · multi-kernel MMD^2 between the
    source and target batches' features at ``layer`` (default: the head's input). An epoch is as
    many steps as the larger set needs; the smaller one is cycled. After each epoch the model is
    evaluated on ``source_val``, on the labelled ``target_eval`` when given (its classes must be
    the model's), and the MMD^2 at the layer between all source and all target images is measured
    in eval mode without augmentation (``DANEpoch.layer_mmd``; ``DANHistory.mmd_before`` is the
    same before the first step).

    ``prefix_cache``: a dict shared by runs whose frozen prefix may be identical (the arms of
    :func:`compare_adaptation`): cached activations are keyed by a digest of the prefix's weights
    and of the images, so they are computed once for all of them.

    ``batch_stats=False`` (the default) keeps every BatchNorm layer on its running statistics,
    training only its scale and shift: batches that mix two domains would otherwise normalise
    differently in training than in evaluation (and EfficientNet's BN momentum of 0.01 barely
    moves the running statistics in a short run), so the MMD that training lowers would not be
    the MMD measured afterwards. Frozen groups run in eval mode in any case.
    """
    layer = HEAD_INPUT if layer is None else layer
    data = {"train": source_train, "val": source_val, "target": target_ds}
    eval_source = None
    if target_eval is target_ds:
        eval_source = "target"
    elif target_eval is not None:
        data["target_eval"], eval_source = target_eval, "target_eval"
    objective = DomainAdaptation(lam, layer, batch_stats, eval_source)
    return Trainer(model, objective, config, callbacks, stop, shared_cache=prefix_cache).fit(data)


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

    Both arms start from ``core.models.starting_model`` with ``config.seed``. ``target_eval``
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
        return starting_model(backbone, classes, pretrained=pretrained, seed=config.seed,
                              image_size=config.image_size, head=head)

    started = time.perf_counter()
    model = start()
    check_adaptable(model, config, lam, layer)  # fail before the plain arm has run
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
