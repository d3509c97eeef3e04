"""The command line over the same engine and run store as the app: ``python -m core.cli``.

    python -m core.cli train --data demo:source --backbone efficientnet_lite0 --strategy last_stage
    python -m core.cli train --data demo:target --backbone efficientnet_lite0 --config examples/CONFIG.json
    torchrun --standalone --nproc-per-node=2 -m core.cli train ...   # the same run, data parallel
    python -m core.cli export latest --format onnx --out model.onnx   # or a RUN_ID from list
    python -m core.cli list

``train`` creates a run folder in the store the app reads (``TRANSFER_LAB_DATA_DIR`` unless ``--data-dir``
says otherwise) with owner "command line" and trains it in this process with the app's worker code
(``core.runs.worker.train_run_folder``), shows a progress bar on stderr, and prints one JSON line
last: ``{"run_id", "status", "val_acc", "kept_epoch", "epochs", "world_size"}`` (``val_acc`` of the weights the
run keeps: its ``kept_epoch`` of ``epochs``). Exit status: 0 when the run finished, 2
for input a person can fix (the app's own messages), 1 otherwise. Under ``torchrun`` every rank
trains its share of each global batch (see ``core.train.distributed``); rank 0 alone writes.
Each command imports the engine when it runs, so ``--help`` and a mistyped argument answer at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path

from core.errors import ConfigError, DataError, UserInputError

__all__ = ["main", "config_for", "command_for", "OWNER", "load_data", "read_config"]

OWNER = "command line"
DEMO_LABEL = "Demo shapes"  # the app's name for the demo set (pages/ui/session.py), so runs read alike
DEFAULT_VAL_FRACTION = 0.25  # the app's defaults for the split
DEFAULT_PER_CLASS = 20


class _Stopped(BaseException):
    """The process was told to stop (SIGTERM: torchrun ends every rank when one of them fails).
    Not an Exception, so the worker's code lets it through instead of recording a crash."""


# --- data and settings --------------------------------------------------------------------


def load_data(spec: str, per_class: int = DEFAULT_PER_CLASS):
    """(dataset, label) for ``demo:source``, ``demo:target`` or the path of a ZIP of class folders."""
    from core import data

    if spec.startswith("demo:"):
        look = spec.split(":", 1)[1]
        if look not in ("source", "target"):
            raise DataError(f"Unknown demo set {spec!r}: use demo:source or demo:target.")
        return data.demo_dataset(look, per_class=per_class), f"{DEMO_LABEL} ({look} look)"
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"No file at {spec}: give demo:source, demo:target or the path of a ZIP of class folders.")
    ds, report = data.load_zip(path)
    if report.skipped:
        print(f"Skipped {len(report.skipped)} file(s) of {path.name}, e.g. {report.skipped[0][0]}: "
              f"{report.skipped[0][1]}", file=sys.stderr)
    return ds, path.name


def _check_demo_size(spec: str, per_class: int, size: int, cap_mb: int) -> None:
    """A demo set's size is known before it is drawn: refuse one too big for a dataset, or for the
    app's budget for one run's images, at once (it would otherwise grow for minutes first)."""
    from core.data import limits
    from core.data.demo import DEMO_CLASSES
    from core.data.encoded import check_count_budget

    if not spec.startswith("demo:"):
        return
    most = limits.MAX_ENTRIES // len(DEMO_CLASSES)
    if not 1 <= per_class <= most:
        raise ConfigError(f"--per-class must be between 1 and {most:,} (a dataset holds at most "
                          f"{limits.MAX_ENTRIES:,} images); it was {per_class:,}.")
    check_count_budget(per_class * len(DEMO_CLASSES), size, cap_mb * 2**20)


def read_config(path: str | None, group_names: list[str], strategy: str | None = None):
    """A TrainConfig from CONFIG.json's fields, on top of ``strategy``'s preset when one is given."""
    from core.train.base import TrainConfig
    from core.train.strategies import strategy_config

    values = {}
    if path:
        try:
            values = json.loads(Path(path).expanduser().read_text())
        except OSError as exc:
            raise ConfigError(f"The settings file {path} could not be read ({exc.strerror}).") from None
        except ValueError as exc:
            raise ConfigError(f"The settings file {path} is not valid JSON: {exc}.") from None
        except RecursionError:
            raise ConfigError(f"The settings file {path} is nested too deeply: it must hold one JSON object of "
                              "training settings (e.g. {\"epochs\": 3}).") from None
        if not isinstance(values, dict):
            raise ConfigError(f"The settings file {path} must hold one JSON object of training settings.")
    known = {f.name: f.default for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"Unknown settings in {path}: {', '.join(unknown)}. The settings are: {', '.join(sorted(known))}.")
    for name, value in values.items():
        _check_type(name, value, known[name], path)
    if strategy and "warmup_epochs" not in values:
        values = _clamped_warmup(strategy, group_names, values)
    try:
        config = strategy_config(strategy, group_names, **values) if strategy else TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"The settings in {path} do not fit: {exc}.") from None
    config.validate(group_names)
    return config


def _clamped_warmup(strategy: str, group_names: list[str], values: dict) -> dict:
    """A preset's head warm-up lowered to one less than the file's epochs, as the Train page does
    (last_stage warms up for at most 30 epochs: with {"epochs": 2} it was refused)."""
    from core.train.strategies import strategy_config

    preset = strategy_config(strategy, group_names)
    epochs = values.get("epochs", preset.epochs)
    if not isinstance(epochs, int) or preset.warmup_epochs <= max(0, epochs - 1):
        return values
    print(f"note: the {strategy} preset's head warm-up of (at most) {preset.warmup_epochs} epochs is lowered to "
          f"{max(0, epochs - 1)}, one less than the {epochs} epochs.", file=sys.stderr)
    return {**values, "warmup_epochs": max(0, epochs - 1)}


def _check_type(name: str, value, default, path) -> None:
    """A setting must have its default's kind: true is not a number of epochs (it trained one)."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        kind = "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "text"
    else:
        return  # lists and mappings: TrainConfig.validate checks their contents
    if not ok:
        raise ConfigError(f"The setting {name} in {path} must be {kind}, not {json.dumps(value)[:40]}.")


# --- a run as a command ----------------------------------------------------------------------


def config_for(record) -> dict:
    """The CONFIG.json that reproduces ``record``: its TrainConfig fields, nothing derived."""
    from core.train.base import TrainConfig

    names = [f.name for f in fields(TrainConfig)]
    return {k: record.config[k] for k in names if k in record.config}


def _data_spec(record) -> str:
    given = record.config.get("data")
    if given:
        return given
    for look in ("source", "target"):
        if record.dataset == f"{DEMO_LABEL} ({look} look)":
            return f"demo:{look}"
    # an uploaded ZIP is named as it was uploaded; anything else has to be exported from the Data page
    return record.dataset if record.dataset.lower().endswith(".zip") else "YOUR_IMAGES.zip"


def command_for(record, config_path: str = "CONFIG.json", weights: str | None = None) -> str:
    """The shell command that trains ``record`` again (with ``config_for(record)`` in ``config_path``).
    ``weights`` stands for the weights file the run started from, instead of its path on the server."""
    cfg = record.config
    spec = _data_spec(record)
    parts = ["python", "-m", "core.cli", "train", "--data", spec, "--backbone", record.backbone,
             "--config", config_path]
    if spec.startswith("demo:"):
        n = int(cfg.get("n_train", 0)) + int(cfg.get("n_val", 0))
        per_class = cfg.get("per_class") or (n // len(record.classes) if n and record.classes else DEFAULT_PER_CLASS)
        if per_class != DEFAULT_PER_CLASS:
            parts += ["--per-class", str(per_class)]
    fraction = cfg.get("val_fraction")
    if fraction is None and cfg.get("n_val") and cfg.get("n_train"):
        # the app does not record its split: its validation share is a slider in steps of 0.05
        fraction = round(cfg["n_val"] / (cfg["n_val"] + cfg["n_train"]) / 0.05) * 0.05
    if fraction is not None and not math.isclose(fraction, DEFAULT_VAL_FRACTION):
        parts += ["--val-fraction", f"{fraction:g}"]
    if cfg.get("split_seed"):
        parts += ["--split-seed", str(cfg["split_seed"])]
    if cfg.get("weights_file"):
        parts += ["--weights", weights or cfg["weights_file"]]
    elif not record.pretrained:
        parts.append("--scratch")
    if cfg.get("head", "linear") != "linear":
        parts += ["--head", cfg["head"]]
    return shlex.join(parts)


# --- training ------------------------------------------------------------------------------


def _progress_log(path: Path, total_epochs: int):
    """The run's event log, which also draws a progress bar on stderr: the caches first, then the
    steps, with the last loss."""
    from tqdm import tqdm

    from core.runs.recording import EventLog

    class ProgressLog(EventLog):
        bar = None

        def on_fit_start(self, info) -> None:
            super().on_fit_start(info)
            if self.bar is not None:  # a retry at half the batch starts over
                self.bar.close()
            self.bar = tqdm(total=1000, file=sys.stderr, unit="‰", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
                            disable=None)  # a log file gets the per-epoch lines, not a bar
            self.bar.set_description("training")

        def on_batch_end(self, progress) -> None:
            super().on_batch_end(progress)
            self.bar.set_description("features" if progress.phase == "cache" else f"epoch {progress.epoch}/{total_epochs}")
            if progress.phase == "train":
                self.bar.set_postfix_str(f"loss {progress.loss:.3f}")
            self.bar.n = int(progress.fraction * 1000)
            self.bar.refresh()

        def on_epoch_end(self, metrics) -> None:
            super().on_epoch_end(metrics)
            self.bar.write(f"epoch {metrics.epoch}: train loss {metrics.train_loss:.4f}, "
                           f"val loss {metrics.val_loss:.4f}, val acc {metrics.val_acc:.1%}", file=sys.stderr)

        def on_fit_end(self, history) -> None:
            if self.bar is not None:
                self.bar.close()

    return ProgressLog(path)


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: the failure is being written
    raise _Stopped()


def _create_folder(store, args, config, train_ds, val_ds, label: str, world: int):
    """The run's folder (record and encoded images), as the app writes one, with what reproduces it."""
    from dataclasses import replace

    from core.runs.jobs import check_budget, encode_inputs, new_record

    pretrained = not args.scratch and args.weights is None
    record = new_record(train_ds, val_ds, backbone=args.backbone, pretrained=pretrained, config=config,
                        weights_path=args.weights, head=args.head, owner=OWNER, label=args.label, dataset=label)
    record = replace(record, info={"world_size": world}, config={
        **record.config, "data": args.data, "per_class": args.per_class, "val_fraction": args.val_fraction,
        "split_seed": args.split_seed, "world_size": world})
    inputs = encode_inputs(train_ds, val_ds, int(config.image_size))
    check_budget(inputs)  # the app's budget for one run's images
    store.create(record)
    store.save_inputs(record.id, inputs)
    return record.id


def train(args) -> int:
    """Write a run folder and train it in this process with the app's workers' code
    (``core.runs.worker.train_run_folder``); under ``torchrun`` rank 0 writes the folder and every
    rank trains from it."""
    import torch

    from core import data
    from core.models import backbones
    from core.runs import worker
    from core.runs.kept import kept_epoch_number, kept_metric
    from core.runs.store import EVENTS, RunStore
    from core.settings import get_settings

    settings = get_settings()
    group_names = backbones.group_names(args.backbone)
    config = read_config(args.config, group_names, args.strategy)
    _check_demo_size(args.data, args.per_class, int(config.image_size), settings.max_run_inputs_mb)
    ds, label = load_data(args.data, args.per_class)
    train_ds, val_ds = data.split(ds, args.val_fraction, args.split_seed)
    if len(train_ds.classes) < 2:
        raise DataError("Training needs at least two classes.")

    distributed = _distributed(config)
    world = distributed.world_size if distributed else 1
    main_rank = distributed is None or distributed.main

    store = RunStore(_data_dir(args.data_dir, settings.data_dir), cap_mb=settings.disk_cap_mb)
    run_id = [_create_folder(store, args, config, train_ds, val_ds, label, world) if main_rank else None]
    if distributed is not None:
        torch.distributed.broadcast_object_list(run_id, src=0)  # every rank trains from rank 0's folder
    run_id = run_id[0]
    folder = store.folder(run_id)
    log = _progress_log(folder / EVENTS, config.epochs) if main_rank else None
    status = "failed"
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        # input a person can fix raises once the record says so: main() says it too, and exits with 2
        status = worker.train_run_folder(folder, distributed=distributed, log=log, raise_input_errors=True)
    except (_Stopped, KeyboardInterrupt):  # the folder's record is left as it was: say what happened
        status = "failed" if world > 1 else "cancelled"
        why = ("A process of this distributed run stopped (it was killed or crashed), so torchrun ended "
               "the others. Train it again." if world > 1 else "The run was stopped before it finished.")
        if main_rank:
            _stopped(store, run_id, status, why, log)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if main_rank:
            if status == "finished":
                store.enforce_cap(keep=frozenset({run_id}))
            record = store.get(run_id)
            val = kept_metric(record) if record is not None else None  # of the weights the run keeps
            print(json.dumps({"run_id": run_id, "status": status,
                              "val_acc": None if val is None or math.isnan(val) else val,
                              "kept_epoch": kept_epoch_number(record) if record is not None else None,
                              "epochs": len(record.epochs) if record is not None else 0, "world_size": world}),
                  flush=True)
        if distributed is not None and status != "failed":  # after a lost peer it could wait forever
            torch.distributed.destroy_process_group()
    return 0 if status == "finished" else 1


def _distributed(config):
    """This process's share of a ``torchrun`` job (checked against the batch), or None outside one."""
    from core.devices import pick_device
    from core.train.distributed import Distributed, launched_by_torchrun

    if not launched_by_torchrun():
        return None
    distributed = Distributed.from_env(pick_device(config.device).type)
    distributed.check(config.batch_size)
    return distributed


def _stopped(store, run_id: str, status: str, why: str, log) -> None:
    """The record of a run this process was told to stop mid-fit (SIGTERM, Ctrl-C)."""
    from dataclasses import replace

    record = store.get(run_id)
    kept = " Its best weights so far are kept." if store.has_model(run_id) else " It has no saved model."
    store.save(replace(record, status=status, message=why + kept, finished=time.time(), worker_pid=None))
    store.drop_inputs(run_id)
    if log is not None:
        log.write("end", status=status, message=why + kept)
        log.close()


# --- the other commands ----------------------------------------------------------------------


def train_folder(args) -> int:
    """Train a run folder the app made (``torchrun`` ranks share it; rank 0 alone writes)."""
    import torch

    from core.runs import worker
    from core.runs.store import RunStore
    from core.train.base import TrainConfig

    folder = Path(args.folder)
    record = RunStore(folder.parent.parent).get(folder.name)
    if record is None:
        raise UserInputError(f"There is no run in {folder}.")
    distributed = _distributed(TrainConfig.from_dict(record.config))
    try:
        status = worker.train_run_folder(folder, distributed=distributed)
    finally:
        if distributed is not None:
            torch.distributed.destroy_process_group()
    return 0 if status == "finished" else 1


def _store(args):
    from core.runs.store import RunStore
    from core.settings import get_settings

    return RunStore(_data_dir(args.data_dir, get_settings().data_dir))


def _data_dir(given: str | None, default: Path) -> Path:
    """The run store's folder, or a ConfigError when it names a file (``--data-dir /etc/passwd``)."""
    folder = Path(given).expanduser() if given else Path(default)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise ConfigError(f"The data folder {folder} cannot be used: {part} is a file, not a folder. "
                              "Give --data-dir a folder (it is made if missing).")
        if part.exists():
            break
    return folder


def export(args) -> int:
    from core import export as exporting

    store = _store(args)
    if args.run_id == "latest":  # the newest run that saved a model, so an example can run as written
        newest = next((r.id for r in store.list() if store.has_model(r.id)), None)
        if newest is None:
            raise UserInputError(f"No run in {store.root} has a model yet: train one first.")
        args.run_id = newest
    if store.get(args.run_id) is None:
        raise UserInputError(f"No run {args.run_id!r} in {store.root}: `python -m core.cli list` shows the runs.")
    model = store.load_model(args.run_id)
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    exporter = {"safetensors": exporting.export_safetensors, "torchscript": exporting.export_torchscript,
                "onnx": exporting.export_onnx}[args.format]
    path = exporter(model, out)
    print(json.dumps({"run_id": args.run_id, "format": args.format, "path": str(path)}), flush=True)
    return 0


def list_runs(args) -> int:
    from core.runs.kept import kept_epoch_number, kept_label, kept_metric
    from core.runs.kinds.lr_find import SWEEP_KIND

    # the runs that train a model: a learning-rate sweep keeps only its curve, for the page that asked
    runs = [r for r in _store(args).list() if r.config.get("kind") != SWEEP_KIND]
    if args.json:
        print(json.dumps([{"run_id": r.id, "status": r.status, "owner": r.owner, "backbone": r.backbone,
                           "dataset": r.dataset, "val_acc": kept_metric(r), "kept_epoch": kept_epoch_number(r),
                           "epochs": len(r.epochs), "created": r.created,
                           "world_size": r.info.get("world_size", 1)} for r in runs]), flush=True)
        return 0
    for r in runs:  # the accuracy of the weights each run keeps, and which epoch's they are
        val = kept_metric(r)
        acc = "-" if val is None or math.isnan(val) else f"{val:.1%}"
        kept = f"  ({kept_label(r)})" if r.epochs else ""
        print(f"{r.id}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.created))}  {r.status:<9}  "
              f"{acc:>6}  {r.backbone}  {r.dataset}  ({r.owner or 'app'}){kept}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.cli", description="Transfer Lab without the browser.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a run into the run store the app reads")
    t.add_argument("--data", required=True, help="demo:source, demo:target or PATH.zip (one folder per class)")
    t.add_argument("--backbone", required=True, help="e.g. efficientnet_lite0 (bundled, works offline)")
    t.add_argument("--config", help="CONFIG.json: TrainConfig fields, which override the strategy's")
    t.add_argument("--strategy", help="feature_extraction, last_stage, progressive or full")
    t.add_argument("--data-dir", help="the app's data folder (default: $TRANSFER_LAB_DATA_DIR)")
    t.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS, help="images per class of a demo set")
    t.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    t.add_argument("--split-seed", type=int, default=0)
    t.add_argument("--head", default="linear", choices=["linear", "mlp"])
    t.add_argument("--scratch", action="store_true", help="start from random weights, not ImageNet's")
    t.add_argument("--weights", help="start from this state_dict file (.pt, .pth, .safetensors)")
    t.add_argument("--label", default="", help="the run's name in the app")
    e = sub.add_parser("export", help="write a finished run's model to a file")
    e.add_argument("run_id", help="a run's id (python -m core.cli list), or latest: the newest run with a model")
    e.add_argument("--format", required=True, choices=["safetensors", "torchscript", "onnx"])
    e.add_argument("--out", required=True)
    e.add_argument("--data-dir")
    f = sub.add_parser("train-folder", help="train a run folder the app prepared (the app runs this under torchrun)")
    f.add_argument("folder")
    ls = sub.add_parser("list", help="the runs in the store, newest first")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--data-dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = {"train": train, "train-folder": train_folder, "export": export, "list": list_runs}[args.command]
    try:
        return command(args)
    except UserInputError as exc:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank meets it: say it once
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except RecursionError:  # input nested beyond what can be read (a data file, a config)
        print("error: the input is nested too deeply to be read.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
