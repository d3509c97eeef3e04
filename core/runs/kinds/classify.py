"""The ``"train"`` kind: a classifier built fresh for the run's classes, trained by ``core.train.fit``."""

from __future__ import annotations

from dataclasses import asdict

from core.cache import FeatureCache
from core.data.encoded import EncodedDataset
from core.models.heads import starting_model
from core.runs.recording import BestWeights, EventLog, WatchRecorder, ending, fit_info, status_of
from core.runs.store import RunRecord, RunStore
from core.train.base import TrainConfig
from core.train.fitting import fit
from core.train.watch import cam_movement

__all__ = ["BANKS", "train_folder"]

# A worker's frozen-backbone features, kept between the runs it trains: a class that trains the
# default feature extraction on the demo set computes the same activations run after run (same
# backbone, images, size and augmentation seeds; the key says so), about half of such a run.
# They stay on the run's device: on a GPU that is up to this much GPU memory per worker.
BANKS = FeatureCache(max_items=256, max_bytes=192 * 2**20)


def train_folder(store: RunStore, record: RunRecord, stop, log: EventLog, save, distributed=None):
    """What a worker runs for a ``"train"`` run folder; returns (status, message, record changes)."""
    cfg = record.config
    config = TrainConfig.from_dict(cfg)
    inputs = store.load_inputs(record.id)
    train_ds = EncodedDataset(inputs["train_images"], inputs["train_labels"].tolist(), record.classes)
    val_ds = EncodedDataset(inputs["val_images"], inputs["val_labels"].tolist(), record.classes)
    del inputs

    def build():
        return starting_model(record.backbone, record.classes, pretrained=record.pretrained,
                              seed=config.seed, image_size=config.image_size,
                              head=cfg.get("head", "linear"), weights_path=cfg.get("weights_file"))

    model = build()
    main = distributed is None or distributed.main
    callbacks = [log]
    if main:
        store.save_start(record.id, model, record.pretrained)
        callbacks = [BestWeights(store, record.id, model, lambda **c: save(**c)), log]  # weights first, then news
        if config.watch:
            callbacks.insert(1, WatchRecorder(store, record.id, val_ds.images))
    # the loop retries once at half the batch after running out of GPU memory (EventLog says so)
    history = fit(model, train_ds, val_ds, config, callbacks, stop, distributed=distributed,
                  shared_cache=BANKS if distributed is None else None)
    status = status_of(history.stopped)
    if history.epochs and main:
        store.save_model(record.id, model)
    return status, history.message, {
        "epochs": [asdict(e) for e in history.epochs],
        "info": {**fit_info(store, record.id), **record.info, **ending(history),
                 # how far the pinned images' attention moved, for a lesson's rule
                 **({"cam_movement": cam_movement(history.watch)} if history.watch else {})},
        # the plan as trained: a warm-up that converged early skipped its remaining epochs
        "config": {**cfg, "batch_size": history.batch_size or config.batch_size,
                   "used_feature_cache": history.used_feature_cache,
                   "images_per_second": history.images_per_second, "plan": history.plan or cfg.get("plan")},
    }

