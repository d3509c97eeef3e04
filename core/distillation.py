"""Knowledge distillation (Hinton et al., 2015): a student learns from the labels and a teacher's softened outputs.

The loss is ``(1 - alpha) * CE(student, labels) + alpha * T² * KL(p_teacher^T || p_student^T)``,
where ``p^T = softmax(logits / T)``. The ``T²`` keeps the soft term's gradients on the scale of
the hard one's as ``T`` grows. ``distill`` trains a student like ``core.training.fit`` does
(same optimizer, schedule, augmentation and frozen groups), with the teacher run in eval mode
on every augmented batch (once per cached view when the student's frozen groups are cached).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from core.backbones import Classifier
from core.errors import ConfigError
from core.devices import pick_device
from core.train.base import (BatchProgress, Callback, EpochMetrics, History, TrainConfig, encode_images, evaluate,
                              labels_of, normalise)
from core.train.loop import Trainer
from core.train.objectives import Classification, Objective

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


class Distillation(Objective):
    """The distillation loss on the student's outputs; the teacher only predicts, in eval mode.

    With a cached student (frozen groups computed once per image and view) the teacher's logits
    are computed once per cached view too, from the very images that view was made of."""

    title = "Distillation"

    def __init__(self, teacher: Classifier, temperature: float, alpha: float):
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)
        self.banks: dict[int, torch.Tensor] = {}
        self.started = False

    def check(self, model, data, config) -> None:
        if list(model.classes) != list(self.teacher.classes):
            raise ConfigError(
                f"The teacher knows the classes {', '.join(self.teacher.classes)}, the student "
                f"{', '.join(model.classes)}: they must be the same, in the same order. Distil on the "
                "dataset the teacher was trained on.")
        Classification().check(model, data, config)

    def _start_teacher(self, trainer) -> None:
        if self.started or self.alpha == 0:
            return  # with alpha = 0 the teacher is not run at all
        teacher, device = self.teacher, trainer.device
        param = next(teacher.parameters(), None)
        self.home = param.device if param is not None else torch.device("cpu")
        self.modes = [(m, m.training) for m in teacher.modules()]
        teacher.to(device).eval()
        self.t_mean = torch.tensor(teacher.mean, device=device).view(1, 3, 1, 1)
        self.t_std = torch.tensor(teacher.std, device=device).view(1, 3, 1, 1)
        self.t_size = int(getattr(teacher, "image_size", trainer.config.image_size))
        self.started = True

    @torch.inference_mode()
    def _teach(self, trainer, raw: torch.Tensor) -> torch.Tensor:
        x = normalise(_teacher_input(raw.to(trainer.device), self.t_size), self.t_mean, self.t_std)
        with trainer.autocast():
            return self.teacher(x).float()

    def on_cache_view(self, trainer, source, view, images) -> None:
        self._start_teacher(trainer)
        if self.alpha > 0:
            self.banks[view] = torch.cat([self._teach(trainer, images[s:s + 64])
                                          for s in range(0, len(images), 64)])

    def on_fit_start(self, trainer) -> None:
        self._start_teacher(trainer)

    def loss(self, trainer, batch):
        idx, seed = batch
        x, raw, views = trainer.inputs_and_views("train", idx, seed)
        y = trainer.labels["train"][idx].to(trainer.device, non_blocking=True)
        logits = trainer.logits(x).float()
        if self.alpha == 0:
            teacher_logits = logits.detach()
        elif raw is not None:
            teacher_logits = self._teach(trainer, raw).clone()  # a normal tensor: autograd may save it
        else:
            teacher_logits = torch.stack([self.banks[int(v)][int(i)] for v, i in zip(views, idx)])
        loss = distillation_loss(logits, teacher_logits, y, self.temperature, self.alpha)
        return loss, {"n": len(y), "correct": (logits.detach().argmax(1) == y).sum()}

    def teardown(self, trainer) -> None:
        if self.started:
            self.teacher.to(self.home)
            for module, mode in self.modes:
                module.training = mode
            net = getattr(self.teacher, "_net", None)
            if net is not None:
                net.training = self.teacher.training
            self.started = False
        self.banks.clear()


def distill(student: Classifier, teacher: Classifier, train_ds, val_ds, config: TrainConfig,
            temperature: float = 4.0, alpha: float = 0.5, callbacks: Sequence[Callback] = (),
            stop: threading.Event | None = None) -> History:
    """Train ``student`` in place with the distillation loss; ``teacher`` only predicts.

    The teacher's weights, modes and ``requires_grad`` flags are left as they were (it is moved
    to the training device for the run and back). Validation metrics are the student's plain
    cross-entropy and accuracy. With ``alpha = 0`` the teacher is not run at all.
    """
    check_settings(temperature, alpha)
    objective = Distillation(teacher, temperature, alpha)
    return Trainer(student, objective, config, callbacks, stop).fit({"train": train_ds, "val": val_ds})


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
