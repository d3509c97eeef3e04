"""The ``"meta"`` kind: meta-training (MAML, first-order MAML, ANIL) in a worker process over a run
folder, scored after its last epoch on episodes of the novel classes it never trained on."""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch

from core.data.encoded import EncodedDataset, Pending
from core.errors import ConfigError, DataError
from core.methods.episodes import ClassSplit, sample_episodes
from core.methods.fewshot import (
    META_METHODS,
    MetaConfig,
    evaluate,
    few_shot_model,
    meta_config,
    meta_train,
    meta_train_config,
)
from core.models import backbones
from core.models.heads import Classifier
from core.runs.recording import fit_info, status_of
from core.runs.store import RunRecord, new_run_id
from core.train.base import Callback, training_plan

__all__ = ["meta_run", "load_meta_run", "train_folder"]


def meta_run(dataset, split: ClassSplit, method: str = "anil", n_way: int = 5, k_shot: int = 5,
             config: MetaConfig | None = None, *, backbone: str = backbones.DEFAULT_BACKBONE, owner: str = "",
             dataset_label: str = "", eval_episodes: int = 100):
    """A queued meta-training run's record and its inputs, for ``core.runs.jobs.start_folder_run``.

    The record's classes are the head's ways ("way 1" … "way N"), so ``RunStore.load_model``
    rebuilds the meta-trained model; the base and novel class names go into its config. The
    inputs are the base-class images (trained on) and the novel-class ones (scored after each epoch,
    and on ``eval_episodes`` episodes with 1 and 5 shots at the end).
    """
    if method not in META_METHODS:
        raise ConfigError(f"{method!r} is not meta-learned; choose one of {', '.join(META_METHODS)}.")
    config = config or meta_config(method)
    classes = list(dataset.classes)
    labels = np.asarray(dataset.labels)
    base_ids = [classes.index(c) for c in split.base]
    novel_ids = [classes.index(c) for c in split.novel]
    # the worker would fail on these: say so now, on the page
    sample_episodes(labels, base_ids, n_way, k_shot, config.n_query, 1, names=classes)
    sample_episodes(labels, novel_ids, n_way, k_shot, config.n_query, 1, names=classes)
    base_idx = np.flatnonzero(np.isin(labels, base_ids))
    novel_idx = np.flatnonzero(np.isin(labels, novel_ids))
    train = meta_train_config(backbones.group_names(backbone), config)
    ways = [f"way {i + 1}" for i in range(n_way)]
    names = {"anil": "ANIL", "maml": "MAML", "fomaml": "First-order MAML"}
    record = RunRecord(
        id=new_run_id(), status="queued", created=time.time(), backbone=backbone, pretrained=True, classes=ways,
        config={**train.to_dict(), "kind": "meta", "method": method, "n_way": n_way, "k_shot": k_shot,
                "meta": asdict(config), "base_classes": list(split.base), "novel_classes": list(split.novel),
                "n_train": len(base_idx), "n_val": len(novel_idx), "eval_episodes": int(eval_episodes),
                "head": "linear", "weights_file": None,
                "plan": training_plan(backbones.group_names(backbone), train)},
        owner=owner, label=f"{names[method]} meta-training, {n_way}-way {k_shot}-shot", dataset=dataset_label)

    def inputs() -> dict[str, torch.Tensor]:
        # labels renumbered within each part, in the order of the record's class lists
        remap = lambda ids, idx: torch.as_tensor([ids.index(int(y)) for y in labels[idx]])  # noqa: E731
        return {"train_images": Pending(_subset(dataset, base_idx), config.image_size),
                "train_labels": remap(base_ids, base_idx),
                "val_images": Pending(_subset(dataset, novel_idx), config.image_size),
                "val_labels": remap(novel_ids, novel_idx)}

    return record, inputs


def _subset(ds, indices: np.ndarray):
    return ds.subset(indices.tolist()) if hasattr(ds, "subset") else [ds[i] for i in indices]


def load_meta_run(store, run_id: str) -> tuple[Classifier, MetaConfig, dict]:
    """A finished meta-training run's model, its MetaConfig and its config (method, n_way, classes …)."""
    record = store.get(run_id)
    if record is None or record.config.get("kind") != "meta":
        raise ConfigError("This run is not a meta-training run.")
    known = MetaConfig.__dataclass_fields__
    return store.load_model(run_id), MetaConfig(**{k: v for k, v in record.config["meta"].items() if k in known}), \
        record.config


class _EpochRecord(Callback):
    """Keeps the run's record and weights current at each epoch end, so an interrupted run keeps them.
    The latest weights, not the best: "best" could only be judged on the novel classes, which are
    for scoring, not for choosing the model."""

    def __init__(self, store, run_id: str, model: Classifier, save):
        self.store, self.run_id, self.model, self.save = store, run_id, model, save
        self.epochs: list[dict] = []

    def on_fit_start(self, info) -> None:
        self.epochs = []  # a retry after running out of GPU memory starts over
        self.save(info=asdict(info))

    def on_epoch_end(self, metrics) -> None:
        self.epochs.append(asdict(metrics))
        self.store.save_model(self.run_id, self.model)
        self.save(epochs=list(self.epochs))


def train_folder(store, record, stop, log, save, distributed=None):
    """Meta-train the run folder's model (``core.runs.registry.KINDS["meta"]``); returns (status, message,
    record changes) like ``core.runs.kinds.classify.train_folder``. After the last epoch the model is scored
    on novel-class episodes with 1 and 5 shots (``info["novel"]``)."""
    if distributed is not None and not distributed.main:
        # episodes are not split between processes: rank 0 meta-trains alone, the others wait
        return "finished", "", {}
    cfg = record.config
    known = MetaConfig.__dataclass_fields__
    meta = MetaConfig(**{k: v for k, v in cfg["meta"].items() if k in known})
    n_way, k_shot = int(cfg["n_way"]), int(cfg["k_shot"])
    inputs = store.load_inputs(record.id)
    base = EncodedDataset(inputs["train_images"], inputs["train_labels"].tolist(), cfg["base_classes"])
    novel = None
    if "val_images" in inputs and len(inputs["val_labels"]):
        novel = EncodedDataset(inputs["val_images"], inputs["val_labels"].tolist(), cfg["novel_classes"])
    del inputs
    model = few_shot_model(backbones.load(record.backbone, pretrained=record.pretrained), n_way, meta.image_size,
                           seed=meta.seed)
    store.save_start(record.id, model, record.pretrained)
    callbacks = [_EpochRecord(store, record.id, model, save), log]  # weights first, then news
    history = meta_train(model, base, n_way, k_shot, meta, callbacks, stop, novel_ds=novel)
    status = status_of(history.stopped)
    info = {**fit_info(store, record.id), **record.info}
    if history.epochs:
        store.save_model(record.id, model)
    if status == "finished" and novel is not None:
        model.cpu()
        scores = {}
        split = ClassSplit((), tuple(novel.classes))
        for k in (1, 5):
            try:
                r = evaluate(model, novel, cfg["method"], n_way, k, n_query=meta.n_query,
                             episodes=int(cfg.get("eval_episodes", 100)), seed=meta.seed, split=split, meta=meta,
                             meta_model=model)
            except DataError:  # too few novel images for this many shots: that figure is left out
                continue
            scores[str(k)] = {"mean": r.mean, "ci95": r.ci95, "curve": r.curve, "episodes": len(r.per_episode)}
        info["novel"] = scores
    return status, history.message, {"epochs": [asdict(e) for e in history.epochs], "info": info}
