"""Few-shot transfer: N-way K-shot episodes, MAML done right, and the baselines that beat it.

An episode draws ``n_way`` classes, ``k_shot`` labelled images of each (the support set) and
``n_query`` more of each to score (the query set). Base classes are for meta-training, novel
classes for evaluation, and no episode mixes them. Methods, all scored on the same episodes:

- ``"prototypes"``: nearest class mean of the pretrained pooled features (Snell et al. 2017);
  no training at all.
- ``"linear"``: a logistic regression per episode on the pretrained features (Tian et al. 2020,
  "a good embedding is all you need").
- ``"maml"`` / ``"fomaml"``: MAML (Finn et al. 2017), second order through the inner steps, or
  first order; meta-trained on the base classes by the one training loop (:class:`Episodic`).
  On CPU they adapt the top of the network only by default (``MetaConfig.adapt_groups``).
- ``"anil"``: the inner loop adapts the head alone, the body stays frozen and its features are
  cached (Raghu et al. 2020).
- ``"scratch"``: the same network from random weights, with the per-episode linear classifier:
  the floor that shows what pretraining brings.

``adapt`` differentiates through its inner steps with ``torch.autograd.grad(create_graph=True)``,
so a query loss back-propagates to the starting weights (the slide's sketch did not: without
``create_graph`` it is first-order MAML at best).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from core.cache import FeatureCache
from core.data.encoded import encode_images, normalise
from core.errors import ConfigError
from core.hooks import capture, preserved
from core.methods.episodes import ClassSplit, Episode, sample_episodes, split_classes
from core.models import backbones
from core.models.heads import Classifier, classifier
from core.seeding import seeded
from core.train.base import TrainConfig
from core.train.caches import prefix_key, skip_prefix
from core.train.loop import Trainer
from core.train.objectives import Objective

__all__ = [
    "METHODS",
    "META_METHODS",
    "DEFAULT_IMAGE_SIZE",
    "FewShotResult",
    "MetaConfig",
    "Episodic",
    "forward_with",
    "adapt",
    "meta_config",
    "few_shot_model",
    "meta_train",
    "pooled_features",
    "evaluate",
    "predict_episode",
    "meta_train_config",
    "encoded_subset",
]

METHODS = ("prototypes", "linear", "maml", "fomaml", "anil", "scratch")
META_METHODS = ("maml", "fomaml", "anil")
DEFAULT_IMAGE_SIZE = 64  # Lite0 still separates the demo's shapes and colours here, at a tenth of 224's cost



# --- the inner loop ------------------------------------------------------------------------------


class _Calling(nn.Module):
    """``model`` registered as a child, run through ``call`` (e.g. the loop's ``trainer.logits``,
    which feeds cached activations past frozen layers), so functional_call can swap its parameters."""

    def __init__(self, model: nn.Module, call: Callable):
        super().__init__()
        self.model = model
        self.call = call

    def forward(self, x):
        return self.call(x)


def forward_with(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, *,
                 call: Callable | None = None) -> torch.Tensor:
    """The model's output with ``params`` in place of its own parameters of those names (others,
    and every buffer, kept). ``call``: what runs the model (default: ``model`` itself)."""
    if call is None:
        return functional_call(model, params, (x,))
    return functional_call(_Calling(model, call), {f"model.{k}": v for k, v in params.items()}, (x,))


def adapt(model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor, inner_lr: float, steps: int,
          first_order: bool = False, params: dict[str, torch.Tensor] | None = None, *,
          call: Callable | None = None) -> dict[str, torch.Tensor]:
    """The parameters after ``steps`` gradient steps of cross-entropy on the support set.

    With ``first_order=False`` they stay differentiable with respect to the starting parameters
    (second-order MAML: the query loss back-propagates through every inner step); with
    ``first_order=True`` the inner gradients are constants. ``params``: where to start and what to
    adapt (default: every parameter of ``model`` that requires grad).
    """
    if params is None:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ConfigError("Nothing to adapt: every parameter is frozen.")
    # a start that carries no graph (evaluation) still needs gradients for its inner steps
    params = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in params.items()}
    names = list(params)
    with torch.enable_grad():
        for _ in range(int(steps)):
            loss = F.cross_entropy(forward_with(model, params, support_x, call=call).float(), support_y)
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=not first_order)
            params = {n: params[n] - inner_lr * (g.detach() if first_order else g) for n, g in zip(names, grads, strict=True)}
    return params


# --- meta-training, an objective of the one loop -----------------------------------------------------


@dataclass
class MetaConfig:
    """How a meta-learned method trains on base classes and adapts on novel ones."""

    epochs: int = 1
    episodes: int = 100  # per epoch
    episodes_per_batch: int = 4  # episodes averaged into one outer step
    n_query: int = 5  # queries per class while meta-training
    meta_lr: float = 1e-3
    inner_lr: float = 0.01
    inner_steps: int = 3  # while meta-training
    test_steps: int = 10  # when adapting to a novel episode
    first_order: bool = False
    adapt_groups: int | None = 1  # the top layer groups the inner loop adapts (1: the head); None: all
    inner: str = "all"  # "all": the inner loop adapts every trainable group; "head": the head alone (ANIL)
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = 0
    val_episodes: int = 20  # novel-class episodes scored after each epoch, when novel images are given


def meta_config(method: str, **overrides) -> MetaConfig:
    """Each meta-learned method's defaults, sized for a CPU.

    MAML's second-order step through the whole of Lite0 takes minutes per episode on a shared
    2-core CPU, so "maml" and "fomaml" adapt the top of the body and the head (the last two layer
    groups) by default, with one inner step while meta-training; ``adapt_groups=None`` adapts
    everything (fine on a GPU). ANIL adapts the head on cached features, so it can afford more.
    """
    if method not in META_METHODS:
        raise ConfigError(f"{method!r} is not meta-learned; choose one of {', '.join(META_METHODS)}.")
    if method == "anil":
        base = dict(inner="head", adapt_groups=1, inner_steps=5, test_steps=10)
    else:
        base = dict(inner="all", adapt_groups=2, inner_steps=1, test_steps=5, first_order=method == "fomaml",
                    episodes=20)
    return MetaConfig(**{**base, **overrides})


class Episodic(Objective):
    """Meta-training: a batch is a few episodes of the training set's classes, the loss is their
    mean query loss after :func:`adapt` on the support, and the loop's one ``backward()`` makes
    the outer step (through the inner steps unless first order)."""

    title = "Meta-training"

    def __init__(self, n_way: int, k_shot: int, config: MetaConfig):
        self.n_way, self.k_shot, self.meta = n_way, k_shot, config

    def check(self, model, data, config) -> None:
        head = model.get_classifier()
        outputs = head.out_features if isinstance(head, nn.Linear) else head[-1].out_features
        if outputs != self.n_way:
            raise ConfigError(f"Meta-training {self.n_way}-way episodes needs a head with {self.n_way} outputs, "
                              f"not {outputs}: reset the classifier first.")
        labels = data["train"].labels if hasattr(data["train"], "labels") else [y for _, y in data["train"]]
        # fails now, with a message, rather than in the first batch
        sample_episodes(labels, sorted(set(labels)), self.n_way, self.k_shot, self.meta.n_query, 1,
                        names=getattr(data["train"], "classes", None))
        if data.get("val") is not None and self.meta.val_episodes:
            novel = data["val"].labels if hasattr(data["val"], "labels") else [y for _, y in data["val"]]
            sample_episodes(novel, sorted(set(novel)), self.n_way, self.k_shot, self.meta.n_query, 1,
                            names=getattr(data["val"], "classes", None))

    def steps_per_epoch(self, trainer) -> int:
        return math.ceil(self.meta.episodes / self.meta.episodes_per_batch)

    def on_epoch_start(self, trainer, epoch: int) -> None:
        # an episode holds a handful of images: their batch statistics are noise, so BatchNorm keeps
        # the pretrained running statistics (and dropout stays off) in the inner and outer loops alike
        trainer.model.eval()

    def batches(self, trainer, epoch: int):
        labels = trainer.labels["train"].numpy()
        seed = hash((trainer.config.seed, epoch)) & 0x7FFFFFFF
        episodes = sample_episodes(labels, sorted(set(labels.tolist())), self.n_way, self.k_shot,
                                   self.meta.n_query, self.meta.episodes, seed)
        per = self.meta.episodes_per_batch
        for b in range(0, len(episodes), per):
            yield episodes[b:b + per], seed + b

    def inner_params(self, model: Classifier) -> dict[str, torch.Tensor]:
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if self.meta.inner == "head":
            head = {id(p) for m in model.head_path for p in model.get_submodule(m).parameters()}
            trainable = {n: p for n, p in trainable.items() if id(p) in head}
        return trainable

    def loss(self, trainer, batch):
        episodes, seed = batch
        model, device, meta = trainer.model, trainer.device, self.meta
        params = self.inner_params(model)
        total, correct, count = 0.0, 0, 0
        for i, ep in enumerate(episodes):
            xs = trainer.inputs("train", torch.as_tensor(ep.support), seed + 2 * i)
            xq = trainer.inputs("train", torch.as_tensor(ep.query), seed + 2 * i + 1)
            ys = torch.as_tensor(ep.support_y, device=device)
            yq = torch.as_tensor(ep.query_y, device=device)
            adapted = adapt(model, xs, ys, meta.inner_lr, meta.inner_steps, meta.first_order, params,
                            call=trainer.logits)
            logits = forward_with(model, adapted, xq, call=trainer.logits).float()
            total = total + F.cross_entropy(logits, yq)
            correct += (logits.detach().argmax(1) == yq).sum()
            count += len(yq)
        return total / len(episodes), {"n": count, "correct": correct}

    def evaluate(self, trainer) -> dict:
        """Mean query loss and accuracy on the same ``val_episodes`` episodes of the "val" dataset
        (novel classes) after ``test_steps`` inner steps, as when the model is scored later."""
        meta = self.meta
        if "val" not in trainer.images or not meta.val_episodes:
            return {"val_loss": math.nan, "val_acc": math.nan}
        model, device = trainer.model, trainer.device
        labels = trainer.labels["val"].numpy()
        episodes = sample_episodes(labels, sorted(set(labels.tolist())), self.n_way, self.k_shot, meta.n_query,
                                   meta.val_episodes, seed=trainer.config.seed + 1)
        start = {n: p.detach() for n, p in self.inner_params(model).items()}
        losses, accs = [], []
        with preserved(model):
            model.eval()
            for ep in episodes:
                xs = trainer.plain_inputs("val", torch.as_tensor(ep.support))
                xq = trainer.plain_inputs("val", torch.as_tensor(ep.query))
                ys = torch.as_tensor(ep.support_y, device=device)
                yq = torch.as_tensor(ep.query_y, device=device)
                adapted = adapt(model, xs, ys, meta.inner_lr, meta.test_steps, True, start, call=trainer.logits)
                with torch.no_grad():
                    logits = forward_with(model, {n: p.detach() for n, p in adapted.items()}, xq,
                                          call=trainer.logits).float()
                losses.append(float(F.cross_entropy(logits, yq)))
                accs.append(float((logits.argmax(1) == yq).float().mean()))
        return {"val_loss": float(np.mean(losses)), "val_acc": float(np.mean(accs))}


def few_shot_model(backbone_or_model, n_way: int, image_size: int = DEFAULT_IMAGE_SIZE, *, pretrained: bool = True,
                   seed: int = 0) -> Classifier:
    """A fresh classifier with an ``n_way`` head (a copy: the argument is never changed); with
    ``pretrained=False`` every weight is re-initialised (the "scratch" floor)."""
    with seeded(seed):
        if isinstance(backbone_or_model, Classifier):
            model = copy.deepcopy(backbone_or_model)
            model.reset_classifier([f"way {i + 1}" for i in range(n_way)])
            model.image_size = int(image_size)
        elif isinstance(backbone_or_model, backbones.Backbone):
            model = classifier(backbone_or_model, n_way, classes=[f"way {i + 1}" for i in range(n_way)],
                               image_size=int(image_size))
        else:
            raise ConfigError("Few-shot evaluation needs a backbone (core.models.load) or a Classifier.")
        if not pretrained:
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            model.pretrained = False
    return model.eval()


def _frozen_groups(model: Classifier, config: MetaConfig) -> list[str]:
    return _frozen_names([g.name for g in model.layer_groups], config)


def _frozen_names(names: list[str], config: MetaConfig) -> list[str]:
    if config.adapt_groups is None:
        return []
    if not 1 <= config.adapt_groups <= len(names):
        raise ConfigError(f"adapt_groups must be between 1 and {len(names)} (or None for all).")
    return names[:len(names) - config.adapt_groups]


def meta_train_config(group_names: list[str], config: MetaConfig) -> TrainConfig:
    # early_stopping=0: it would keep the weights with the best novel-class loss, choosing the
    # model on the very classes it is scored on
    return TrainConfig(epochs=config.epochs, batch_size=64, lr=config.meta_lr, freeze=_frozen_names(group_names, config),
                       seed=config.seed, optimizer="adamw", weight_decay=0.0, schedule="constant", augment=False,
                       image_size=config.image_size, cached_views=1, early_stopping=0)


def meta_train(model: Classifier, base_ds, n_way: int, k_shot: int, config: MetaConfig, callbacks=(), stop=None,
               novel_ds=None):
    """Meta-train ``model`` (its head has ``n_way`` outputs) in place on episodes of ``base_ds``;
    returns the loop's History (train_acc: query accuracy after adaptation; with ``novel_ds``,
    val_acc: accuracy on ``config.val_episodes`` episodes of its classes after each epoch)."""
    train = meta_train_config([g.name for g in model.layer_groups], config)
    data = {"train": base_ds} if novel_ds is None else {"train": base_ds, "val": novel_ds}
    return Trainer(model, Episodic(n_way, k_shot, config), train, callbacks, stop,
                   validate=novel_ds is not None).fit(data)


# --- evaluation ------------------------------------------------------------------------------


@dataclass
class FewShotResult:
    """Query accuracy over episodes: ``mean``, ``ci95`` (half-width of the 95 % interval),
    ``per_episode``; meta-learned methods add ``curve``, the mean query accuracy after 0, 1, …
    inner steps."""

    method: str
    n_way: int
    k_shot: int
    mean: float
    ci95: float
    per_episode: np.ndarray
    curve: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _summary(method: str, n_way: int, k_shot: int, accs, curve=()) -> FewShotResult:
    accs = np.asarray(accs, dtype=float)
    ci = 1.96 * accs.std(ddof=1) / math.sqrt(len(accs)) if len(accs) > 1 else math.nan
    return FewShotResult(method, n_way, k_shot, float(accs.mean()), float(ci), accs, list(curve))


_FEATURES = FeatureCache(max_items=8)  # a few recent feature tables: every method of a comparison shares one


def encoded_subset(ds, indices: np.ndarray, size: int) -> torch.Tensor:
    return encode_images(ds.subset(indices.tolist()) if hasattr(ds, "subset") else [ds[i] for i in indices], size)


@torch.inference_mode()
def _activations(model: Classifier, images: torch.Tensor, module: str, where: str, batch_size: int = 100):
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    with preserved(model):
        model.eval()
        return torch.cat([capture(model, module, normalise(images[s:s + batch_size], mean, std), where).float()
                          for s in range(0, len(images), batch_size)])


def pooled_features(model: Classifier, ds, indices: Sequence[int],
                    image_size: int = DEFAULT_IMAGE_SIZE) -> torch.Tensor:
    """The pooled features the head reads, for images ``indices`` of ``ds``, in eval mode (memoised)."""
    indices = np.asarray(indices)
    key = (prefix_key([model]), getattr(ds, "fingerprint", id(ds)), int(image_size), indices.tobytes())
    return _FEATURES.get_or_compute(
        key, lambda: _activations(model, encoded_subset(ds, indices, image_size), model.head_path[0], "input"))


def _prototypes(fs, ys, fq, n_way) -> np.ndarray:
    fs, fq = F.normalize(fs, dim=1), F.normalize(fq, dim=1)
    centres = torch.stack([fs[ys == c].mean(0) for c in range(n_way)])
    return torch.cdist(fq, centres).argmin(1).numpy()


def _linear(fs, ys, fq, n_way) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    fs, fq = F.normalize(fs, dim=1).numpy(), F.normalize(fq, dim=1).numpy()
    return LogisticRegression(max_iter=1000).fit(fs, ys.numpy()).predict(fq)


_CLASSIFIERS = {"prototypes": _prototypes, "linear": _linear, "scratch": _linear}


class _Adapter:
    """A meta-trained model ready to adapt to novel episodes: the frozen part below the adapted
    groups is computed once per image, and each episode runs only the rest."""

    def __init__(self, model: Classifier, config: MetaConfig, ds, indices: np.ndarray):
        self.model, self.config = model, config
        frozen = _frozen_groups(model, config)
        self.positions = {int(i): k for k, i in enumerate(indices)}
        images = lambda: encoded_subset(ds, indices, config.image_size)  # noqa: E731
        self.stash: dict = {}
        adapted = [g for g in model.layer_groups if g.name not in frozen]
        if config.inner == "head":
            adapted = adapted[-1:]
        self.names = [n for g in adapted for m in g.modules for n, _ in model.get_submodule(m).named_parameters(
            prefix=m)]
        if frozen:
            prefix = [g for g in model.layer_groups if g.name in frozen]
            boundary = prefix[-1].modules[-1]
            modules = [model.get_submodule(m) for g in prefix for m in g.modules]
            key = (prefix_key(modules), boundary, getattr(ds, "fingerprint", id(ds)), config.image_size,
                   indices.tobytes())
            self.inputs = _FEATURES.get_or_compute(key, lambda: _activations(model, images(), boundary, "output"))
            self.skip = lambda: skip_prefix([model.get_submodule(m) for g in prefix for m in g.modules
                                             if m != boundary], model.get_submodule(boundary), self.stash)
            self.call = self._through_cache
        else:
            mean = torch.tensor(model.mean).view(1, 3, 1, 1)
            std = torch.tensor(model.std).view(1, 3, 1, 1)
            self.inputs = normalise(images(), mean, std)
            self.skip, self.call = nullcontext, None

    def _through_cache(self, x: torch.Tensor) -> torch.Tensor:
        self.stash["x"] = x
        return self.model(torch.zeros(len(x), 3, 8, 8))

    def predictions(self, ep: Episode, steps: int) -> list[torch.Tensor]:
        """The queries' predicted ways after 0, 1, …, ``steps`` inner steps from the meta-learned start."""
        model, cfg = self.model, self.config
        rows = lambda idx: self.inputs[[self.positions[int(i)] for i in idx]]  # noqa: E731
        xs, xq = rows(ep.support), rows(ep.query)
        ys = torch.as_tensor(ep.support_y)
        own = dict(model.named_parameters())
        params = {n: own[n].detach() for n in self.names}
        out = []
        with preserved(model), self.skip():
            model.eval()
            for step in range(steps + 1):
                if step:
                    params = {n: p.detach() for n, p in adapt(model, xs, ys, cfg.inner_lr, 1, True, params,
                                                               call=self.call).items()}
                with torch.no_grad():
                    out.append(forward_with(model, params, xq, call=self.call).argmax(1))
        return out

    def curve(self, ep: Episode, steps: int) -> list[float]:
        """Query accuracy after 0, 1, …, ``steps`` inner steps from the meta-learned start."""
        yq = torch.as_tensor(ep.query_y)
        return [float((pred == yq).float().mean()) for pred in self.predictions(ep, steps)]


def evaluate(backbone_or_model, dataset, method: str, n_way: int, k_shot: int, n_query: int = 15,
             episodes: int = 200, seed: int = 0, *, split: ClassSplit | None = None,
             image_size: int = DEFAULT_IMAGE_SIZE, meta: MetaConfig | None = None,
             meta_model: Classifier | None = None) -> FewShotResult:
    """Mean query accuracy of ``method`` over ``episodes`` N-way K-shot episodes of the novel classes.

    Args:
        backbone_or_model: a ``Backbone`` (``core.models.load()``) or a ``Classifier``; never changed.
        split: base and novel classes (default: half of the classes at random, from ``seed``).
        meta: the meta-learned methods' settings (default ``meta_config(method)``).
        meta_model: an already meta-trained model (its head ``n_way`` wide) instead of training one.
    """
    if method not in METHODS:
        raise ConfigError(f"Unknown few-shot method {method!r}: use one of {', '.join(METHODS)}.")
    started = time.perf_counter()
    classes = list(dataset.classes)
    split = split or split_classes(classes, seed=seed)
    novel_ids = [classes.index(c) for c in split.novel]
    labels = np.asarray(dataset.labels)
    tasks = sample_episodes(labels, novel_ids, n_way, k_shot, n_query, episodes, seed, names=classes)
    # every image of the novel classes, not only those drawn: other episode counts share the features
    used = np.flatnonzero(np.isin(labels, novel_ids))
    position = {int(i): k for k, i in enumerate(used)}
    rows = lambda idx: [position[int(i)] for i in idx]  # noqa: E731
    accs, curves = [], []
    if method in ("prototypes", "linear", "scratch"):
        model = few_shot_model(backbone_or_model, n_way, image_size, pretrained=method != "scratch", seed=seed)
        feats = pooled_features(model, dataset, used, image_size)
        classify = _CLASSIFIERS[method]
        for t in tasks:
            pred = classify(feats[rows(t.support)], torch.as_tensor(t.support_y), feats[rows(t.query)], n_way)
            accs.append(float((np.asarray(pred) == t.query_y).mean()))
    else:
        config = meta or meta_config(method)
        if meta_model is None:
            meta_model = few_shot_model(backbone_or_model, n_way, config.image_size, seed=seed)
            base_ids = [i for i, y in enumerate(labels) if classes[y] in split.base]
            meta_train(meta_model, dataset.subset(base_ids), n_way, k_shot, config)
        adapter = _Adapter(meta_model, config, dataset, used)
        for t in tasks:
            curve = adapter.curve(t, config.test_steps)
            curves.append(curve)
            accs.append(curve[-1])
    result = _summary(method, n_way, k_shot, accs, np.mean(curves, axis=0).tolist() if curves else ())
    result.seconds = time.perf_counter() - started
    return result


def predict_episode(backbone_or_model, dataset, episode: Episode, method: str, *,
                    image_size: int = DEFAULT_IMAGE_SIZE, meta: MetaConfig | None = None,
                    meta_model: Classifier | None = None, seed: int = 0) -> np.ndarray:
    """Each query image's predicted way (0..N-1, as in ``episode.query_y``) by ``method``, on one episode.

    Works like :func:`evaluate` on that episode alone; a meta-learned method needs its
    ``meta_model`` (meta-trained with ``meta``, default ``meta_config(method)``): adapting starts there.
    """
    if method not in METHODS:
        raise ConfigError(f"Unknown few-shot method {method!r}: use one of {', '.join(METHODS)}.")
    n_way = len(episode.classes)
    used = np.unique(np.concatenate([episode.support, episode.query]))
    if method in META_METHODS:
        if meta_model is None:
            raise ConfigError(f"{method} predicts only once it is meta-trained: meta-train it on the base classes first.")
        config = meta or meta_config(method)
        return _Adapter(meta_model, config, dataset, used).predictions(episode, config.test_steps)[-1].numpy()
    model = few_shot_model(backbone_or_model, n_way, image_size, pretrained=method != "scratch", seed=seed)
    feats = pooled_features(model, dataset, used, image_size)
    position = {int(i): k for k, i in enumerate(used)}
    rows = lambda idx: [position[int(i)] for i in idx]  # noqa: E731
    pred = _CLASSIFIERS[method](feats[rows(episode.support)], torch.as_tensor(episode.support_y),
                                feats[rows(episode.query)], n_way)
    return np.asarray(pred)
