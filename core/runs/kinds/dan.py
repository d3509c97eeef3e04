"""The ``"dan"`` kind: plain fine-tuning and DAN from the same start (``compare_adaptation``), in a
worker process over a run folder, and the comparison read back from its record."""

from __future__ import annotations

from dataclasses import asdict, replace

from core.analysis.domain import HEAD_INPUT
from core.data.encoded import EncodedDataset, Pending, labels_of
from core.errors import ConfigError, UserInputError
from core.methods.adaptation import (
    DEFAULT_LAMBDA,
    AdaptationComparison,
    ArmResult,
    DANEpoch,
    DANHistory,
    check_adaptable,
    compare_adaptation,
)
from core.models.backbones import DEFAULT_BACKBONE, load
from core.models.heads import classifier
from core.runs.jobs import encode_inputs, new_record, start_folder_run
from core.runs.recording import ArmRecorder, status_of
from core.runs.store import RunStore
from core.settings import get_settings
from core.train.base import TrainConfig

__all__ = ["start_comparison", "train_folder", "comparison_of"]


def start_comparison(source_train, source_val, target_ds, config: TrainConfig, lam: float = DEFAULT_LAMBDA,
                     layer: str | None = None, *, store=None, backbone: str = DEFAULT_BACKBONE,
                     pretrained: bool = True, head: str = "linear", target_eval=None, owner: str = "",
                     label: str = "", dataset: str = "", queue=None):
    """Queue a plain-vs-DAN comparison (:func:`compare_adaptation`) as a run trained in a worker
    process over its folder, after checking the settings now (so a page can show the error at once).

    Returns the ``core.runs.jobs.TrainingRun``; once it ends, :func:`comparison_of` reads the result
    from the run's record. ``target_eval``: ``None`` or ``target_ds`` (its labels score the arms).
    """
    classes = list(source_train.classes)
    if len(classes) < 2:
        raise UserInputError("Adaptation needs a labelled source set with at least two classes.")
    if target_eval is not None and target_eval is not target_ds:
        raise ConfigError("A comparison in the background scores the target set itself: pass target_eval=None "
                          "or the target set.")
    layer = HEAD_INPUT if layer is None else layer
    # an untrained skeleton of the same architecture is enough to check the layer and the freezing
    skeleton = classifier(load(backbone, pretrained=False), len(classes))
    check_adaptable(skeleton, config, lam, layer)
    if len(target_ds) < 2:
        raise ConfigError("Adaptation needs at least two target images.")
    target_classes = list(getattr(target_ds, "classes", []))
    # compare_adaptation's own rule: a target set with the source's classes is scored by its labels
    labelled = target_eval is target_ds or (target_eval is None and target_classes == classes)
    record = new_record(source_train, source_val, backbone=backbone, pretrained=pretrained, config=config, head=head,
                        owner=owner, label=label or f"{backbone}: plain vs DAN (λ = {float(lam):g})", dataset=dataset)
    record = replace(record, config={**record.config, "kind": "dan", "lam": float(lam), "layer": layer,
                                     "target_classes": target_classes, "target_labelled": labelled,
                                     "n_target": len(target_ds)})
    size = int(config.image_size)

    def inputs() -> dict:
        tensors = encode_inputs(source_train, source_val, size)
        tensors["target_images"], tensors["target_labels"] = Pending(target_ds, size), labels_of(target_ds)
        return tensors

    return start_folder_run(store if store is not None else RunStore(get_settings().data_dir), record, inputs,
                            queue=queue)


def train_folder(store, record, stop, log, save, distributed=None):
    """A worker's body for a ``"dan"`` run folder: both arms of :func:`compare_adaptation`, in turn.

    Each arm's epochs reach the record as they end (``info["arms"]``), the DAN arm's best weights
    so far are the run's model, and the final record holds both arms' histories (see
    :func:`comparison_of`)."""
    if distributed is not None and not distributed.main:
        return "finished", "", {}  # an adaptation trains in one process: rank 0 alone
    cfg = record.config
    config = TrainConfig.from_dict(cfg)
    inputs = store.load_inputs(record.id)
    train = EncodedDataset(inputs["train_images"], inputs["train_labels"].tolist(), record.classes)
    val = EncodedDataset(inputs["val_images"], inputs["val_labels"].tolist(), record.classes)
    target = EncodedDataset(inputs["target_images"], inputs["target_labels"].tolist(), cfg["target_classes"])
    del inputs
    arms: dict = {}

    def changed() -> None:
        save(info={**record.info, "arms": arms})

    def callbacks_for(name: str):
        index = 0 if name == "plain" else 1
        log.arm(name, index, 2)
        arms[name] = {"lam": 0.0 if name == "plain" else float(cfg["lam"])}
        keep = (store, record.id) if name == "DAN" else (None, "")  # the adapted model is the run's model
        return [ArmRecorder(arms, name, changed, *keep), log]

    try:
        result = compare_adaptation(train, val, target, config, float(cfg["lam"]), cfg.get("layer", HEAD_INPUT),
                                    backbone=record.backbone, pretrained=record.pretrained,
                                    head=cfg.get("head", "linear"), target_eval=target if cfg["target_labelled"] else None,
                                    callbacks_for=callbacks_for, stop=stop, keep_models=True)
    except UserInputError:
        if stop.is_set():
            return "cancelled", "The comparison was stopped before both arms had trained.", {"info": {**record.info, "arms": arms}}
        raise
    store.save_model(record.id, result.dan.model)
    for arm in result.arms:
        arms[arm.name].update(lam=arm.lam, mmd_before=arm.mmd_before, mmd_after=arm.mmd_after, seconds=arm.seconds,
                              stopped=arm.history.stopped, message=arm.history.message,
                              epochs=[asdict(e) for e in arm.history.epochs])
    # an early stop of one arm is a finished arm; a cancelled or diverged one ends the comparison so
    stopped = next((h.stopped for h in (result.dan.history, result.plain.history)
                    if h.stopped in ("cancelled", "diverged")), None)
    status = status_of(stopped)
    message = result.dan.history.message or result.plain.history.message
    return status, message, {"epochs": arms["DAN"]["epochs"],
                             "info": {**record.info, "arms": arms, "layer": result.layer, "seconds": result.seconds}}


def comparison_of(record) -> AdaptationComparison | None:
    """The comparison a ``"dan"`` run's record holds, once both arms have trained (else None)."""
    arms = (record.info or {}).get("arms", {}) if record is not None else {}
    if record is None or not record.done or not all("mmd_before" in arms.get(n, {}) for n in ("plain", "DAN")):
        return None
    layer = record.info.get("layer", record.config.get("layer", HEAD_INPUT))

    def arm(name: str) -> ArmResult:
        kept = arms[name]
        epochs = [DANEpoch(**{k: v for k, v in e.items() if k in DANEpoch.__dataclass_fields__}) for e in kept["epochs"]]
        history = DANHistory(epochs=epochs, stopped=kept.get("stopped"), message=kept.get("message", ""),
                             lam=kept["lam"], layer=layer, mmd_before=kept["mmd_before"])
        return ArmResult(name, kept["lam"], history, kept["mmd_before"], kept["mmd_after"], kept["seconds"])

    return AdaptationComparison(arm("plain"), arm("DAN"), layer, float(record.info.get("seconds", 0.0)))
