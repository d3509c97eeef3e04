"""Knowledge distillation (Hinton et al., 2015): a student learns from the labels and a teacher's softened outputs.

The loss is ``(1 - alpha) * CE(student, labels) + alpha * T² * KL(p_teacher^T || p_student^T)``,
where ``p^T = softmax(logits / T)``. The ``T²`` keeps the soft term's gradients on the scale of
the hard one's as ``T`` grows. ``distill`` trains a student like ``core.train.fit`` does
(same optimizer, schedule, augmentation and frozen groups), with the teacher run in eval mode
on every augmented batch (once per cached view when the student's frozen groups are cached).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from core.data.encoded import encode_images, normalise
from core.errors import ConfigError
from core.models.heads import Classifier
from core.seeding import seeded
from core.train.base import Callback, History, TrainConfig, evaluate
from core.train.loop import Trainer
from core.train.objectives import Classification, Objective

__all__ = [
    "distillation_loss",
    "soften",
    "paired_views",
    "distill",
    "check_settings",
    "teacher_accuracy",
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


def paired_views(images: torch.Tensor, originals: torch.Tensor, augmenter, seed: int,
                 size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``augment_batch(images, augmenter, seed)`` and, for each image, the very same augmentation
    (crop, flip, colour jitter) of its original at ``size`` px: (student views, teacher views).

    ``images`` and ``originals`` are the same pictures encoded at two sizes (short side resized,
    centre crop), so a crop box in one is the other's box scaled. Upscaling the student's small
    view instead would show the teacher a blurred picture it was never trained on. The random
    draws are replayed in the order torchvision's ``Compose`` makes them (a random-apply transform
    draws its coin first, then its parameters), from the seed ``augment_batch`` used.
    """
    from torchvision.transforms import v2 as T
    from torchvision.transforms.v2 import functional as TF
    from torchvision.transforms.v2._transform import _RandomApplyTransform  # draws a coin before its parameters


    transforms = list(getattr(augmenter, "transforms", [augmenter]))
    scale_y = originals.shape[-2] / images.shape[-2]
    scale_x = originals.shape[-1] / images.shape[-1]
    student, teacher = [], []
    with seeded(seed):
        for small, big in zip(images, originals, strict=True):
            for transform in transforms:
                if isinstance(transform, _RandomApplyTransform) and torch.rand(1) >= transform.p:
                    continue
                params = transform.make_params([small])
                if isinstance(transform, T.RandomResizedCrop):
                    top, left = round(params["top"] * scale_y), round(params["left"] * scale_x)
                    height = max(1, round(params["height"] * scale_y))
                    width = max(1, round(params["width"] * scale_x))
                    big = TF.resized_crop(big, top, left, height, width, [size, size],
                                          interpolation=transform.interpolation, antialias=transform.antialias)
                else:
                    big = transform.transform(big, params)
                small = transform.transform(small, params)
            student.append(small)
            teacher.append(big)
    return torch.stack(student), torch.stack(teacher)


class Distillation(Objective):
    """The distillation loss on the student's outputs; the teacher only predicts, in eval mode.

    The teacher sees each training image as the student does (the same crop, flip and jitter) but
    made from the original at the teacher's own input size, not the student's smaller view scaled
    up. With a cached student (frozen groups computed once per image and view) the teacher's logits
    are computed once per cached view too, from the same view of the same images."""

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
        self.t_size = int(getattr(teacher, "image_size", None) or trainer.config.image_size)
        # the training images at the teacher's size, encoded from the originals (a run folder's
        # dataset hands over the ones it was given at that size)
        self.same_size = self.t_size == int(trainer.config.image_size)
        self.originals = None if self.same_size else encode_images(trainer.data["train"], self.t_size)
        self.started = True

    def _teacher_images(self, trainer, idx: torch.Tensor, seed: int | None, student_view: torch.Tensor) -> torch.Tensor:
        """What the teacher sees of images ``idx`` whose student view was made with ``seed``."""
        if self.same_size:
            return student_view
        originals = self.originals[idx.cpu()]
        if seed is None or trainer.augmenter is None:
            return originals
        if trainer.dist is not None:
            seed = trainer.dist.seed(seed)
        return paired_views(trainer.images["train"][idx.cpu()], originals, trainer.augmenter, seed, self.t_size)[1]

    @torch.inference_mode()
    def _teach(self, trainer, images: torch.Tensor) -> torch.Tensor:
        x = normalise(images.to(trainer.device), self.t_mean, self.t_std)
        with trainer.autocast():
            return self.teacher(x).float()

    def on_cache_view(self, trainer, source, view, images) -> None:
        self._start_teacher(trainer)
        if self.alpha > 0:
            seed = trainer.view_seeds[source][view]
            every = torch.arange(len(images))
            teacher_images = self._teacher_images(trainer, every, seed, images)
            self.banks[view] = torch.cat([self._teach(trainer, teacher_images[s:s + 64])
                                          for s in range(0, len(teacher_images), 64)])

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
            # a normal tensor: autograd may save it
            teacher_logits = self._teach(trainer, self._teacher_images(trainer, idx, seed, raw)).clone()
        else:
            teacher_logits = torch.stack([self.banks[int(v)][int(i)] for v, i in zip(views, idx, strict=True)])
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
        self.originals = None


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


def teacher_accuracy(teacher: Classifier, images: torch.Tensor, labels: torch.Tensor, device) -> float | None:
    """The teacher's accuracy on uint8 images at its own input size (None without images)."""
    if len(images) == 0:
        return None
    device = torch.device(device)
    mean = torch.tensor(teacher.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(teacher.std, device=device).view(1, 3, 1, 1)
    home = next(teacher.parameters()).device
    try:
        teacher.to(device)
        _, acc = evaluate(teacher, images, labels, mean, std, device)
    finally:
        teacher.to(home)
    return acc
