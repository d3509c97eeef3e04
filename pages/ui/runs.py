"""This person's runs: the server's run store, their runs and their live state, and how a run is named."""

from __future__ import annotations

import time

import streamlit as st

from core.cli import OWNER
from core.models import DEFAULT_BACKBONE
from core.runs.jobs import get_job, snapshot_of
from core.runs.kept import kept_epoch_number, kept_label, kept_metric, kept_phase, trained_groups_by
from core.runs.store import RunStore
from core.runs.uploads import UploadStore
from core.settings import get_settings

__all__ = ["run_store", "upload_store", "my_runs", "run_status", "stop_run", "run_curves", "run_progress", "waiting_text",
           "frozen_groups", "unchanged_groups", "weights_caption", "first_trained_epoch", "run_strategy", "describe_run", "run_option", "finished_runs"]


def run_store() -> RunStore:
    """The server's one run store (it holds no per-person state in memory), for the data folder
    the settings name now."""
    settings = get_settings()
    return _run_store(str(settings.data_dir), settings.disk_cap_mb)


@st.cache_resource
def _run_store(data_dir: str, cap_mb: int) -> RunStore:
    store = RunStore(data_dir, cap_mb=cap_mb)
    # Once per server start: runs a killed server left "running" say so, instead of forever.
    store.mark_interrupted()
    return store


@st.cache_resource
def upload_store() -> UploadStore:
    """Uploaded weights files, kept by content hash (shared: equal files are stored once)."""
    settings = get_settings()
    return UploadStore(settings.data_dir, quota_bytes=settings.upload_quota_mb * 2**20)


def my_runs(kinds=("train", "multitask")):
    """This browser's runs of these kinds (by its owner secret), newest first: by default the runs
    that train a classifier (one head, or one per task). A DAN comparison, a distillation or a
    meta-training is a run too (``config["kind"]``), shown on its own page, not among these."""
    return [r for r in run_store().list(owner=st.session_state.owner) if r.config.get("kind", "train") in kinds]


def run_status(run_id: str):
    """(snapshot or None, record or None): live state while the run is queued here or a worker
    trains it; a page showing a run keeps the disk cap away from it."""
    store = run_store()
    store.touch(run_id)
    job = get_job(run_id)
    if job is not None:
        return job.snapshot(), store.get(run_id)
    record = store.get(run_id)
    if record is not None and not record.done and record.worker_pid:  # trained by another process
        return snapshot_of(store, run_id), record
    return None, record


def stop_run(run_id: str) -> None:
    """Ask a run to stop: its task when this server queued it, else its folder's worker."""
    job = get_job(run_id)
    job.cancel() if job is not None else run_store().request_stop(run_id)


def run_curves(snap, record) -> tuple[list[dict], tuple, str]:
    """(epochs as dicts, batch losses, message) of a run: live from its snapshot while this server
    follows it, else from its record."""
    if snap is not None:
        return [e.__dict__ for e in snap.epochs], snap.batch_losses, snap.message
    return record.epochs, (), record.message


def run_progress(run_id: str, snap, text, stop_label: str = "Stop", can_stop: bool = True) -> None:
    """A going run's place in the queue, or its progress bar with ``text()``, and its Stop button."""
    if snap.status == "queued":
        st.info(waiting_text(snap.queue_position))
    else:
        st.progress(snap.progress, text=text())
    if can_stop and st.button(stop_label, icon=":material/stop:"):
        stop_run(run_id)


def waiting_text(position: int | None) -> str:
    """What a run that has not started training says: its place in the line only while it waits in
    one. Before it joins the line it is saving its images (2-4 s on a busy server), and with nothing
    queued "number 1 in the queue" told a student to wait for others who were not there."""
    if position is None:
        return "Getting the run ready: saving its images for the training process…"
    return f"Waiting for a free training slot: number {position} in the queue."


def frozen_groups(record) -> list[str]:
    """The layer groups that never trained in a run, read from the run's own saved plan
    (per epoch, group -> learning-rate multiplier; 0 = frozen that epoch). A progressive-
    unfreezing run freezes groups through its plan, not through config["freeze"]."""
    plan = record.config.get("plan") or []
    if not plan:
        return list(record.config.get("freeze", []))
    return [g for g in plan[0] if all(epoch.get(g, 0) <= 0 for epoch in plan)]


def unchanged_groups(record) -> list[str]:
    """The layer groups the run's kept weights have never trained: those frozen throughout, and
    those that unfroze only after the kept epoch (a progressive run kept before a stage joined)."""
    trained = trained_groups_by(record)
    if trained is None:
        return frozen_groups(record)
    return [g for g in record.config["plan"][0] if g not in trained]


def weights_caption(record) -> str:
    """Which epoch's weights a page shows for a run, and which groups had not trained by then."""
    label = kept_label(record)
    if not label:
        return ""
    phase = {"warm-up": " (the warm-up's head: the body had not trained yet)",
             "fine-tuning": " (a fine-tuned epoch)"}.get(kept_phase(record), "")
    late = [g for g in unchanged_groups(record) if g in first_trained_epoch(record)]
    later = (f" {', '.join(late)} trained only after that epoch, so these weights still hold "
             "their starting values there." if late else "")
    return f"The run's model: the weights it keeps, {label}{phase}.{later}"


def first_trained_epoch(record) -> dict[str, int]:
    """Per layer group, the 1-based epoch it first trained in (groups that never trained absent)."""
    first: dict[str, int] = {}
    for n, epoch in enumerate(record.config.get("plan") or [], start=1):
        for g, multiplier in epoch.items():
            if multiplier > 0:
                first.setdefault(g, n)
    return first


def run_strategy(record) -> str:
    """The strategy a run was trained with, read from its settings (older runs did not name it)."""
    config = record.config
    named = config.get("strategy")
    if named:
        return named
    if config.get("unfreeze_every"):
        return "Progressive unfreezing"
    frozen = set(frozen_groups(record))
    groups = list((config.get("plan") or [{}])[0])
    body = [g for g in groups if g != "head"]
    if body and set(body) <= frozen:
        return "Feature extraction"
    if not frozen and len(set(config.get("lr_multipliers", {}).values())) > 1:
        return "Discriminative learning rates"
    if not frozen:
        return "Fine-tune all"
    return "Fine-tune some layers"


def describe_run(record) -> str:
    """A run's display name: its strategy, its data and when it started, e.g.
    "Feature extraction · Demo shapes (source look) · 03:12:07". Plain text (for selectboxes and
    legends); wrap it in plain() before putting it into Markdown."""
    strategy = run_strategy(record)
    if record.label and not record.label.startswith(f"{record.backbone} "):
        strategy = record.label  # a label the Train page chose says more (e.g. "… from scratch")
    elif not record.pretrained:
        strategy += ", from scratch"
    if record.backbone != DEFAULT_BACKBONE:
        strategy = f"{record.backbone} · {strategy}"
    started = time.strftime("%H:%M:%S", time.localtime(record.created))
    source = "command line" if record.owner == OWNER else ""
    return " · ".join(part for part in (source, strategy, record.dataset, started) if part)


def run_option(record) -> str:
    """A run in a picker: its description and, when it has one, the validation accuracy of the
    weights it keeps, with their epoch when that is not the last, e.g. "… · val acc 90.0 % (kept:
    epoch 16 of 29)"."""
    if not record.done:
        return describe_run(record)
    kept = kept_metric(record)
    if kept is None or kept != kept:
        return describe_run(record)
    # The kept epoch is named when it is not the last: then it is news, and a picker at projector
    # width (800 px) has no room for "kept: epoch 1 of 1" after every run.
    last = kept_epoch_number(record) == len(record.epochs)
    return f"{describe_run(record)} · val acc {kept:.1%}" + ("" if last else f" ({kept_label(record)})")


def finished_runs():
    """This browser's runs with a model, and every run trained from the command line (read-only here)."""
    store = run_store()
    # my_runs leaves out meta-training runs: their head names episode ways ("way 1" …), not classes
    # of any data set (the Few-shot page uses them; the pages that classify a data set cannot)
    runs = sorted(my_runs() + store.list(owner=OWNER), key=lambda r: r.created, reverse=True)
    return [r for r in runs
            if r.status in ("finished", "cancelled", "diverged", "interrupted") and store.has_model(r.id)
            and r.config.get("kind", "train") in ("train", "multitask")]
