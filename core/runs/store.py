"""Finished and running training runs on disk: settings, metrics and weights, one folder each."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.data.encoded import Pending, read_pending, write_pending
from core.errors import CheckpointError, UserInputError
from core.models.backbones import load
from core.models.heads import Classifier, classifier, starting_model
from core.models.multitask import multitask_classifier, starting_multitask_model
from core.runs.uploads import UploadStore

__all__ = ["RunRecord", "RunStore", "new_run_id", "is_run_id", "FINISHED", "RECENT_SECONDS", "IN_VIEW_SECONDS", "EVENTS"]

_RUN_ID = re.compile(r"[0-9a-f]{16}")
FINISHED = ("finished", "failed", "cancelled", "diverged", "interrupted")
RECENT_SECONDS = 3600  # the disk cap never removes a run that finished less than this ago
IN_VIEW_SECONDS = 600  # ... nor one a page showed less than this ago (see RunStore.touch)
EVENTS = "events.jsonl"
INPUTS = "inputs.safetensors"
SOURCES = "sources"  # sources.bin / sources.json: pictures the worker encodes (core.data.encoded.Pending)
STOP = "stop"
VIEWED = "viewed"
WATCH = "watch.json"
WATCH_IMAGES = "watch_images.safetensors"


class _Uploads:
    """The uploaded weights files as the disk cap sees them: who each is charged to, and which no run uses."""

    def __init__(self, data_dir: Path, records: list, now: float):
        self.store = UploadStore(data_dir)
        self.now = now
        self.uses: dict[Path, int] = {}
        for r in records:
            weights = (r.config or {}).get("weights_file")
            if weights:
                path = Path(weights).resolve()
                self.uses[path] = self.uses.get(path, 0) + 1
        self.files = {p: (p.stat().st_size, p.stat().st_mtime, self.store.owners_of(p) or [""])
                      for p in self.store.files()}

    def charges(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for size, _, owners in self.files.values():
            for owner in owners:
                result[owner] = result.get(owner, 0) + size
        return result

    def _spare(self, owner: str) -> list[Path]:
        """``owner``'s uploads (theirs alone) that no run uses and that are over an hour old, oldest first."""
        spare = [p for p, (_, mtime, owners) in self.files.items()
                 if owners == [owner] and not self.uses.get(p.resolve()) and self.now - mtime >= RECENT_SECONDS]
        return sorted(spare, key=lambda p: self.files[p][1])

    def owners_with_spare(self) -> set[str]:
        return {owners[0] for p, (_, _, owners) in self.files.items() if len(owners) == 1 and self._spare(owners[0])}

    def remove_oldest(self, owner: str) -> tuple[list[str], int] | None:
        spare = self._spare(owner)
        if not spare:
            return None
        size, _, owners = self.files.pop(spare[0])
        self.store.remove(spare[0])
        return owners, size

    def forget_run(self, record) -> None:
        weights = (record.config or {}).get("weights_file")
        if weights:
            path = Path(weights).resolve()
            self.uses[path] = self.uses.get(path, 1) - 1


def new_run_id() -> str:
    """A random id: knowing it is what lets a browser reopen a run."""
    return secrets.token_hex(8)


def is_run_id(text: str | None) -> bool:
    # fullmatch: `$` in a plain match also accepts a trailing newline ("…\n" from a link's %0A)
    return isinstance(text, str) and _RUN_ID.fullmatch(text) is not None


@dataclass
class RunRecord:
    id: str
    status: str
    created: float
    backbone: str
    pretrained: bool
    classes: list[str]
    config: dict
    epochs: list[dict] = field(default_factory=list)
    message: str = ""
    owner: str = ""
    label: str = ""
    dataset: str = ""
    info: dict = field(default_factory=dict)
    finished: float | None = None
    worker_pid: int | None = None  # the process training it, while it trains

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    def final(self, key: str = "val_acc") -> float | None:
        return self.epochs[-1][key] if self.epochs else None


class RunStore:
    """One folder per run under ``root``: ``run.json``, ``start.safetensors`` (the random part of the
    starting model) and ``model.safetensors`` (the trained one)."""

    def __init__(self, root: str | Path, cap_mb: int | None = None):
        self.root = Path(root) / "runs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.cap_bytes = None if cap_mb is None else cap_mb * 2**20
        self._lock = threading.Lock()

    def _dir(self, run_id: str) -> Path:
        if not is_run_id(run_id):
            raise UserInputError("That run link is not valid.")
        return self.root / run_id

    def create(self, record: RunRecord) -> RunRecord:
        self._dir(record.id).mkdir(parents=True, exist_ok=False)
        self.save(record)
        return record

    def save(self, record: RunRecord) -> None:
        folder = self._dir(record.id)
        data = json.dumps(record.__dict__, indent=1, default=float)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
        os.replace(tmp, folder / "run.json")  # readers never see half a file

    def get(self, run_id: str) -> RunRecord | None:
        try:
            path = self._dir(run_id) / "run.json"
        except UserInputError:
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return RunRecord(**{k: v for k, v in data.items() if k in RunRecord.__dataclass_fields__})

    def list(self, owner: str | None = None) -> list[RunRecord]:
        records = []
        for folder in self.root.iterdir() if self.root.exists() else []:
            record = self.get(folder.name)
            if record is not None and (owner is None or record.owner == owner):
                records.append(record)
        return sorted(records, key=lambda r: r.created, reverse=True)

    def save_model(self, run_id: str, model: Classifier, state: dict | None = None) -> None:
        """The run's model file: ``model``'s weights, or ``state`` (a copy of them taken earlier)."""
        meta = {
            "backbone": model.backbone_name,
            "classes": json.dumps(model.classes),
            "image_size": str(model.image_size),
            "mean": json.dumps(list(model.mean)),
            "std": json.dumps(list(model.std)),
            "head_module": model.head_module,
        }
        if getattr(model, "tasks", None):  # a multi-task model: its heads' tasks and classes, in order
            meta["tasks"] = json.dumps(model.tasks)
        self._write(run_id, "model.safetensors", model.state_dict() if state is None else state, meta)

    def save_start(self, run_id: str, model: Classifier, pretrained: bool) -> None:
        """Keep the randomly initialised part of the model a run starts from: its head, or all of
        it without pretraining. Rebuilding from the seed alone is exact only when no other thread
        drew from torch's global generator meanwhile (another run's dropout can), so the run's
        "before" comes from this file."""
        state = model.state_dict()
        if pretrained:
            heads = tuple(f"{m}." for g in model.layer_groups if g.name == "head" for m in g.modules)
            state = {k: v for k, v in state.items() if k.startswith(heads)}
        self._write(run_id, "start.safetensors", state)

    def _write(self, run_id: str, name: str, state, meta: dict | None = None) -> None:
        """Write tensors to a run's folder all at once: a reader never sees half a file."""
        tmp = self._dir(run_id) / f"{name}.tmp"
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
        os.replace(tmp, self._dir(run_id) / name)

    @staticmethod
    def _read_into(model: Classifier, path: Path, what: str, strict: bool = True):
        """Load a safetensors file into ``model``; a damaged file or wrong shapes are a CheckpointError."""
        try:
            return model.load_state_dict(load_file(str(path), device="cpu"), strict=strict)
        except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
            raise CheckpointError(f"This run's {what} could not be read: {exc}") from None

    def has_model(self, run_id: str) -> bool:
        return (self._dir(run_id) / "model.safetensors").is_file()

    def load_model(self, run_id: str) -> Classifier:
        """A fresh copy of the run's trained model (never shared with another caller)."""
        record = self.get(run_id)
        path = self._dir(run_id) / "model.safetensors"
        if record is None or not path.is_file():
            raise CheckpointError("This run has no saved model (it may still be training, or it failed).")
        base = load(record.backbone, pretrained=False)
        size = int(record.config.get("image_size", base.image_size))
        if record.config.get("kind") == "multitask":  # one head per task, as the run trained it
            model = multitask_classifier(base, record.config["tasks"], record.config.get("head", "linear"),
                                         image_size=size)
        else:
            model = classifier(base, len(record.classes), classes=record.classes, image_size=size,
                               head=record.config.get("head", "linear"))
        self._read_into(model, path, "saved model")
        model.pretrained = record.pretrained
        return model.eval()

    def load_starting_model(self, run_id: str) -> Classifier:
        """The model this run started from: rebuilt from its backbone, seed and settings, with the
        random part it kept when it began (see save_start)."""
        record = self.get(run_id)
        if record is None:
            raise CheckpointError("No run with this id.")
        cfg = record.config
        weights = cfg.get("weights_file")
        if weights and not Path(weights).is_file():
            raise CheckpointError("The weights file this run started from is no longer on the server.")
        if cfg.get("kind") == "multitask":
            model = starting_multitask_model(
                record.backbone, cfg["tasks"], pretrained=record.pretrained, seed=int(cfg.get("seed", 0)),
                image_size=int(cfg.get("image_size", 224)), head=cfg.get("head", "linear"), weights_path=weights)
        else:
            model = starting_model(
                record.backbone, record.classes, pretrained=record.pretrained, seed=int(cfg.get("seed", 0)),
                image_size=int(cfg.get("image_size", 224)), head=cfg.get("head", "linear"), weights_path=weights,
            )
        kept = self._dir(run_id) / "start.safetensors"
        if kept.is_file():  # the run has begun: its random part as it really was
            unexpected = self._read_into(model, kept, "starting weights", strict=False).unexpected_keys
            if unexpected:
                raise CheckpointError(f"This run's starting weights do not fit its model ({unexpected[0]}, …).")
        return model.eval()

    def delete(self, run_id: str) -> None:
        shutil.rmtree(self._dir(run_id), ignore_errors=True)

    # --- the run folder as the contract between the app and whatever trains ----------------
    def folder(self, run_id: str) -> Path:
        return self._dir(run_id)

    def save_inputs(self, run_id: str, tensors: dict) -> None:
        """The run's training data for the worker to read: tensors (labels, images already encoded)
        as they are, and ``Pending`` images as the pictures themselves, which the worker encodes."""
        pending = {k: v for k, v in tensors.items() if isinstance(v, Pending)}
        self._write(run_id, INPUTS, {k: v for k, v in tensors.items() if k not in pending})
        if pending:
            write_pending(self._dir(run_id), pending, SOURCES)

    def load_inputs(self, run_id: str) -> dict:
        """The run's inputs with every image encoded at its size (in the worker: never in the server)."""
        folder = self._dir(run_id)
        try:
            return {**load_file(str(folder / INPUTS), device="cpu"), **read_pending(folder, SOURCES)}
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"This run's training data could not be read: {exc}") from None

    def drop_inputs(self, run_id: str) -> None:
        """The run's images are only needed while it trains: do not let them fill the disk."""
        for name in (INPUTS, f"{SOURCES}.bin", f"{SOURCES}.json", f"{SOURCES}.bin.tmp"):
            try:
                (self._dir(run_id) / name).unlink(missing_ok=True)
            except OSError:
                pass

    def save_watch(self, run_id: str, frames: list[dict], images=None) -> None:
        """The run's pinned validation images' frames (``History.watch`` as dicts) and, once, the
        images themselves (uint8 [pins, 3, H, W], in pin order): the player reads them after the run's
        inputs are gone."""
        if images is not None:
            self._write(run_id, WATCH_IMAGES, {"images": images})
        folder = self._dir(run_id)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump({"frames": frames}, fh, separators=(",", ":"))
        os.replace(tmp, folder / WATCH)

    def load_watch(self, run_id: str):
        """(frames, images or None) as ``save_watch`` wrote them; ([], None) for a run that watched none."""
        try:
            frames = json.loads((self._dir(run_id) / WATCH).read_text())["frames"]
        except (OSError, ValueError, KeyError, UserInputError):
            return [], None
        try:
            images = load_file(str(self._dir(run_id) / WATCH_IMAGES), device="cpu")["images"]
        except (SafetensorError, OSError, ValueError, KeyError):
            images = None
        return frames, images

    def read_events(self, run_id: str, offset: int = 0) -> tuple[list[dict], int]:
        """Complete lines of the run's events.jsonl from byte ``offset`` on, and the offset after them."""
        try:
            with open(self._dir(run_id) / EVENTS, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except (OSError, UserInputError):
            return [], offset
        end = chunk.rfind(b"\n") + 1  # a line being written is read next time
        events = []
        for line in chunk[:end].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events, offset + end

    def request_stop(self, run_id: str) -> None:
        """Ask whoever trains this run to stop (it checks for the file after every batch)."""
        try:
            (self._dir(run_id) / STOP).touch()
        except OSError:
            pass

    def stop_requested(self, run_id: str) -> bool:
        return (self._dir(run_id) / STOP).exists()

    def touch(self, run_id: str) -> None:
        """A page shows this run now: the disk cap leaves it alone for a while."""
        try:
            path = self._dir(run_id) / VIEWED
            if not path.exists() or time.time() - path.stat().st_mtime > 30:
                path.touch()
        except (OSError, UserInputError):
            pass

    def mark_interrupted(self) -> list[str]:
        """Runs left "queued" or "running" by a server that is gone (kill -9, power cut): say so.

        A run whose worker process is still alive is left alone. The best weights a run saved at
        its last epoch end stay, so it keeps what it had learned.
        """
        marked = []
        for record in self.list():
            if record.done or (record.worker_pid and _alive(record.worker_pid)):
                continue
            folder = self._dir(record.id)
            if (folder / "model.safetensors").is_file() and record.epochs:
                message = (f"The server stopped while this run was training. Its best weights so far "
                           f"(after epoch {len(record.epochs)} of {record.config.get('epochs', '?')}) are kept.")
            else:
                message = "The server stopped before this run had finished an epoch: train it again."
            self.save(RunRecord(**{**record.__dict__, "status": "interrupted", "message": message,
                                   "finished": record.finished or time.time(), "worker_pid": None}))
            self.drop_inputs(record.id)
            marked.append(record.id)
        return marked

    # --- the disk cap --------------------------------------------------------------------
    def usage_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file()) + self._uploads_bytes()

    def _uploads_bytes(self) -> int:
        uploads = self.root.parent / "uploads"
        return sum(f.stat().st_size for f in uploads.rglob("*") if f.is_file()) if uploads.is_dir() else 0

    def _protected(self, record: RunRecord, now: float) -> bool:
        if not record.done or now - (record.finished or record.created) < RECENT_SECONDS:
            return True
        viewed = self.root / record.id / VIEWED
        try:
            return now - viewed.stat().st_mtime < IN_VIEW_SECONDS
        except OSError:
            return False

    def enforce_cap(self, keep: frozenset[str] = frozenset()) -> list[str]:
        """Remove finished runs and unused uploads until the data folder (runs and uploads) is under its cap.

        The person using the most space (their runs and the weights files they uploaded) goes first:
        their oldest upload that no run uses, then their oldest run. Never a run that is going,
        finished in the last hour, was shown by a page in the last minutes, or is in ``keep``, nor an
        upload of the last hour. Whoever loses a run finds a note about it (``notes``).
        """
        if self.cap_bytes is None:
            return []
        removed = []
        now = time.time()
        with self._lock:
            sizes = {}
            for folder in self.root.iterdir():
                sizes[folder.name] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            total = sum(sizes.values()) + self._uploads_bytes()
            records = self.list()
            by_owner: dict[str, int] = {}
            for r in records:
                by_owner[r.owner] = by_owner.get(r.owner, 0) + sizes.get(r.id, 0)
            uploads = _Uploads(self.root.parent, records, now)
            for owner, size in uploads.charges().items():
                by_owner[owner] = by_owner.get(owner, 0) + size
            candidates = sorted((r for r in records if r.id not in keep and not self._protected(r, now)),
                                key=lambda r: r.finished or r.created)
            while total > self.cap_bytes:
                owners = {r.owner for r in candidates} | uploads.owners_with_spare()
                if not owners:
                    break
                # the person over their share the most loses their oldest unused upload, else their oldest run
                heaviest = max(owners, key=lambda o: by_owner.get(o, 0))
                freed = uploads.remove_oldest(heaviest)
                if freed is not None:
                    total -= freed[1]
                    for owner in freed[0]:
                        by_owner[owner] = by_owner.get(owner, 0) - freed[1]
                    continue
                victim = next(r for r in candidates if r.owner == heaviest)
                candidates.remove(victim)
                size = sizes.get(victim.id, 0)
                total -= size
                by_owner[victim.owner] = by_owner.get(victim.owner, 0) - size
                self.delete(victim.id)
                uploads.forget_run(victim)
                self._add_note(victim, now)
                removed.append(victim.id)
        return removed

    # --- notes to a person ---------------------------------------------------------------
    def _notes_path(self, owner: str) -> Path | None:
        if not is_run_id(owner):
            return None
        return self.root.parent / "notes" / f"{owner}.json"

    def _add_note(self, record: RunRecord, now: float) -> None:
        path = self._notes_path(record.owner)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        notes = self.notes(record.owner)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.created))
        notes.append(f"Your run “{record.label or record.id}” from {when} was removed to keep the server's "
                     "disk under its cap (the oldest runs of whoever uses the most space go first).")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(notes))
        os.replace(tmp, path)

    def notes(self, owner: str) -> list[str]:
        """What happened to this person's runs that they have not been told yet."""
        path = self._notes_path(owner)
        try:
            return list(json.loads(path.read_text())) if path is not None else []
        except (OSError, ValueError):
            return []

    def clear_notes(self, owner: str) -> None:
        path = self._notes_path(owner)
        if path is not None:
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def now() -> float:
    return time.time()
