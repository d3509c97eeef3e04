"""The one training loop: ``Trainer(model, objective, config, callbacks).fit(data)``.

Every kind of training (classification, DAN, distillation, the learning-rate sweep, multi-task,
episodic) runs here. The loop owns what they share: encoding the images, the epoch plan of
trainable groups, the feature caches, the optimizer, scheduler and mixed-precision scaler, the one
``backward()``, cancellation, the divergence guard, progress, and one retry at half the batch
after running out of GPU memory. An :class:`~core.train.objectives.Objective` says what a batch
is and what its loss is; callbacks (fastai's idea) do everything else that varies.

Feature caches: layer groups that never train are computed once (``core.train.caches``).

The head's warm-up (linear probing, then fine-tuning: Kumar et al. 2022, "LP-FT"). With
``config.warmup_epochs`` the new head trains alone first. While it does, the body is frozen, so
the warm-up trains on the head cache too (when the cache is allowed) and its epochs cost
milliseconds: it can run until the head has converged. Early stopping ends the warm-up (not the
fit) once the validation loss stops improving, puts back the best head, and the fine-tuning
epochs follow at once, with a fresh learning-rate schedule of their own and the full network
(:meth:`Trainer.end_warmup`). A random head would otherwise send large, noisy gradients into the
pretrained layers and wreck the features it should adapt.

Data parallel. With ``distributed=`` a :class:`~core.train.distributed.Distributed` context (one
rank of a ``torchrun`` job), :meth:`Trainer.shuffled` hands each rank its share of every global
batch, the model's entry points run through DistributedDataParallel, BatchNorm keeps its running
statistics, caches are computed in shares, and losses, sums and cancellation are agreed across
ranks; see that module. Without it, none of this runs.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import replace

import torch
from torch import nn

from core.data.encoded import encode_images, normalise
from core.devices import autocast_dtype, pick_device
from core.errors import UserInputError
from core.hooks import modes, preserved, set_modes
from core.seeding import reseed, seeded
from core.train.base import (
    BatchProgress,
    Callback,
    FitCancelled,
    FitInfo,
    History,
    TrainConfig,
    apply_epoch_plan,
    augment_batch,
    build_param_groups,
    config_augmenter,
    make_optimizer,
    make_scheduler,
    training_plan,
)
from core.train.caches import FeatureCaching, skip_prefix
from core.train.callbacks import DivergenceGuard, EarlyStopping
from core.train.watch import Watch

__all__ = ["Trainer"]


class Trainer(FeatureCaching):
    """Trains ``model`` in place with ``objective``; see the module docstring."""

    # how many epochs a joining group's rate takes to ramp up (bench/bench_join.py tries longer
    # ramps: they delay the validation loss's jump to the epoch the full rate arrives, not remove it)
    ramp_epochs = 1.0

    def __init__(self, model: nn.Module, objective, config: TrainConfig, callbacks: Sequence[Callback] = (),
                 stop=None, *, validate: bool = True, guard: bool = True, shared_cache: dict | None = None,
                 distributed=None):
        self.model = model
        self.dist, self._ddp, self._all_cancelled = distributed, None, False
        self.objective = objective
        self.config = config
        self.validate = validate
        self.stop_event = stop
        self.shared_cache = shared_cache if shared_cache is not None else {}
        stopping = [EarlyStopping(config.early_stopping)] if config.early_stopping and validate else []
        # after the guard (a diverged epoch's weights are put back first), before the caller's callbacks
        # (a run's recorder sees the epoch's frames)
        watching = [Watch(config.watch, config.watch_task)] if config.watch and validate else []
        self.callbacks = ([DivergenceGuard(objective.title)] if guard else []) + stopping + watching + list(callbacks)

    # --- what objectives and callbacks use ----------------------------------------------------

    def request_stop(self, reason: str, message: str = "") -> None:
        """End the fit after the current batch; ``reason`` becomes ``History.stopped``."""
        if self.stop_reason in (None, "cancelled") or reason == "diverged":
            self.stop_reason, self.stop_message = reason, message or self.stop_message

    def cancelled(self) -> bool:
        if self.dist is not None:  # what every rank agreed at the last step: they stop together
            return self._all_cancelled
        return self.stop_event is not None and self.stop_event.is_set()

    def batches_for(self, source: str, batch_size: int | None = None) -> int:
        """Steps in one pass over ``source``; a last batch of one image is dropped (it breaks BatchNorm)."""
        n, bs = len(self.images[source]), batch_size or self.config.batch_size
        # under DDP every rank needs at least one image of the last batch
        smallest = max(2, self.dist.world_size) if self.dist is not None else 2
        return n // bs if 0 < n % bs < smallest and n > 1 else math.ceil(n / bs)

    def shuffled(self, source: str) -> Iterator[torch.Tensor]:
        """One epoch of shuffled index batches over ``source``."""
        bs = self.config.batch_size
        order = torch.randperm(len(self.images[source]), generator=self.generator)
        for b in range(self.batches_for(source)):
            idx = order[b * bs:(b + 1) * bs]
            yield idx if self.dist is None else self.dist.shard(idx)

    def inputs(self, source: str, idx: torch.Tensor, seed: int) -> torch.Tensor:
        """The model's input for images ``idx`` of ``source``: one of each image's cached augmented
        views drawn at random, or the images augmented now and normalised."""
        return self.inputs_and_views(source, idx, seed)[0]

    def inputs_and_views(self, source: str, idx: torch.Tensor, seed: int):
        """``inputs`` plus what made them: (input, raw uint8 batch on the device or None when cached,
        the cached view of each image or None)."""
        bank = self.banks.get(source)
        if bank is not None:
            filled = self.filled_views[source]  # views cached so far (they arrive one per epoch)
            if filled > 1 and self.dist is not None:
                # drawn per image from the batch's seed: ranks' generators stay in step
                views = torch.randint(filled, (len(self.images[source]),),
                                      generator=torch.Generator().manual_seed(seed))[idx]
                return bank[views.to(self.device), idx.to(self.device)], None, views
            if filled > 1:
                views = torch.randint(filled, (len(idx),), generator=self.generator)
                return bank[views.to(self.device), idx.to(self.device)], None, views
            return bank[0, idx.to(self.device)], None, torch.zeros(len(idx), dtype=torch.long)
        raw = self.images[source][idx]
        if self.augmenter is not None:
            raw = augment_batch(raw, self.augmenter, seed if self.dist is None else self.dist.seed(seed))
        raw = raw.to(self.device, non_blocking=True)
        x = normalise(raw, self.mean, self.std)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x, raw, None

    def eval_inputs(self, source: str, batch_size: int = 64) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, input) chunks over ``source`` without augmentation, from the cache when there is one."""
        plain = self._plain_bank(source)
        images = self.images[source]
        for start in range(0, len(images), batch_size):
            if plain is not None:
                yield start, plain[start:start + batch_size]
            else:
                yield start, normalise(images[start:start + batch_size].to(self.device), self.mean, self.std)

    def _call(self, method: str, x: torch.Tensor):
        # under DDP, a pass that will be back-propagated goes through the wrapper (its gradient hooks)
        if self._ddp is not None and torch.is_grad_enabled():
            return self._ddp[1](method, x)
        return self.model(x) if method == "forward" else getattr(self.model, method)(x)  # __call__ runs hooks

    def plain_inputs(self, source: str, idx: torch.Tensor) -> torch.Tensor:
        """The model's input for images ``idx`` of ``source`` without augmentation (cached when possible)."""
        plain = self._plain_bank(source)
        if plain is not None:
            return plain[idx.to(plain.device)]
        return normalise(self.images[source][idx].to(self.device), self.mean, self.std)

    def logits(self, x: torch.Tensor):
        """The model's output for an input from ``inputs`` / ``eval_inputs``."""
        if self.cache_mode == "head":
            return self._call("forward_head", x)
        if self.cache_mode == "prefix":
            return self._call("forward", self._stand_in(x))
        return self._call("forward", x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features the head reads, for an input from ``inputs`` / ``eval_inputs``."""
        if self.cache_mode == "head":
            return x
        if self.cache_mode == "prefix":
            x = self._stand_in(x)
        return self._call("forward_features", x)

    def head(self, features: torch.Tensor):
        return self._call("forward_head", features)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    # --- the fit ----------------------------------------------------------------------------

    def fit(self, data: dict) -> History:
        """Train on ``data`` (named datasets, e.g. ``{"train": ..., "val": ...}``) and return the history."""
        config = self.config
        group_names = [g.name for g in self.model.layer_groups]
        config.validate(group_names)
        self.objective.check(self.model, data, config)
        for attempt in range(2):
            try:
                return self._fit_once(data)
            except torch.cuda.OutOfMemoryError:
                pass
            # free the failed attempt's tensors outside the except block: its traceback held them
            self._release()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if attempt == 1 or self.config.batch_size == 1:
                raise UserInputError(
                    f"The GPU ran out of memory even with batch size {self.config.batch_size}. "
                    "Choose a smaller input size, a smaller batch or freeze more layers.")
            self.model.load_state_dict(self._start_state)
            self.config = replace(self.config, batch_size=max(1, self.config.batch_size // 2))
            self.retry_message = f"The GPU ran out of memory; retried with batch size {self.config.batch_size}."
        raise AssertionError("unreachable")

    def _release(self) -> None:
        self._ddp = None
        for name in ("banks", "plain_banks", "filled_views", "view_seeds", "images", "optimizer", "scaler"):
            self.__dict__.pop(name, None)

    def _setup(self, data: dict) -> None:
        config, model = self.config, self.model
        self.device = pick_device(config.device)
        if self.dist is not None:
            self.dist.check(config.batch_size)
        self.amp_dtype = autocast_dtype(self.device) if config.mixed_precision else None
        reseed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.stop_reason, self.stop_message = None, ""
        if not hasattr(self, "retry_message"):
            self.retry_message = ""
        size = int(config.image_size)
        self.images = {name: encode_images(ds, size) for name, ds in data.items() if ds is not None}
        if self.device.type == "cuda":
            self.images = {k: v.pin_memory() for k, v in self.images.items()}
        self.labels = {name: self.objective.labels(ds) for name, ds in data.items() if ds is not None}
        self.data = data
        if not hasattr(self, "_start_state"):  # what a retry after running out of memory starts from
            self._start_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        model.to(self.device)
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(model.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(model.std, device=self.device).view(1, 3, 1, 1)

        group_names = [g.name for g in model.layer_groups]
        self.plan = training_plan(group_names, config)
        never_trained = [g for g in model.layer_groups if all(epoch[g.name] == 0 for epoch in self.plan)]
        ever = TrainConfig(**{**config.to_dict(), "freeze": [g.name for g in never_trained]})
        self.param_groups = build_param_groups(model, ever)
        self.by_group = {g["name"]: g["params"] for g in self.param_groups}
        self.augmenter = config_augmenter(config)
        self.warmup_end = min(config.warmup_epochs, len(self.plan))  # may come sooner: end_warmup
        self.cache_until = None  # the last epoch a warm-up-only cache serves
        self._plan_caches(never_trained)

    def _tick(self, epoch: int, batch: int, loss: float, phase: str = "train", count: int = 1) -> None:
        self.done_units += count
        progress = BatchProgress(epoch, batch, self.steps, loss,
                                 min(1.0, self.done_units / max(1, self.total_units)), phase)
        for cb in self.callbacks:
            cb.on_batch_end(progress)

    def end_warmup(self, epoch: int) -> None:
        """End the head's warm-up after ``epoch`` (early stopping calls this once the head has
        converged): the warm-up's remaining epochs are skipped, the fine-tuning ones come next."""
        if not self.warmup_end or epoch >= self.warmup_end:
            return
        skipped = self.warmup_end - epoch
        self.plan[epoch:self.warmup_end] = []
        self.warmup_end = epoch
        self.total_units -= skipped * self.steps

    def _start_phase(self, epochs: int) -> None:
        """A fresh learning-rate schedule over the next ``epochs`` (after the warm-up: fine-tuning
        reaches its full rates again, as fastai's ``fine_tune`` does), in which every group that
        joins now or later ramps up (``join_ramps``)."""
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr
            group.pop("initial_lr", None)
        total = self.steps * max(1, epochs)
        if self.config.schedule == "onecycle":  # it ramps every group up already
            self.scheduler = make_scheduler(self.config, self.optimizer, total)
            return

        def shape(step: int) -> float:
            if self.config.schedule != "cosine":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

        ramps = join_ramps(self.optimizer.param_groups, self.plan, self.warmup_end, self.steps,
                           round(self.steps * self.ramp_epochs))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [lambda step, ramp=ramp: ramp(step) * shape(step) for ramp in ramps])

    def _fit_once(self, data: dict) -> History:
        model, objective = self.model, self.objective
        with preserved(model):
            self._setup(data)
            history = self._start_fit()
            self.seen, self.train_seconds, self.global_step = 0, 0.0, 0
            try:
                with ExitStack() as stack:
                    stack.callback(objective.teardown, self)
                    self._prepare_epochs(stack)
                    epoch = 1
                    while epoch <= len(self.plan):  # the plan shrinks when the warm-up ends early
                        if not self._run_epoch(epoch):
                            break
                        epoch += 1
            except FitCancelled:
                self.request_stop("cancelled")
            self._finish_history(history)
            objective.on_fit_end(self, history)
        for cb in self.callbacks:
            cb.on_fit_end(history)
        self._release()
        return history

    def _start_fit(self) -> History:
        """Optimizer, scheduler, scaler, progress units and the empty history; callbacks learn the fit's shape."""
        config, objective = self.config, self.objective
        self.steps = objective.steps_per_epoch(self)
        # the objective's own parameters go first: the last group's lr is the one reported
        self.optimizer = make_optimizer(config, list(objective.param_groups(self)) + self.param_groups)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        # with a warm-up, the head's phase has its own schedule, and fine-tuning a fresh one
        self.scheduler = make_scheduler(config, self.optimizer, self.steps * (self.warmup_end or config.epochs))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.cache_units = 0
        if self.cache_mode:
            per_view = sum(self.batches_for(s) for s in objective.sources)
            self.cache_units = per_view if self.lazy_cache else per_view * self.views + sum(
                math.ceil(len(v) / config.batch_size) for v in self.images.values())
        self.total_units, self.done_units = self.cache_units + self.steps * config.epochs, 0
        # "warmup": the head cache served the warm-up only; the fine-tuning epochs run the whole model
        cache = "warmup" if self.cache_until is not None else self.cache_mode or ""
        self._epoch_modes = None  # (plan entry, modes) of the last epoch that applied its plan
        self.history = objective.new_history(plan=self.plan, used_feature_cache=self.cache_mode is not None,
                                             cache=cache)
        trainable = sum(p.numel() for g in self.param_groups for p in g["params"])
        info = FitInfo(config.epochs, self.steps, len(self.images[objective.sources[0]]),
                       len(self.images.get("val", ())), str(self.device), self.cache_mode is not None,
                       trainable, sum(p.numel() for p in self.model.parameters()) - trainable,
                       tuple(g["name"] for g in self.param_groups), cache)
        for cb in self.callbacks:
            cb.trainer = self
            cb.on_fit_start(info)
        return self.history

    def _prepare_epochs(self, stack: ExitStack) -> None:
        """Fill the feature caches and, with a frozen prefix cached, make the prefix free until the fit ends."""
        if self.cache_mode:
            self.model.eval()
            self._build_caches()
            self.done_units = self.cache_units
        if self.cache_mode == "prefix":
            stack.enter_context(skip_prefix(self.prefix_modules, self.boundary, self.stash))
        self.objective.on_fit_start(self)

    def _run_epoch(self, epoch: int) -> bool:
        """Train and evaluate one epoch; False when the fit must end."""
        if self.cancelled():
            self.request_stop("cancelled")
            return False
        if epoch > 1 and self.lazy_cache:
            self._grow_caches()  # the next cached view (see _build_caches); not counted as training time
        started = time.perf_counter()
        self._begin_epoch(epoch)
        sums = self._train_epoch(epoch)
        self.train_seconds += time.perf_counter() - started
        return self._end_epoch(epoch, sums, started)

    def _begin_epoch(self, epoch: int) -> None:
        """Set which groups train this epoch (and their modes), then tell the objective and callbacks."""
        if self.warmup_end and epoch == self.warmup_end + 1:
            self._leave_warmup(epoch)
        active = self.plan[epoch - 1]
        if self.dist is None and self._epoch_modes is not None and active == self._epoch_modes[0]:
            # the same groups train as last epoch: put back the modes that epoch's plan set (an
            # evaluation or a callback may have changed them since) instead of setting them all again
            set_modes(self._epoch_modes[1])
        else:
            apply_epoch_plan(self.model, self.by_group, active, self.config.train_bn, self.config.keep_bn_stats)
            self._epoch_modes = (dict(active), modes(self.model))
        if self.dist is not None:
            self.dist.freeze_batchnorm(self.model)
            self._ddp = self.dist.wrap(self.model, self._ddp)
        self.objective.on_epoch_start(self, epoch)
        for cb in self.callbacks:
            cb.on_epoch_start(epoch)

    def _leave_warmup(self, epoch: int) -> None:
        """The first fine-tuning epoch: the warm-up's cache goes (the body trains now), and the
        schedule starts again over the epochs left."""
        if self.cache_until is not None:
            self._drop_cache()
        self._start_phase(len(self.plan) - epoch + 1)

    def _train_epoch(self, epoch: int) -> dict:
        """One pass over the objective's batches; returns the epoch's sums (tensors stay on the device)."""
        sums: dict[str, torch.Tensor | float] = {}
        for b, batch in enumerate(self.objective.batches(self, epoch)):
            if self.cancelled():
                self.request_stop("cancelled")
            if self.stop_reason is not None:
                break
            for cb in self.callbacks:
                cb.on_batch_start(self.global_step)
            value = self._train_step(batch, sums)
            if value is None:
                break
            self.global_step += 1
            self._tick(epoch, b + 1, value)
        return sums

    def _train_step(self, batch, sums: dict) -> float | None:
        """Loss, the one ``backward()``, the optimizer and scheduler steps; adds the batch to ``sums``.

        Returns the loss, or None when it is not finite (the fit is then marked diverged)."""
        # Dropout and drop-connect draw from torch's one global generator: each step's forward pass
        # draws from a seed of its own (the run's seed and the step), inside seeding's lock, so two
        # fits in threads of one process draw what each would draw alone.
        with seeded(self._step_seed(), self._cuda_devices()), self.autocast():
            loss, stats = self.objective.loss(self, batch)
        value = loss.item()  # one sync per step: the live curve and the guard need it
        step_loss = loss
        if self.dist is not None:  # every rank sees the global batch's loss
            cancelled = self.stop_event is not None and self.stop_event.is_set()
            step_loss, value, self._all_cancelled = self.dist.sync_step(loss, stats.get("n", 0), cancelled)
        if not math.isfinite(value):
            self.request_stop("diverged")
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(step_loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        n = stats.get("n", 0)
        sums["loss"] = sums.get("loss", 0.0) + loss.detach() * n
        for k, v in stats.items():
            sums[k] = sums.get(k, 0) + (v.detach() if isinstance(v, torch.Tensor) else v)
        return value

    def _step_seed(self) -> int:
        seed = (int(self.config.seed) * 1_000_003 + self.global_step) & 0x7FFFFFFF
        return seed if self.dist is None else self.dist.seed(seed)  # ranks drop different units

    def _cuda_devices(self) -> list[int]:
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    def _end_epoch(self, epoch: int, sums: dict, started: float) -> bool:
        """Count the epoch, evaluate it and record its metrics; False when the fit must end."""
        objective = self.objective
        if self.dist is not None:
            sums = self.dist.reduce_sums(sums)
        count = int(sums.get("n", 0))
        self.seen += count * objective.images_per_item
        for cb in self.callbacks:
            cb.on_train_epoch_end(epoch)
        if self.stop_reason == "diverged" or (self.stop_reason and count == 0):
            return False
        totals = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in sums.items()}
        measured = objective.evaluate(self) if self.validate else {}
        metrics = objective.epoch_metrics(self, epoch, totals, measured, time.perf_counter() - started,
                                          self.optimizer.param_groups[-1]["lr"])
        self.history.epochs.append(metrics)
        for cb in self.callbacks:
            cb.on_epoch_end(metrics)
        return self.stop_reason is None

    def _finish_history(self, history: History) -> None:
        """How the fit ended, in the history's own words, and its throughput."""
        if self.stop_reason in ("cancelled", "diverged", "early"):
            history.stopped = self.stop_reason
        history.message = self.stop_message or (
            f"{self.objective.title} was stopped after {len(history.epochs)} epoch(s)."
            if self.stop_reason == "cancelled" else "")
        if self.retry_message:
            history.message = (self.retry_message + " " + history.message).strip()
        history.images_per_second = self.seen / self.train_seconds if self.train_seconds > 0 else 0.0
        history.batch_size = self.config.batch_size


def join_ramps(param_groups: Sequence[dict], plan: Sequence[dict], start: int, steps: int,
               ramp_steps: int | None = None):
    """Per optimizer group, its rate factor at step ``s`` of a phase that begins at epoch ``start``
    (0-based) of ``plan``: a group that first trains at that epoch or later ramps up linearly from
    ``1/ramp_steps`` to 1 over ``ramp_steps`` steps (by default its first epoch, ``steps`` steps);
    one that trained before the phase (the warm-up's head) goes on at its rate at once.

    Why: pretrained layers that join at full rate undo the warm-up. Adam's first steps on them are
    as large as the rate in every weight at once (its moments are empty), with BatchNorm's
    statistics kept fixed nothing absorbs the change, and the head, tuned to the old features, is
    wrong on the new ones. A head that kept its optimizer state needs no ramp."""
    def first_epoch(name) -> int:
        return next((i for i, epoch in enumerate(plan) if epoch.get(name, 0) > 0), 0)

    length = max(1, ramp_steps or steps)

    def ramp(joins: int):
        def factor(step: int) -> float:
            return min(1.0, max(0, step - (joins - start) * steps + 1) / length) if joins >= start else 1.0
        return factor

    return [ramp(first_epoch(g["name"])) if "name" in g and start > 0 else ramp(-1) for g in param_groups]
