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
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from core.backbones import Classifier
from core.errors import ConfigError
from core.devices import pick_device
from core.train.base import Callback, History, TrainConfig, encode_images, evaluate, normalise
from core.train.loop import Trainer
from core.train.objectives import Classification, Objective
from core.worker import EncodedDataset

__all__ = [
    "distillation_loss",
    "soften",
    "paired_views",
    "distill",
    "check_settings",
    "DistillSnapshot",
    "VARIANTS",
    "start_distillation",
    "train_folder",
    "students_of",
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

    from core.seeding import seeded

    transforms = list(getattr(augmenter, "transforms", [augmenter]))
    scale_y = originals.shape[-2] / images.shape[-2]
    scale_x = originals.shape[-1] / images.shape[-1]
    student, teacher = [], []
    with seeded(seed):
        for small, big in zip(images, originals):
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


# --- in a worker process: the same student with and without the teacher ------------------

VARIANTS = ("with teacher", "without teacher")

from core.tasks import Snapshot  # noqa: E402

DistillSnapshot = Snapshot  # ``epochs`` per variant (dicts); ``teacher_val_acc``, ``temperature``, ``alpha`` in ``extra``


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


def start_distillation(store, teacher_id: str, train_ds, val_ds, config: TrainConfig, temperature: float = 4.0,
                       alpha: float = 0.5, *, backbone: str, pretrained: bool = True, owner: str = "",
                       label: str = "", dataset: str = "", queue=None):
    """Queue a run that trains the student ``backbone`` twice from the same start, with the finished
    run ``teacher_id`` as its teacher (``alpha``) and without it (``alpha = 0``), in a worker process.

    Checks the settings and the teacher now, so a page can show what is wrong at once. Returns the
    ``core.jobs.TrainingRun``; the record's ``info["arms"]`` holds both students' epochs, and the
    run's model is the student taught by the teacher.
    """
    from core.errors import CheckpointError
    from core.jobs import new_record, start_folder_run
    from core.worker import encode_inputs

    check_settings(temperature, alpha)
    teacher = store.get(teacher_id)
    if teacher is None or not store.has_model(teacher_id):
        raise CheckpointError("The teacher run has no saved model (it may have been removed): pick another one.")
    if list(teacher.classes) != list(train_ds.classes):
        raise ConfigError(
            f"The teacher knows the classes {', '.join(teacher.classes)}, the student "
            f"{', '.join(train_ds.classes)}: they must be the same, in the same order. Distil on the "
            "dataset the teacher was trained on.")
    record = new_record(train_ds, val_ds, backbone=backbone, pretrained=pretrained, config=config, owner=owner,
                        label=label or f"{backbone} student of {teacher.label or teacher_id}", dataset=dataset)
    record = replace(record, config={**record.config, "kind": "distill", "teacher": teacher_id,
                                     "temperature": float(temperature), "alpha": float(alpha)})
    size, teacher_size = int(config.image_size), int(teacher.config.get("image_size", config.image_size))

    def inputs() -> dict:
        tensors = encode_inputs(train_ds, val_ds, size)
        # the teacher's own score is measured at the size it was trained at, as before training;
        # it teaches from the training images at that size too, not from the student's scaled up
        tensors["teacher_val_images"] = encode_images(val_ds, teacher_size)
        if teacher_size != size:
            tensors["teacher_train_images"] = encode_images(train_ds, teacher_size)
        return tensors

    return start_folder_run(store, record, inputs, queue=queue)


class _AtSizes(EncodedDataset):
    """A run folder's training images at the student's size that hands over the same images
    encoded at another size (``sizes[size]``, the teacher's) instead of resizing the student's."""

    def __init__(self, images: torch.Tensor, labels, classes: list[str], sizes: dict[int, torch.Tensor]):
        super().__init__(images, labels, classes)
        self.sizes = sizes

    def encoded(self, size: int) -> torch.Tensor:
        return self.sizes[size] if size in self.sizes else super().encoded(size)


def train_folder(store, record, stop, log, save, distributed=None):
    """A worker's body for a ``"distill"`` run folder: the student with the teacher, then without."""
    from core import backbones
    from core.worker import ArmRecorder

    if distributed is not None and not distributed.main:
        return "finished", "", {}  # a distillation trains in one process: rank 0 alone
    cfg = record.config
    config = TrainConfig.from_dict(cfg)
    temperature, alpha = float(cfg["temperature"]), float(cfg["alpha"])
    check_settings(temperature, alpha)
    inputs = store.load_inputs(record.id)
    big = inputs.get("teacher_train_images")
    train = _AtSizes(inputs["train_images"], inputs["train_labels"].tolist(), record.classes,
                     {} if big is None else {int(big.shape[-1]): big})
    val = EncodedDataset(inputs["val_images"], inputs["val_labels"].tolist(), record.classes)
    teacher = store.load_model(cfg["teacher"])
    teacher_acc = teacher_accuracy(teacher, inputs["teacher_val_images"], inputs["val_labels"],
                                   pick_device(config.device))
    del inputs
    about = {"teacher_val_acc": teacher_acc, "temperature": temperature, "alpha": alpha}
    log.write("update", **about)
    arms: dict = {}

    def changed() -> None:
        save(info={**record.info, **about, "arms": arms})

    message = ""
    for index, variant in enumerate(VARIANTS):
        if stop.is_set():
            break
        log.arm(variant, index, len(VARIANTS))
        student = backbones.starting_model(record.backbone, record.classes, pretrained=record.pretrained,
                                           seed=config.seed, image_size=config.image_size,
                                           head=cfg.get("head", "linear"))
        first = index == 0  # the taught student is the run's model
        recorder = ArmRecorder(arms, variant, changed, store if first else None, record.id)
        history = distill(student, teacher, train, val, config, temperature, alpha if first else 0.0,
                          [recorder, log], stop)
        arms[variant].update(stopped=history.stopped, message=history.message)
        message = history.message or message
        if first and history.epochs:
            store.save_model(record.id, student)
    status = "cancelled" if stop.is_set() else "finished"
    epochs = arms.get(VARIANTS[0], {}).get("epochs", [])
    return status, message, {"epochs": epochs, "info": {**record.info, **about, "arms": arms}}


def students_of(record) -> dict[str, list[dict]]:
    """Each variant's epochs (dicts of ``EpochMetrics`` fields) a ``"distill"`` run's record holds."""
    arms = (record.info or {}).get("arms", {}) if record is not None else {}
    return {variant: list(arms.get(variant, {}).get("epochs", [])) for variant in VARIANTS}
