"""The ``"distill"`` kind: the same student trained twice from the same start, with a finished run as
its teacher and without it, in a worker process over a run folder."""

from __future__ import annotations

from dataclasses import replace

import torch

from core.data.encoded import EncodedDataset, Pending
from core.devices import pick_device
from core.errors import CheckpointError, ConfigError
from core.methods.distillation import check_settings, distill, teacher_accuracy
from core.models.heads import starting_model
from core.runs.jobs import encode_inputs, new_record, start_folder_run
from core.runs.recording import ArmRecorder
from core.runs.tasks import Snapshot
from core.train.base import TrainConfig

__all__ = ["VARIANTS", "DistillSnapshot", "start_distillation", "train_folder", "students_of"]

VARIANTS = ("with teacher", "without teacher")

DistillSnapshot = Snapshot  # ``epochs`` per variant (dicts); ``teacher_val_acc``, ``temperature``, ``alpha`` in ``extra``


def start_distillation(store, teacher_id: str, train_ds, val_ds, config: TrainConfig, temperature: float = 4.0,
                       alpha: float = 0.5, *, backbone: str, pretrained: bool = True, owner: str = "",
                       label: str = "", dataset: str = "", queue=None):
    """Queue a run that trains the student ``backbone`` twice from the same start, with the finished
    run ``teacher_id`` as its teacher (``alpha``) and without it (``alpha = 0``), in a worker process.

    Checks the settings and the teacher now, so a page can show what is wrong at once. Returns the
    ``core.runs.jobs.TrainingRun``; the record's ``info["arms"]`` holds both students' epochs, and the
    run's model is the student taught by the teacher.
    """
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
        tensors["teacher_val_images"] = Pending(val_ds, teacher_size)
        if teacher_size != size:
            tensors["teacher_train_images"] = Pending(train_ds, teacher_size)
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
        student = starting_model(record.backbone, record.classes, pretrained=record.pretrained,
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
