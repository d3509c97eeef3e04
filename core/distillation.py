"""Knowledge distillation (Hinton et al., 2015): a student learns from the labels and a teacher's softened outputs.

The loss is ``(1 - alpha) * CE(student, labels) + alpha * T² * KL(p_teacher^T || p_student^T)``,
where ``p^T = softmax(logits / T)``. The ``T²`` keeps the soft term's gradients on the scale of
the hard one's as ``T`` grows. ``distill`` trains a student like ``core.training.fit`` does
(same optimizer, schedule, augmentation and frozen groups), with the teacher run in eval mode
on every augmented batch. It does not cache features or unfreeze progressively.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.backbones import Classifier
from core.devices import autocast_dtype, pick_device
from core.errors import ConfigError, UserInputError
from core.seeding import reseed
from core.training import (
    BatchProgress,
    Callback,
    EpochMetrics,
    FitInfo,
    History,
    TrainConfig,
    apply_freeze,
    augment_batch,
    build_param_groups,
    encode_images,
    evaluate,
    frozen_groups,
    labels_of,
    make_augmenter,
    make_optimizer,
    make_scheduler,
    normalise,
    restore_if_diverged,
)

__all__ = [
    "distillation_loss",
    "soften",
    "distill",
    "check_settings",
    "DistillationJob",
    "DistillSnapshot",
    "VARIANTS",
]


def check_settings(temperature: float, alpha: float) -> None:
    """Raise ConfigError unless the temperature is positive and alpha lies in [0, 1]."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and 0 < temperature <= 100):
        raise ConfigError("The temperature must be a number above 0 (at most 100).")
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ConfigError("α, the weight of the teacher's soft targets, must be between 0 and 1.")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * CE + alpha * T² * KL(softmax(teacher / T) || softmax(student / T))``, batch mean."""
    check_settings(temperature, alpha)
    hard = F.cross_entropy(student_logits, targets)
    if alpha == 0:
        return hard  # the teacher plays no part; skipping the KL keeps it out of the graph
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1), reduction="batchmean")
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft


def soften(logits, temperature: float) -> torch.Tensor:
    """``softmax(logits / T)`` over the last axis: T > 1 flattens the distribution, T < 1 sharpens it."""
    check_settings(temperature, 0.0)
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float32) / temperature, dim=-1)


def _teacher_input(batch_uint8: torch.Tensor, size: int) -> torch.Tensor:
    if batch_uint8.shape[-1] == size and batch_uint8.shape[-2] == size:
        return batch_uint8
    # the teacher sees the very same augmented view, at the input size it was trained at
    resized = F.interpolate(batch_uint8.float(), size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def distill(student: Classifier, teacher: Classifier, train_ds, val_ds, config: TrainConfig,
            temperature: float = 4.0, alpha: float = 0.5, callbacks: Sequence[Callback] = (),
            stop: threading.Event | None = None) -> History:
    """Train ``student`` in place with the distillation loss; ``teacher`` only predicts.

    The teacher's weights, modes and ``requires_grad`` flags are left as they were (it is moved
    to the training device for the run and back). Validation metrics are the student's plain
    cross-entropy and accuracy. With ``alpha = 0`` the teacher is not run at all.
    """
    check_settings(temperature, alpha)
    group_names = [g.name for g in student.layer_groups]
    config.validate(group_names)
    if list(student.classes) != list(teacher.classes):
        raise ConfigError(
            f"The teacher knows the classes {', '.join(teacher.classes)}, the student "
            f"{', '.join(student.classes)}: they must be the same, in the same order. Distil on the "
            "dataset the teacher was trained on."
        )
    if len(train_ds) < 2:
        raise ConfigError("Training needs at least two training images.")
    train_labels, val_labels = labels_of(train_ds), labels_of(val_ds)
    if len(train_labels) and int(train_labels.max()) >= len(student.classes):
        raise ConfigError("The dataset has more classes than the student's head.")

    device = pick_device(config.device)
    amp_dtype = autocast_dtype(device) if config.mixed_precision else None
    reseed(config.seed)
    shuffler = torch.Generator().manual_seed(config.seed)
    size = int(config.image_size)
    train_images, val_images = encode_images(train_ds, size), encode_images(val_ds, size)

    use_teacher = alpha > 0
    teacher_param = next(teacher.parameters(), None)
    teacher_home = teacher_param.device if teacher_param is not None else torch.device("cpu")
    teacher_modes = [(m, m.training) for m in teacher.modules()]
    original_requires_grad = {id(p): p.requires_grad for p in student.parameters()}
    student.to(device)
    s_mean = torch.tensor(student.mean, device=device).view(1, 3, 1, 1)
    s_std = torch.tensor(student.std, device=device).view(1, 3, 1, 1)
    t_mean = torch.tensor(teacher.mean, device=device).view(1, 3, 1, 1)
    t_std = torch.tensor(teacher.std, device=device).view(1, 3, 1, 1)
    t_size = int(getattr(teacher, "image_size", size))

    param_groups = build_param_groups(student, config)
    trainable_list = [p for g in param_groups for p in g["params"]]
    frozen = frozen_groups(student, config)
    frozen_modules = [student.get_submodule(m) for g in student.layer_groups if g.name in frozen for m in g.modules]
    trainable_params = sum(p.numel() for p in trainable_list)
    frozen_params = sum(p.numel() for p in student.parameters()) - trainable_params

    drop_last = len(train_images) % config.batch_size == 1  # a batch of one breaks BatchNorm
    batches = len(train_images) // config.batch_size if drop_last else math.ceil(len(train_images) / config.batch_size)
    optimizer = make_optimizer(config, param_groups)
    scheduler = make_scheduler(config, optimizer, batches * config.epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    augmenter = make_augmenter(size) if config.augment else None

    history = History()
    info = FitInfo(config.epochs, batches, len(train_images), len(val_images), str(device), False,
                   trainable_params, frozen_params, tuple(g["name"] for g in param_groups))
    for cb in callbacks:
        cb.on_fit_start(info)

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    last_good = [p.detach().clone() for p in trainable_list]
    done, total = 0, batches * config.epochs
    seen_images, train_seconds = 0, 0.0
    try:
        if use_teacher:
            teacher.to(device).eval()
        for epoch in range(1, config.epochs + 1):
            if stopped():
                history.stopped = "cancelled"
                break
            started = time.perf_counter()
            apply_freeze(student, frozen_modules, config.train_bn)
            order = torch.randperm(len(train_images), generator=shuffler)
            loss_sum, correct, count, diverged = 0.0, 0, 0, False
            for b in range(batches):
                if stopped():
                    history.stopped = "cancelled"
                    break
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                batch = train_images[idx]
                if augmenter is not None:
                    batch = augment_batch(batch, augmenter, hash((config.seed, epoch, b)) & 0x7FFFFFFF)
                batch = batch.to(device)
                y = train_labels[idx].to(device)
                teacher_logits = None
                if use_teacher:
                    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype,
                                                                enabled=amp_dtype is not None):
                        t_logits = teacher(normalise(_teacher_input(batch, t_size), t_mean, t_std)).float()
                    teacher_logits = t_logits.clone()  # a normal tensor: autograd may save it
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = student(normalise(batch, s_mean, s_std)).float()
                    loss = distillation_loss(logits, teacher_logits if use_teacher else logits.detach(), y,
                                             temperature, alpha)
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
                loss_sum += loss_value * len(y)
                correct += int((logits.detach().argmax(1) == y).sum())
                count += len(y)
                done += 1
                for cb in callbacks:
                    cb.on_batch_end(BatchProgress(epoch, b + 1, batches, loss_value, min(1.0, done / max(1, total))))
            train_seconds += time.perf_counter() - started
            seen_images += count
            if restore_if_diverged(trainable_list, last_good, diverged):
                history.stopped = "diverged"
                history.message = (
                    f"Distillation stopped in epoch {epoch}: the loss became NaN or infinite, which usually "
                    f"means the learning rate ({config.lr:g}) is too high. The weights of the last good epoch "
                    "were kept; try a learning rate 10× smaller."
                )
                break
            if history.stopped == "cancelled" and count == 0:
                break
            val_loss, val_acc = evaluate(student, val_images, val_labels, s_mean, s_std, device)
            metrics = EpochMetrics(epoch=epoch, train_loss=loss_sum / max(1, count),
                                   train_acc=correct / max(1, count), val_loss=val_loss, val_acc=val_acc,
                                   seconds=time.perf_counter() - started, lr=optimizer.param_groups[-1]["lr"])
            history.epochs.append(metrics)
            with torch.no_grad():
                for p, good in zip(trainable_list, last_good):
                    good.copy_(p)
            for cb in callbacks:
                cb.on_epoch_end(metrics)
            if history.stopped == "cancelled":
                break
        if history.stopped == "cancelled" and not history.message:
            history.message = f"Distillation was stopped after {len(history.epochs)} epoch(s)."
    finally:
        for p in student.parameters():
            p.requires_grad_(original_requires_grad.get(id(p), True))
        student.eval()
        teacher.to(teacher_home)
        for module, mode in teacher_modes:
            module.training = mode
        net = getattr(teacher, "_net", None)
        if net is not None:
            net.training = teacher.training
    history.images_per_second = seen_images / train_seconds if train_seconds > 0 else 0.0
    for cb in callbacks:
        cb.on_fit_end(history)
    return history


# --- a background job: the same student with and without the teacher --------------------------

VARIANTS = ("with teacher", "without teacher")


from core.tasks import Snapshot, Task  # noqa: E402  (the background part builds on the engine above)

DistillSnapshot = Snapshot  # ``epochs`` per variant; ``teacher_val_acc``, ``temperature``, ``alpha`` in ``extra``


class _Recorder(Callback):
    def __init__(self, job: "DistillationJob", variant: str, index: int):
        self.job, self.variant, self.index = job, variant, index

    def on_batch_end(self, progress: BatchProgress) -> None:
        self.job.report((self.index + progress.fraction) / len(VARIANTS), self.variant)

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self.job.add_epoch(metrics, self.variant)


class DistillationJob(Task):
    """Trains one student with the teacher (``alpha``) and one without it (``alpha = 0``), as a task.

    Both students come from ``build_student`` (call it twice: the same seed gives the same start),
    so the teacher is the only difference. The job waits for a slot of the server's training queue.
    """

    kind = "distillation"

    def __init__(self, build_student: Callable[[], Classifier], teacher: Classifier, train_ds, val_ds,
                 config: TrainConfig, temperature: float, alpha: float, queue=None):
        from core.tasks import get_queue

        check_settings(temperature, alpha)
        config.validate()
        super().__init__(name="distill", queue=queue or get_queue(), arms=VARIANTS)
        self.config, self.temperature, self.alpha = config, float(temperature), float(alpha)
        self._build_student, self._teacher = build_student, teacher
        self._train_ds, self._val_ds = train_ds, val_ds
        self.students: dict[str, Classifier] = {}
        self.update(teacher_val_acc=None, temperature=self.temperature, alpha=self.alpha, stopped={})

    def _body(self) -> None:
        try:
            self.report(0.0, "")
            self.update(teacher_val_acc=self._teacher_accuracy())
            stopped = {}
            for index, variant in enumerate(VARIANTS):
                if self.stop.is_set():
                    break
                self.report(index / len(VARIANTS), variant)
                student = self._build_student()
                alpha = self.alpha if variant == VARIANTS[0] else 0.0
                history = distill(student, self._teacher, self._train_ds, self._val_ds, self.config,
                                  self.temperature, alpha, [_Recorder(self, variant, index)], self.stop)
                stopped[variant] = history.stopped
                self.students[variant] = student
                self.update(stopped=dict(stopped))
                if history.message:
                    with self._lock:
                        self._message = history.message
        finally:
            self._train_ds = self._val_ds = None

    def _teacher_accuracy(self) -> float | None:
        if len(self._val_ds) == 0:
            return None
        device = pick_device(self.config.device)
        size = int(getattr(self._teacher, "image_size", self.config.image_size))
        images = encode_images(self._val_ds, size)
        mean = torch.tensor(self._teacher.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self._teacher.std, device=device).view(1, 3, 1, 1)
        home = next(self._teacher.parameters()).device
        try:
            self._teacher.to(device)
            _, acc = evaluate(self._teacher, images, labels_of(self._val_ds), mean, std, device)
        finally:
            self._teacher.to(home)
        return acc
