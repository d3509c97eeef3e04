"""The ``"lr_find"`` kind: a learning-rate sweep (``core.methods.lr_finder.find_lr``) on the model a
run with these settings would start from, in a worker process; its result lives in the record."""

from __future__ import annotations

from dataclasses import asdict, replace

from core.data.encoded import EncodedDataset, Pending, labels_of
from core.errors import ConfigError
from core.methods.lr_finder import LRFinderResult, check_sweep, find_lr
from core.models.heads import starting_model
from core.runs.jobs import new_record, start_folder_run
from core.train.base import TrainConfig

__all__ = ["SWEEP_KIND", "start_lr_sweep", "train_folder", "sweep_of"]

SWEEP_KIND = "lr_find"  # a run folder's config["kind"] for a sweep (core.runs.registry.KINDS)


def start_lr_sweep(store, train_ds, config: TrainConfig, *, backbone: str, pretrained: bool, weights_path=None,
                   head: str = "linear", steps: int = 60, start: float = 1e-6, end: float = 1.0,
                   smoothing: float = 0.05, owner: str = "", dataset: str = "", queue=None):
    """Queue a sweep on the model a run with these settings would start from, in a worker process.

    It counts against ``owner``'s queue share like any run (``QueueFullError``). Returns the
    ``core.runs.jobs.TrainingRun``; once it has finished, ``sweep_of(store.get(run_id))`` is the result.
    The folder keeps no weights: a sweep's model is thrown away.
    """
    check_sweep(start, end, steps, smoothing)
    record = new_record(train_ds, (), backbone=backbone, pretrained=pretrained, config=config,
                        weights_path=weights_path, head=head, owner=owner, dataset=dataset,
                        label=f"learning-rate sweep of {backbone}")
    record = replace(record, config={**record.config, "kind": SWEEP_KIND, "steps": int(steps), "start": float(start),
                                     "end": float(end), "smoothing": float(smoothing)})
    size = int(config.image_size)

    def inputs() -> dict:
        return {"train_images": Pending(train_ds, size), "train_labels": labels_of(train_ds)}

    return start_folder_run(store, record, inputs, queue=queue)


def train_folder(store, record, stop, log, save, distributed=None):
    """A worker's body for a ``"lr_find"`` run folder: build the starting model, sweep, keep the result
    in the record's ``info["lr_sweep"]``. Each step is an ``update`` event (step, steps, lr, loss)."""
    if distributed is not None and not distributed.main:
        return "finished", "", {}  # a sweep is one short run: rank 0 alone does it
    cfg = record.config
    config = TrainConfig.from_dict(cfg)
    steps = int(cfg.get("steps", 60))
    inputs = store.load_inputs(record.id)
    train = EncodedDataset(inputs["train_images"], inputs["train_labels"].tolist(), record.classes)
    del inputs
    model = starting_model(record.backbone, record.classes, pretrained=record.pretrained,
                           seed=config.seed, image_size=config.image_size,
                           head=cfg.get("head", "linear"), weights_path=cfg.get("weights_file"))

    def step(i: int, lr: float, loss: float) -> None:
        log.write("update", step=i + 1, steps=steps, lr=lr, loss=loss)

    try:
        result = find_lr(model, train, config, start=float(cfg.get("start", 1e-6)), end=float(cfg.get("end", 1.0)),
                         steps=steps, smoothing=float(cfg.get("smoothing", 0.05)), stop=stop, on_step=step,
                         callbacks=[log])
    except ConfigError:
        if stop.is_set():  # stopped before its first step: nothing was measured, and nothing went wrong
            return "cancelled", "The sweep was stopped before it finished.", {}
        raise
    if stop.is_set():
        return "cancelled", "The sweep was stopped before it finished.", {}
    return "finished", "", {"info": {**record.info, "lr_sweep": asdict(result)}}


def sweep_of(record) -> LRFinderResult | None:
    """The result a finished ``"lr_find"`` run's record holds (None for any other record)."""
    found = (record.info or {}).get("lr_sweep") if record is not None else None
    return LRFinderResult(**found) if found else None
