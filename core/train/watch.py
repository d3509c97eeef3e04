"""Pinned validation images, recorded at every epoch end: how attention and confidence move in training.

``TrainConfig.watch`` names up to ``MAX_PINS`` validation images; the loop then adds a ``Watch``
callback, which appends to ``History.watch`` one ``WatchFrame`` per epoch and pinned image: the class
probabilities, a Grad-CAM map (``CAM_SIZE``², normalised to a maximum of 1) for the image's own
class at the backbone's default CAM layer, and the maps of the ``CHANNELS`` channels of that layer
whose activations moved most since the fit started.

Cost. The CAM layer's activations of the pinned images are computed once when the fit starts. While
no layer up to the CAM layer has trained yet (feature extraction: never), each epoch reuses them and
runs only the network's tail from that layer on (the layers before it pass a tiny stand-in through,
as the loop's prefix cache does). Once they train, each epoch runs the pinned images through the
model (from the loop's cache of a frozen prefix when there is one), without autograd up to the CAM
layer: the backward pass stops there. Values are rounded (``DIGITS``) so a run's record stays small and equals what the run
folder keeps.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from core.analysis.saliency import default_gradcam_layer
from core.data.encoded import normalise
from core.errors import ConfigError
from core.hooks import capture, modes, preserved, set_modes
from core.train.base import MAX_PINS, Callback, EpochMetrics, FitInfo

__all__ = ["MAX_PINS", "CAM_SIZE", "CHANNELS", "WatchFrame", "Watch", "watch_layer", "check_pins", "cam_movement"]

CAM_SIZE = 14
CHANNEL_SIZE = 7
CHANNELS = 3
DIGITS = 3


@dataclass
class WatchFrame:
    """One pinned validation image at the end of one epoch."""

    epoch: int
    index: int  # the image's position in the validation set
    probs: list[float]  # softmax over the classes (of the watched task)
    cam: list[list[float]]  # Grad-CAM for ``target``, CAM_SIZE x CAM_SIZE, max 1 (all 0 when nothing supports it)
    target: int = 0  # the class the CAM explains: the image's own label
    channels: dict[str, list[list[float]]] = field(default_factory=dict)  # channel -> its map, max |value| 1


def _group_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of every layer group's module but the head's, for ``x``, in one pass (eval mode)."""
    names = [m for g in model.layer_groups[:-1] for m in g.modules]
    outs: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda _m, _a, out, n=n: outs.__setitem__(n, out))
               for n in names]
    try:
        with torch.no_grad(), preserved(model):
            model.eval()
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {n: outs[n] for n in names if n in outs}


def _last_spatial_conv(model: nn.Module, outs: dict[str, torch.Tensor]) -> str | None:
    """Grad-CAM's default layer among ``outs``: the last one holding a Conv2d whose output is spatial."""
    for name in reversed(list(outs)):
        out = outs[name]
        if (isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1
                and any(isinstance(m, nn.Conv2d) for m in model.get_submodule(name).modules())):
            return name
    return None


def watch_layer(model: nn.Module, image_size: int) -> str:
    """The layer a run's pinned images are watched at: the backbone's default Grad-CAM layer (the last
    module holding a convolution whose output is spatial), taken among the layer groups' own modules
    (torchvision's ``features`` is its last stage: the same output, and one the loop can start the
    network's tail from); inside a block only when no group module's output is spatial (tiny inputs)."""
    device = next(model.parameters()).device
    outs = _group_outputs(model, torch.zeros(1, 3, image_size, image_size, device=device))
    return _last_spatial_conv(model, outs) or default_gradcam_layer(model, torch.zeros(3, image_size, image_size))


def check_pins(watch, n_val: int) -> tuple[int, ...]:
    """The pinned validation indices, checked against a validation set of ``n_val`` images."""
    pins = tuple(int(i) for i in watch)
    if len(pins) > MAX_PINS:
        raise ConfigError(f"Pin at most {MAX_PINS} validation images (got {len(pins)}).")
    if len(set(pins)) != len(pins):
        raise ConfigError("Each validation image can be pinned once.")
    bad = [i for i in pins if not 0 <= i < n_val]
    if bad:
        raise ConfigError(f"Pinned image {bad[0]} is not in the validation set, which has {n_val} images "
                          f"(pin 0 to {n_val - 1}).")
    return pins


def _identity(x, *args, **kwargs):
    return x


@contextmanager
def _tail_from(prefix: list[nn.Module], boundary: nn.Module, value, rest: list[nn.Module], replace: bool = True):
    """The model runs only from ``boundary`` on, which returns ``value`` (``replace=False``: computes
    as usual); the ``rest`` runs as it is. Forwards set before (the loop's own prefix cache) are put
    back afterwards, not dropped."""
    saved = [(m, m.__dict__.get("forward")) for m in prefix + [boundary] + rest]
    try:
        for module in rest + [boundary]:
            module.__dict__.pop("forward", None)
        # instance attributes written straight into __dict__: nn.Module.__setattr__'s checks cost
        # more than the network's tail itself, every epoch
        for module in prefix:
            module.__dict__["forward"] = _identity
        if replace:
            boundary.__dict__["forward"] = lambda *args, **kwargs: value
        yield
    finally:
        for module, forward in saved:
            if forward is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = forward


@contextmanager
def _grad_from(module: nn.Module, box: list):
    """Autograd off up to ``module``, on from its output (a leaf put in ``box``) to the logits."""
    def hook(_module, _args, out):
        leaf = out.detach().float().requires_grad_(True)
        box.append(leaf)
        torch.set_grad_enabled(True)
        return leaf

    before = torch.is_grad_enabled()
    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            yield
    finally:
        handle.remove()
        torch.set_grad_enabled(before)


def _resize(maps: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


def _rounded(t: torch.Tensor) -> list:
    return torch.round(t.detach().float().cpu(), decimals=DIGITS).tolist()


class Watch(Callback):
    """Records ``History.watch`` for the fit's ``config.watch`` (see the module docstring)."""

    def __init__(self, pins, task: str = ""):
        self.pins, self.task = tuple(pins), task

    def on_fit_start(self, info: FitInfo) -> None:
        t = self.trainer
        model = t.model
        self.pins = check_pins(self.pins, len(t.images.get("val", ())))
        tasks = list(getattr(model, "tasks", None) or [])
        if tasks and self.task and self.task not in tasks:
            raise ConfigError(f"Unknown task {self.task!r} for the pinned images: choose one of {', '.join(tasks)}.")
        self.task_index = tasks.index(self.task or tasks[0]) if tasks else None
        idx = torch.tensor(self.pins, dtype=torch.long)
        labels = t.labels["val"][idx]
        self.targets = (labels[:, self.task_index] if self.task_index is not None else labels).tolist()
        self.idx = idx
        self.x = normalise(t.images["val"][idx].to(t.device), t.mean, t.std)
        # one pass finds the layer and keeps its activations (reused while nothing up to it trains)
        outs = _group_outputs(model, self.x)
        self.layer = _last_spatial_conv(model, outs)
        if self.layer is None:
            self.layer = default_gradcam_layer(model, self.x[0])
            with torch.no_grad(), preserved(model):
                model.eval()
                outs[self.layer] = capture(model, self.layer, self.x)
        self.module = model.get_submodule(self.layer)
        self.start = outs[self.layer].float()
        self._tail = None  # (leaf, the head's input computed from it), kept while the body is frozen
        self._still = None  # the channels' maps while they cannot move
        self._map_modules(model)

    def _map_modules(self, model: nn.Module) -> None:
        """Which groups lead up to the watched layer, and the group modules before and after it."""
        order = [m for g in model.layer_groups for m in g.modules]
        names = [g.name for g in model.layer_groups]
        holder = next((g.name for g in model.layer_groups
                       if any(self.layer == m or self.layer.startswith(m + ".") for m in g.modules)), names[-1])
        self.groups_to_cam = names[:names.index(holder) + 1]
        # the tail can start at a layer group's own module only (small inputs: the default CAM layer
        # may sit inside a block); elsewhere every epoch runs the whole model
        position = order.index(self.layer) if self.layer in order else None
        self.prefix = [model.get_submodule(m) for m in order[:position]] if position is not None else None
        self.rest = [model.get_submodule(m) for m in order[position + 1:]] if position is not None else []
        self.all_modules = [model.get_submodule(m) for m in order if m != self.layer]
        self.modules = [m for m, _ in modes(model)]

    def _frozen_so_far(self, epoch: int, groups=None) -> bool:
        """No layer up to the CAM layer (or of ``groups``) has trained in epochs 1..epoch: its
        activations are the start's."""
        plan = self.trainer.plan[:epoch]
        groups = self.groups_to_cam if groups is None else groups
        return self.prefix is not None and all(e.get(g, 0) == 0 for e in plan for g in groups)

    def _head_only(self, epoch: int):
        """With the whole body frozen so far: the pinned images' CAM-layer activations were computed
        once; each epoch runs the tail from there (a few layers, on the pins alone) and the head.

        The tail's graph is built anew each epoch rather than kept: a kept graph saved frozen tensors
        (BatchNorm's) that the loop may update in place between epochs, and autograd then refused it."""
        t = self.trainer
        self._tail = None
        if self._tail is None:
            leaf = self.start.clone().requires_grad_(True)
            stand_in = torch.zeros(len(leaf), 3, 8, 8, device=t.device)
            with torch.enable_grad(), _tail_from(self.prefix, self.module, leaf, self.rest):
                self._tail = (leaf, capture(t.model, t.model.head_path[0], stand_in, where="input"))
        leaf, features = self._tail
        with torch.enable_grad():
            return self._logits(t.model.forward_head(features)), leaf

    def _logits(self, out):
        if isinstance(out, dict):
            out = list(out.values())[self.task_index or 0]
        return out.float()

    def _forward(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, CAM-layer activations as a leaf with autograd from it to the logits)."""
        t = self.trainer
        body = [g.name for g in t.model.layer_groups[:-1]]
        if hasattr(t.model, "forward_head") and self._frozen_so_far(epoch, body):
            return self._head_only(epoch)
        self._tail = None
        if self._frozen_so_far(epoch):
            leaf = self.start.clone().requires_grad_(True)
            stand_in = torch.zeros(len(leaf), 3, 8, 8, device=t.device)
            with torch.enable_grad(), _tail_from(self.prefix, self.module, leaf, self.rest):
                return self._logits(t.model(stand_in)), leaf
        box: list[torch.Tensor] = []
        if t.cache_mode == "prefix" and self.module not in t.prefix_modules and self.module is not t.boundary:
            # the loop's cache of the frozen prefix holds the pinned images' activations too: run the rest
            x = t.plain_inputs("val", self.idx)
            x = x.clone() if x.is_inference() else x
            with _grad_from(self.module, box):
                out = t.logits(x)
        else:  # the whole model, as it is now: the loop's prefix cache (if any) is set aside for the pass
            with _tail_from([], self.module, None, self.all_modules, replace=False), _grad_from(self.module, box):
                out = t.model(self.x)
        if not box:
            raise RuntimeError(f"The watched layer {self.layer} did not run")
        return self._logits(out), box[0]

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        t = self.trainer
        # every module in eval mode for the pass, then as it was: flags set directly (see
        # core.hooks.set_modes), as Module.train()'s recursion cost more than the tail's pass
        saved = [(m, m.training) for m in self.modules]
        set_modes([(m, False) for m in self.modules])
        try:
            logits, act = self._forward(metrics.epoch)
            target = torch.tensor(self.targets, device=logits.device).clamp_min(0)
            score = logits.gather(1, target[:, None]).sum()
            grad, = torch.autograd.grad(score, act, retain_graph=self._tail is not None)
        finally:
            set_modes(saved)
        act, grad = act.detach(), grad.detach()
        cam = F.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
        cam = _resize(cam, CAM_SIZE)[:, 0]
        cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        cam = torch.nan_to_num(cam, nan=0.0)
        probs = torch.softmax(logits.detach(), 1)
        if self._frozen_so_far(metrics.epoch):  # the maps cannot have moved: rounded once
            self._still = self._still or {str(c): [_rounded(m) for m in maps]
                                          for c, maps in self._moved_channels(act).items()}
            channels = self._still
        else:
            channels = {str(c): [_rounded(m) for m in maps] for c, maps in self._moved_channels(act).items()}
        for i, index in enumerate(self.pins):
            t.history.watch.append(WatchFrame(
                epoch=metrics.epoch, index=index, probs=_rounded(probs[i]), cam=_rounded(cam[i]),
                target=int(self.targets[i]),
                channels={c: maps[i] for c, maps in channels.items()}))

    def _moved_channels(self, act: torch.Tensor) -> dict[int, torch.Tensor]:
        """The CHANNELS channels whose activations moved most since the start (the most active when
        none moved), each as small maps scaled to a largest |value| of 1."""
        moved = (act - self.start).abs().mean((0, 2, 3))
        ranking = moved if float(moved.max()) > 0 else act.abs().mean((0, 2, 3))
        chosen = ranking.topk(min(CHANNELS, len(ranking))).indices.tolist()
        out = {}
        for c in chosen:
            maps = _resize(act[:, c:c + 1], CHANNEL_SIZE)[:, 0]
            out[c] = maps / maps.abs().amax().clamp_min(1e-12)
        return out


def cam_movement(frames: list[WatchFrame] | list[dict]) -> float:
    """How far the pinned images' CAMs moved from the first recorded epoch to the last: the mean
    over pins of 1 − the correlation of the two maps (0: unchanged, 1: unrelated, 2: opposite)."""
    frames = [f if isinstance(f, dict) else f.__dict__ for f in frames]
    if not frames:
        return 0.0
    first, last = min(f["epoch"] for f in frames), max(f["epoch"] for f in frames)
    start = {f["index"]: f["cam"] for f in frames if f["epoch"] == first}
    moves = []
    for f in frames:
        if f["epoch"] != last or f["index"] not in start:
            continue
        a, b = torch.tensor(start[f["index"]]).flatten(), torch.tensor(f["cam"]).flatten()
        a, b = a - a.mean(), b - b.mean()
        denom = float(a.norm() * b.norm())
        moves.append(0.0 if denom == 0 and torch.equal(a, b) else 1.0 - (float(a @ b) / denom if denom else 0.0))
    return sum(moves) / len(moves) if moves else 0.0
