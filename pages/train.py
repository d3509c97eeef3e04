"""Train: start a run, watch its curves grow, reopen finished runs."""

import json
import math
import time
from dataclasses import replace
from functools import partial

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.analysis.diagnosis import diagnose
from core.cli import command_for, config_for
from core.data import augmentation_note, check_split, spread
from core.data.encoded import encode_images
from core.errors import UserInputError
from core.progress import ProgressTracker, RunClock, fit_phase_units
from core.runs.jobs import cancel_waiting, get_job, start_run
from core.runs.kept import kept_epoch, kept_epoch_number, kept_label, kept_metric, kept_phase, plan_as_run, who_won
from core.runs.kinds.multitask import start_multitask_run
from core.runs.tasks import get_queue
from core.train.base import HEAD_PATIENCE, TrainConfig, augment_batch, config_augmenter
from pages.ui.charts import plan_figure
from pages.ui.links import locked
from pages.ui.multitask import current_multitask, is_multitask, multitask_options_ui, multitask_split, task_curves
from pages.ui.runs import describe_run, my_runs, run_curves, run_option, run_progress, run_status, run_store
from pages.ui.session import bootstrap, current_split, owns, select_run
from pages.ui.tasks import follow
from pages.ui.text import chart_text, plain
from pages.ui.watch import pins_ui, watch_player, with_pins
from pages.ui.workspace import workspace

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state
st.title("Train")

SIZES = {96: "fastest", 128: "default", 160: "sharper", 224: "ImageNet"}


def size_label(size: int) -> str:
    # short: it sits in a quarter of the page (150 px on an 800 px projector); what each size is
    # for and the compute it costs are in the box's help
    return f"{size} px"


# compute per image grows with the pixel count; speeds measured on runs are shown after training
SIZE_HELP = ("Compute per image, relative to 128 px: " + ", ".join(f"{s} px ({SIZES[s]}) {(s / 128) ** 2:.2g}×"
                                                                   for s in SIZES) + ".")



LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def settings_ui() -> TrainConfig:
    """The preset's settings (from the Model page's strategy), shown and editable; nothing is rebuilt
    from scratch, so fields not shown here (weight decay, cached views, ...) keep the preset's values."""
    ws = workspace()
    cfg, mc = ws.config, ws.model
    with st.expander(f"Training settings — {mc.strategy}", expanded=False):
        c1, c2, c3, c4 = st.columns(4)
        epochs = c1.number_input("Epochs", 1, 500, cfg.epochs, disabled=locked("epochs"),
                                 help="With early stopping the run ends sooner, once validation stops improving.")
        batch = c2.selectbox("Batch size", [4, 8, 16, 32, 64], index=[4, 8, 16, 32, 64].index(cfg.batch_size)
                             if cfg.batch_size in (4, 8, 16, 32, 64) else 2)
        lrs = sorted({*LRS, float(cfg.lr)})  # a rate from the LR finder or a preset is kept as it is
        lr = c3.select_slider("Learning rate", lrs, value=float(cfg.lr), format_func=lambda v: f"{v:.2g}",
                              disabled=locked("lr"))
        size = c4.selectbox("Input size (px)", list(SIZES), index=list(SIZES).index(cfg.image_size)
                            if cfg.image_size in SIZES else 1, format_func=size_label, disabled=locked("size"),
                            help=SIZE_HELP)
        c5, c6, c7, c8 = st.columns(4)
        optimizer = c5.selectbox("Optimizer", ["adamw", "sgd"], index=["adamw", "sgd"].index(cfg.optimizer))
        schedule = c6.selectbox("Schedule", ["cosine", "onecycle", "constant"],
                                index=["cosine", "onecycle", "constant"].index(cfg.schedule))
        patience = c7.number_input("Early-stopping patience (0: off)", 0, 100, cfg.early_stopping,
                                   help="Stop after this many epochs without a lower validation loss; "
                                        "the best epoch's weights are kept.")
        warmup = c8.number_input("Head warm-up epochs (at most)", 0, 100, cfg.warmup_epochs,
                                 help="Epochs that train the new head alone before any backbone layer trains "
                                      "(part of the epochs above). On the frozen backbone's cached features they "
                                      "take milliseconds, and early stopping ends the warm-up once the head "
                                      "stops improving; fine-tuning then starts from the best head.")
        c9, c10, c11, c12 = st.columns(4)
        augment = c9.checkbox("Augmentation (random crops)", cfg.augment)
        flip = c10.checkbox("Horizontal flips", cfg.flip, disabled=not augment,
                            help="Off by default: a mirror image changes what digits, letters and text mean.")
        jitter = c11.checkbox("Colour jitter", cfg.color_jitter, disabled=not augment,
                              help="Off by default: meaningless on grayscale images.")
        seed = c12.number_input("Seed", 0, 10_000, cfg.seed, disabled=locked("seed"))
        note = augmentation_advice()
        if note:
            st.caption(f":material/info: {note}")
        if augment and st.toggle("Preview augmented images", key="aug-preview"):
            preview_augmentation(replace(cfg, image_size=int(size), flip=flip, color_jitter=jitter), int(seed))
    shown = dict(epochs=int(epochs), batch_size=int(batch), lr=float(lr), seed=int(seed), optimizer=optimizer,
                 schedule=schedule, augment=augment, flip=bool(flip), color_jitter=bool(jitter), image_size=int(size),
                 early_stopping=int(patience), warmup_epochs=int(warmup))
    # only what the person changed here counts as theirs: a later preset keeps it
    ws.change(by_hand=True, **{k: v for k, v in shown.items() if v != getattr(cfg, k)})
    return ws.config


def augmentation_advice() -> str:
    """The data's augmentation note, computed once per dataset."""
    ds = workspace().dataset
    cached = ss.get("_aug_note")
    if not cached or cached[0] != ds.fingerprint:
        ss._aug_note = (ds.fingerprint, augmentation_note(ds))
    return ss._aug_note[1]


def preview_augmentation(config: TrainConfig, seed: int) -> None:
    """Four training images and three augmented views of each, as the model would see them."""
    train_ds, _ = current_split()
    if len(train_ds) == 0:
        return
    picks = train_ds.subset(spread(len(train_ds), 4))
    images = encode_images(picks, config.image_size)
    augmenter = config_augmenter(config)
    columns = st.columns(4)
    for view in range(3):
        batch = augment_batch(images, augmenter, seed * 1000 + view)
        for column, img in zip(columns, batch, strict=False):
            column.image(img.permute(1, 2, 0).numpy(), width="stretch")
    st.caption("Each column: one training image, three random views (crops"
               + (", flips" if config.flip else "") + (", colour jitter" if config.color_jitter else "")
               + "). Change the toggles above to see their effect.")


def start_ui(config: TrainConfig) -> None:
    ws = workspace()
    mc = ws.model
    multitask = multitask_options_ui()
    if multitask is not None:
        ds = current_multitask()
        what = f"**{plain(ss.multitask['label'])}** ({len(ds)} images, {len(ds.tasks)} tasks)"
    else:
        what = f"**{plain(ws.dataset_label)}** ({len(ws.dataset)} images)"
    st.markdown(
        f"{what} · **{mc.backbone}**"
        f"{' pretrained' if mc.pretrained else ' from scratch'} · **{mc.strategy}** · "
        f"{config.epochs} epochs at {config.image_size} px"
    )
    queue = get_queue()
    room = queue.room_for(ss.owner)
    b1, b2 = st.columns([1, 4])
    if b1.button("Train", type="primary", icon=":material/play_arrow:", disabled=room == 0,
                 help=f"Each person may have {queue.per_person} runs training or waiting at once."
                 if queue.per_person else None):
        launch([(mc.pretrained, config, mc.strategy if mc.pretrained else f"{mc.strategy}, from scratch")],
               multitask=multitask)
    if b2.button("Pretrained vs from scratch", icon=":material/compare_arrows:",
                 help="Trains this architecture twice on the same split and seed: with your settings from "
                      "ImageNet weights, and from random weights with every layer trained. The curves are overlaid."):
        scratch = replace(config, freeze=[], lr_multipliers={}, unfreeze_every=0, warmup_epochs=0)
        launch([(True, config, f"{mc.strategy}, pretrained"),
                (False, scratch, "Fine-tune all, from scratch")], compare=True, multitask=multitask)
    if room == 0:
        st.caption(f":material/hourglass_top: You have {queue.per_person} runs training or waiting, the most one "
                   "person may queue at once so that everyone gets a turn. Train again when one ends.")
    waiting = [t for t in queue.mine(ss.owner) if t.snapshot().status == "queued"]
    if waiting and st.button(f"Cancel my waiting runs ({len(waiting)})", icon=":material/playlist_remove:"):
        cancel_waiting(ss.owner)
        st.rerun()


def launch(variants, compare: bool = False, multitask: dict | None = None) -> None:
    """Queue one run per variant; ``multitask``: the options of a run with a head per task."""
    ws = workspace()
    mc = ws.model
    room = get_queue().room_for(ss.owner)
    if room is not None and room < len(variants):
        st.error(get_queue().full_message())
        return
    try:
        if multitask is not None:  # every task of the multi-task dataset, one head each
            train_ds, val_ds = multitask_split()
            start, dataset = partial(start_multitask_run, **multitask), ss.multitask["label"]
            variants = [(pretrained, cfg, f"{label}, multi-task") for pretrained, cfg, label in variants]
        else:
            train_ds, val_ds = current_split()
            start, dataset = start_run, ws.dataset_label
        check_split(train_ds, val_ds)
        variants = [(pretrained, with_pins(cfg, val_ds), label) for pretrained, cfg, label in variants]
        jobs = [start(run_store(), train_ds, val_ds, backbone=mc.backbone, pretrained=pretrained,
                      weights_path=mc.weights_path if pretrained else None, config=cfg, owner=ss.owner,
                      dataset=dataset, label=label or "")
                for pretrained, cfg, label in variants]
    except UserInputError as exc:
        st.error(plain(exc))
        return
    if compare:
        ss.compare = [job.run_id for job in jobs]
    select_run(jobs[0].run_id)
    st.rerun()


def curves(epochs: list[dict], batch_losses, kept: int | None = None) -> go.Figure:
    """Loss and accuracy by epoch; ``kept``: the epoch whose weights the run keeps, marked on both."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    if batch_losses:
        xs, ys = zip(*batch_losses, strict=True)
        fig.add_trace(go.Scatter(x=xs, y=ys, name="train loss (per batch)", mode="lines",
                                 line=dict(width=1, color="rgba(31,119,180,0.35)")), 1, 1)
    if epochs:
        x = [e["epoch"] for e in epochs]
        for key, name, color, col in [("train_loss", "train loss", "#1f77b4", 1), ("val_loss", "validation loss", "#ff7f0e", 1),
                                      ("train_acc", "train accuracy", "#1f77b4", 2), ("val_acc", "validation accuracy", "#ff7f0e", 2)]:
            fig.add_trace(go.Scatter(x=x, y=[e[key] for e in epochs], name=name, mode="lines+markers",
                                     line=dict(color=color, dash="dot" if key.startswith("train") else "solid")), 1, col)
    if kept and epochs:
        for col in (1, 2):
            fig.add_vline(x=kept, line=dict(color="#2ca02c", dash="dash", width=2), row=1, col=col)
        fig.add_annotation(x=kept, y=1.02, xref="x2", yref="y2", text=f"kept: epoch {kept}", showarrow=False,
                           yanchor="bottom", font=dict(color="#2ca02c"))
    fig.update_xaxes(title_text="epoch", rangemode="tozero")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def command_line_ui(record) -> None:
    """The run's settings file and the command that trains it again without the browser."""
    with st.expander("Run it from the command line"):
        # a viewer is shown no path of this server (where the owner's upload is kept)
        st.code(command_for(record, weights=None if owns(record) else "YOUR_WEIGHTS.pt"), language="bash")
        st.download_button("CONFIG.json", json.dumps(config_for(record), indent=1), file_name="CONFIG.json",
                           mime="application/json", key=f"config-{record.id}", icon=":material/download:")
        st.caption("Run it from the app's folder; under `torchrun --nproc-per-node=N` the same command trains "
                   "on N processes (the batch size is the global batch). The README's 'Beyond one machine' says more.")
def progress_text(snap, record) -> str:
    """The progress bar's words: the phase, and time left and speed measured in that phase only."""
    phase = {"preparing": "Loading the model…", "cache": "Computing the frozen backbone's features once…"}.get(
        snap.phase, "Training…")
    text = f"{phase} {snap.progress:.0%}"
    info, config = snap.info, record.config
    if info is None or snap.phase not in ("cache", "train"):
        return text
    trackers = ss.setdefault("_progress", {})
    tracker, clock = trackers.get(snap.run_id) or (None, None)
    if tracker is None:
        batch = int(config.get("batch_size", 32))
        views = (int(config.get("cached_views", 3)) if config.get("augment") else 1) if info.cache else 0
        units = fit_phase_units(epochs=info.epochs, batches_per_epoch=info.batches_per_epoch, n_train=info.n_train,
                                n_val=info.n_val, batch_size=batch, cached_views=views)
        tracker = ProgressTracker(units, {"cache": batch, "train": batch})
        # the time left: caching, the head's epochs and the body's timed apart, early stopping expected
        clock = RunClock.for_fit(info.__dict__, config, HEAD_PATIENCE)
        trackers[snap.run_id] = (tracker, clock)
        while len(trackers) > 4:
            trackers.pop(next(iter(trackers)))
    now = time.monotonic()
    tracker.observe(now, snap.progress, snap.phase)
    clock.observe(now, snap.progress, snap.phase, [e.__dict__ for e in snap.epochs])
    estimate, seconds_left = tracker.estimate(now), clock.seconds_left(now)
    if estimate is None or estimate.phase_seconds_left is None:
        return text
    if seconds_left is not None:
        text += f" — about {math.ceil(seconds_left)} s left"
    else:
        text += f" — caching: about {math.ceil(estimate.phase_seconds_left)} s left, then {info.epochs} epoch(s)"
    if estimate.images_per_second:
        what = "caching" if estimate.phase == "cache" else "training"
        text += f" · {estimate.images_per_second:,.0f} images/s ({what})"
    return text


def show_run(run_id: str, waiting: bool = False) -> bool:
    """Draw the run; True while it is still going (drawn ``waiting``: while it is still queued)."""
    snap, record = run_status(run_id)
    if record is None:
        st.warning("No run with this link on this server (it may have been removed to free disk space).")
        return False
    status = snap.status if snap else record.status
    running = snap is not None and not snap.done
    if snap is None and not record.done:
        st.warning("This run was interrupted before it finished (the server restarted). Train it again.")
        return False
    st.subheader(f"Run `{run_id}` — {status}")
    st.caption(plain(describe_run(record)))
    mine = owns(record)
    if not mine:
        st.caption(":material/visibility: Opened from a shared link: you can look at this run, not stop or "
                   "export it. Runs you train yourself are listed under Your runs.")
    epochs, batch_losses, message = run_curves(snap, record)
    if running:
        run_progress(run_id, snap, lambda: progress_text(snap, record), can_stop=mine)
    how_it_trained((snap.info.__dict__ if snap and snap.info else record.info) or {}, record)
    if status in ("failed", "diverged"):
        st.error(plain(message))
    elif status == "interrupted":
        st.warning(plain(message))
    elif message:
        st.info(plain(message))
    if epochs or batch_losses:
        kept = kept_epoch_number(record) if not running and record.done else None
        st.plotly_chart(curves(epochs, batch_losses, kept), width="stretch", key=f"curves-{run_id}")
    if epochs and "val_acc_by_task" in epochs[-1]:  # a multi-task run: a curve per task
        st.plotly_chart(task_curves(epochs), width="stretch", key=f"task-curves-{run_id}")
    watch_player(record, running)
    if epochs and not running:
        hints_ui(epochs, status, message, record.info or {})
    if not is_multitask(record):  # the command line trains one head per run
        command_line_ui(record)
    plan = plan_as_run(record)
    if plan:
        with st.expander("Strategy timeline: which groups trained in which epoch"):
            st.plotly_chart(plan_figure(plan), width="stretch", key=f"plan-{run_id}")
    if epochs and not running and record.done:
        final_metrics(record)
    return running and not (waiting and status != "queued")


def how_it_trained(info: dict, record) -> None:
    """What the run's feature cache skipped, and how many parameters trained how fast where."""
    if info.get("cache") == "head" or (info.get("uses_feature_cache") and not info.get("cache")):
        st.caption(":material/bolt: Only the head trains: the frozen backbone's features were computed once and are "
                   "reused every epoch (a few augmented views of each image are cached too).")
    elif info.get("cache") == "warmup":
        st.caption(":material/bolt: The new head warmed up alone on the frozen backbone's features, computed "
                   "once, until it stopped improving; then the layers that fine-tune joined it.")
    elif info.get("cache") == "prefix":
        st.caption(":material/bolt: The frozen early layers' output was computed once per image (and per cached "
                   "augmented view); each step runs only the layers that train.")
    if info:
        speed = record.config.get("images_per_second")
        # fit measures its speed over the epochs only: on cached features that is the head alone,
        # thousands of images/s, which says nothing about how fast the backbone runs.
        where = (" over every epoch, the head's warm-up on cached features included" if info.get("cache") == "warmup"
                 else " in the epochs, on cached features" if info.get("cache") or info.get("uses_feature_cache")
                 else "")
        st.caption(f"Training {info.get('trainable_params', 0):,} parameters, "
                   f"{info.get('frozen_params', 0):,} frozen, on {info.get('device', '?')}"
                   + (f" · {speed:,.0f} images/s{where} at {record.config.get('image_size')} px" if speed else "")
                   + ".")


def final_metrics(record) -> None:
    """The finished run's headline figures, of the weights it keeps (a multi-task run's per task too),
    and whether those are the warm-up's head or a fine-tuned epoch."""
    nan = float("nan")
    kept = kept_epoch(record) or {"val_acc": nan, "val_loss": nan, "train_acc": nan}
    label = kept_label(record)
    took = f" Trained in {record.finished - record.created:.1f} s, start to end." if record.finished else ""
    st.markdown(f"**The model you have** ({label}): the figures below are its own, not the last epoch's.{took}")
    # three columns, no help icons: at 800 px a fourth metric and the icons cut "100.0%" to "100.…"
    c1, c2, c3 = st.columns(3)
    c1.metric("Validation accuracy", percent(kept["val_acc"]))
    c2.metric("Validation loss", f"{kept['val_loss']:.3f}" if not math.isnan(kept["val_loss"]) else "—")
    c3.metric("Train accuracy", percent(kept["train_acc"]))
    by_task = kept.get("val_acc_by_task") or {}
    for column, (task, acc) in zip(st.columns(max(1, len(by_task))), by_task.items(), strict=False):
        column.metric(f"Validation accuracy: {plain(task)}", percent(acc))
    won = who_won(record)
    if won:
        st.info(won, icon=":material/emoji_events:")
    if math.isnan(kept["val_acc"]) and not record.config.get("n_val"):
        st.warning("This run had no validation images (every class had a single image, and a class's "
                   "only image goes to training), so nothing measured how well it does. Add more images "
                   "per class on the Data page and train again.")


def percent(value) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.1%}"


def hints_ui(epochs: list[dict], status: str, message: str, info: dict) -> None:
    """What the curves say went wrong, next to them, each with the one setting to change."""
    # the record's info keeps how the fit ended; records written before it did tell it in the message
    stopped = status if status in ("diverged", "cancelled", "interrupted", "failed") else (
        info.get("stopped") or ("early" if "Stopped early" in (message or "") else None))
    for hint in diagnose(epochs, stopped):
        st.warning(f"**Change: {hint.setting}.** {hint.message}", icon=":material/lightbulb:")


def compare_ui(runs) -> None:
    st.subheader("Compare runs")
    labels = {r.id: describe_run(r) for r in runs}
    default = [r for r in ss.get("compare", []) if r in labels]
    picked = st.multiselect("Runs to overlay", list(labels), default=default, format_func=labels.get)
    chosen = [r for r in runs if r.id in picked]
    if not chosen:
        return
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Validation loss", "Validation accuracy"))
    for i, r in enumerate(chosen):
        snap = get_job(r.id).snapshot() if get_job(r.id) else None
        epochs = [e.__dict__ for e in snap.epochs] if snap else r.epochs
        x = [e["epoch"] for e in epochs]
        colour = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"][i % 6]
        kept = kept_epoch(r) if r.done else None
        for col, key in ((1, "val_loss"), (2, "val_acc")):
            fig.add_trace(go.Scatter(x=x, y=[e[key] for e in epochs], name=chart_text(labels[r.id]), legendgroup=r.id,
                                     showlegend=col == 1, mode="lines+markers", line=dict(color=colour)), 1, col)
            if kept is not None:  # the kept weights: a ring on their epoch
                fig.add_trace(go.Scatter(x=[kept["epoch"]], y=[kept[key]], legendgroup=r.id, showlegend=False,
                                         mode="markers", hovertemplate=f"{kept_label(r)}<extra></extra>",
                                         marker=dict(size=14, color="rgba(0,0,0,0)", line=dict(color=colour, width=2))),
                              1, col)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    st.plotly_chart(fig, width="stretch", key="compare-curves")
    st.dataframe([
        {"run": labels[r.id], "status": r.status, "backbone": r.backbone, "pretrained": r.pretrained,
         "frozen groups": len(r.config.get("freeze", [])), "epochs": r.config.get("epochs"),
         "lr": r.config.get("lr"), "input px": r.config.get("image_size"),
         "val acc": kept_metric(r) if r.done else r.final(),
         "val loss": kept_metric(r, "val_loss") if r.done else r.final("val_loss"),
         "kept": kept_label(r).removeprefix("kept: ") if r.done else "(training)",
         "kept from": {"warm-up": "the warm-up's head", "fine-tuning": "a fine-tuned epoch"}.get(kept_phase(r), ""),
         "seconds": round(r.finished - r.created, 1) if r.finished else None}
        for r in chosen
    ], hide_index=True, width="stretch",
        column_config={"val acc": st.column_config.NumberColumn(format="percent")})
    st.caption("val acc and val loss are those of the weights each run keeps (its kept epoch, ringed on the "
               "curves), not of its last epoch.")


def comparison_going() -> bool:
    """Whether a run of the comparison started together still trains or waits."""
    return any(job is not None and not job.snapshot().done for job in map(get_job, ss.get("compare", [])))


def comparison() -> bool:
    """``follow``'s draw for the comparison: True while one of its runs is still going."""
    compare_ui(my_runs())
    return comparison_going()


for note in run_store().notes(ss.owner):
    st.warning(note, icon=":material/delete_sweep:")
run_store().clear_notes(ss.owner)

config = settings_ui()
pins_ui()
start_ui(config)

run_id = workspace().current_run
if run_id:
    job = get_job(run_id)
    snap = job.snapshot() if job is not None else None
    # A queued run changes only its place in the queue: redrawn every 2 s until it leaves the queue,
    # then (after the full rerun show_run asks for) every second to its end. Both are one fragment
    # (same function, same place), whose timer the browser replaces when its interval changes.
    waiting = snap is not None and snap.status == "queued"
    follow(show_run, run_id, waiting, live=snap is not None and not snap.done, every=2.0 if waiting else 1.0)

runs = my_runs()
if runs:
    st.divider()
    # every 2 s, not every second: a chart of a few runs' epochs, and the run above already has a timer
    follow(comparison, live=comparison_going(), every=2.0)
    st.divider()
    st.subheader("Your runs")
    labels = {r.id: f"{run_option(r)} · {r.status}" for r in runs}
    ids = list(labels)
    picked = st.selectbox("Reopen a run", ids, index=ids.index(run_id) if run_id in ids else 0,
                          format_func=labels.get)
    if picked != run_id and st.button("Open"):
        select_run(picked)
        st.rerun()
    st.caption("Each run has its own link: the address bar points at the run shown above, so a refresh or a "
               "bookmark brings it back. Share it freely: others see the run read-only, never your other runs.")
