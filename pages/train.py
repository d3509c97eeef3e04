"""Train: start a run, watch its curves grow, reopen finished runs."""

import math
from dataclasses import replace
from datetime import datetime

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.errors import UserInputError
from core.jobs import get_job, start_run
from core.data import augmentation_note
from core.diagnosis import diagnose
from core.training import TrainConfig, augment_batch, config_augmenter, encode_images
from pages._shared import current_split, my_runs, plan_figure, run_status, run_store, select_run

ss = st.session_state
st.title("Train")

SIZES = {96: "fastest", 128: "default", 160: "sharper", 224: "ImageNet's size"}


def size_label(size: int) -> str:
    # compute per image grows with the pixel count; speeds measured on runs are shown after training
    return f"{size} px — {SIZES[size]}, {(size / 128) ** 2:.1f}× the compute of 128 px"



LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def settings_ui() -> TrainConfig:
    """The preset's settings (from the Model page's strategy), shown and editable; nothing is rebuilt
    from scratch, so fields not shown here (weight decay, cached views, ...) keep the preset's values."""
    cfg: TrainConfig = ss.train_config
    mc = ss.model_choice
    with st.expander(f"Training settings — {mc.strategy}", expanded=False):
        c1, c2, c3, c4 = st.columns(4)
        epochs = c1.number_input("Epochs (at most)", 1, 500, cfg.epochs,
                                 help="With early stopping the run ends sooner, once validation stops improving.")
        batch = c2.selectbox("Batch size", [4, 8, 16, 32, 64], index=[4, 8, 16, 32, 64].index(cfg.batch_size)
                             if cfg.batch_size in (4, 8, 16, 32, 64) else 2)
        lrs = sorted({*LRS, float(cfg.lr)})  # a rate from the LR finder or a preset is kept as it is
        lr = c3.select_slider("Learning rate", lrs, value=float(cfg.lr), format_func=lambda v: f"{v:.2g}")
        size = c4.selectbox("Input size (px)", list(SIZES), index=list(SIZES).index(cfg.image_size)
                            if cfg.image_size in SIZES else 1, format_func=size_label)
        c5, c6, c7, c8 = st.columns(4)
        optimizer = c5.selectbox("Optimizer", ["adamw", "sgd"], index=["adamw", "sgd"].index(cfg.optimizer))
        schedule = c6.selectbox("Schedule", ["cosine", "onecycle", "constant"],
                                index=["cosine", "onecycle", "constant"].index(cfg.schedule))
        patience = c7.number_input("Early-stopping patience (0: off)", 0, 100, cfg.early_stopping,
                                   help="Stop after this many epochs without a lower validation loss; "
                                        "the best epoch's weights are kept.")
        warmup = c8.number_input("Head warm-up epochs", 0, 20, cfg.warmup_epochs,
                                 help="Epochs that train the new head alone before any backbone layer trains.")
        c9, c10, c11, c12 = st.columns(4)
        augment = c9.checkbox("Augmentation (random crops)", cfg.augment)
        flip = c10.checkbox("Horizontal flips", cfg.flip, disabled=not augment,
                            help="Off by default: a mirror image changes what digits, letters and text mean.")
        jitter = c11.checkbox("Colour jitter", cfg.color_jitter, disabled=not augment,
                              help="Off by default: meaningless on grayscale images.")
        seed = c12.number_input("Seed", 0, 10_000, cfg.seed)
        note = augmentation_advice()
        if note:
            st.caption(f":material/info: {note}")
        if augment and st.toggle("Preview augmented images", key="aug-preview"):
            preview_augmentation(replace(cfg, image_size=int(size), flip=flip, color_jitter=jitter), int(seed))
    ss.train_config = replace(
        cfg, epochs=int(epochs), batch_size=int(batch), lr=float(lr), freeze=list(mc.freeze),
        lr_multipliers=dict(mc.lr_multipliers), seed=int(seed), optimizer=optimizer, schedule=schedule,
        augment=augment, flip=bool(flip), color_jitter=bool(jitter), image_size=int(size),
        unfreeze_every=mc.unfreeze_every, train_bn=mc.train_bn, early_stopping=int(patience),
        warmup_epochs=min(int(warmup), max(0, int(epochs) - 1)),
    )
    return ss.train_config


def augmentation_advice() -> str:
    """The data's augmentation note, computed once per dataset."""
    key = ss.dataset.fingerprint
    cached = ss.get("_aug_note")
    if not cached or cached[0] != key:
        ss._aug_note = (key, augmentation_note(ss.dataset))
    return ss._aug_note[1]


def preview_augmentation(config: TrainConfig, seed: int) -> None:
    """Four training images and three augmented views of each, as the model would see them."""
    train_ds, _ = current_split()
    if len(train_ds) == 0:
        return
    picks = train_ds.subset(list(range(0, len(train_ds), max(1, len(train_ds) // 4)))[:4])
    images = encode_images(picks, config.image_size)
    augmenter = config_augmenter(config)
    columns = st.columns(4)
    for view in range(3):
        batch = augment_batch(images, augmenter, seed * 1000 + view)
        for column, img in zip(columns, batch):
            column.image(img.permute(1, 2, 0).numpy(), width="stretch")
    st.caption("Each column: one training image, three random views (crops"
               + (", flips" if config.flip else "") + (", colour jitter" if config.color_jitter else "")
               + "). Change the toggles above to see their effect.")


def start_ui(config: TrainConfig) -> None:
    mc = ss.model_choice
    st.markdown(
        f"**{ss.dataset_label}** ({len(ss.dataset)} images) · **{mc.backbone}**"
        f"{' pretrained' if mc.pretrained else ' from scratch'} · **{mc.strategy}** · "
        f"{config.epochs} epochs at {config.image_size} px"
    )
    b1, b2 = st.columns([1, 4])
    if b1.button("Train", type="primary", icon=":material/play_arrow:"):
        launch([(mc.pretrained, config, None)])
    if b2.button("Pretrained vs from scratch", icon=":material/compare_arrows:",
                 help="Trains this architecture twice on the same split and seed: with your settings from "
                      "ImageNet weights, and from random weights with every layer trained. The curves are overlaid."):
        scratch = replace(config, freeze=[], lr_multipliers={}, unfreeze_every=0, warmup_epochs=0)
        launch([(True, config, f"{mc.backbone} pretrained ({mc.strategy})"),
                (False, scratch, f"{mc.backbone} from scratch")], compare=True)


def launch(variants, compare: bool = False) -> None:
    mc = ss.model_choice
    try:
        train_ds, val_ds = current_split()
        jobs = [start_run(run_store(), train_ds, val_ds, backbone=mc.backbone, pretrained=pretrained,
                          weights_path=mc.weights_path if pretrained else None, config=cfg, owner=ss.owner,
                          dataset=ss.dataset_label, label=label or "")
                for pretrained, cfg, label in variants]
    except UserInputError as exc:
        st.error(str(exc))
        return
    if compare:
        ss.compare = [job.run_id for job in jobs]
    select_run(jobs[0].run_id)
    st.rerun()


def curves(epochs: list[dict], batch_losses) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    if batch_losses:
        xs, ys = zip(*batch_losses)
        fig.add_trace(go.Scatter(x=xs, y=ys, name="train loss (per batch)", mode="lines",
                                 line=dict(width=1, color="rgba(31,119,180,0.35)")), 1, 1)
    if epochs:
        x = [e["epoch"] for e in epochs]
        for key, name, color, col in [("train_loss", "train loss", "#1f77b4", 1), ("val_loss", "validation loss", "#ff7f0e", 1),
                                      ("train_acc", "train accuracy", "#1f77b4", 2), ("val_acc", "validation accuracy", "#ff7f0e", 2)]:
            fig.add_trace(go.Scatter(x=x, y=[e[key] for e in epochs], name=name, mode="lines+markers",
                                     line=dict(color=color, dash="dot" if key.startswith("train") else "solid")), 1, col)
    fig.update_xaxes(title_text="epoch", rangemode="tozero")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def show_run(run_id: str) -> bool:
    """Draw the run; True while it is still going."""
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
    if snap is not None:
        epochs = [e.__dict__ for e in snap.epochs]
        batch_losses = snap.batch_losses
        message = snap.message
    else:
        epochs, batch_losses, message = record.epochs, (), record.message
    if running:
        if snap.status == "queued":
            st.info(f"Waiting for a free training slot: number {snap.queue_position or 1} in the queue.")
        else:
            phase = {"preparing": "Loading the model…", "cache": "Computing the frozen backbone's features once…"}.get(
                snap.phase, "Training…")
            left = f" — about {math.ceil(snap.seconds_left)} s left" if snap.seconds_left is not None else ""
            st.progress(snap.progress, text=f"{phase} {snap.progress:.0%}{left}")
        if st.button("Stop", icon=":material/stop:"):
            get_job(run_id).cancel()
    info = (snap.info.__dict__ if snap and snap.info else record.info) or {}
    if info.get("cache") == "head" or (info.get("uses_feature_cache") and not info.get("cache")):
        st.caption(":material/bolt: Only the head trains: the frozen backbone's features were computed once and are "
                   "reused every epoch (a few augmented views of each image are cached too).")
    elif info.get("cache") == "prefix":
        st.caption(":material/bolt: The frozen early layers' output was computed once per image (and per cached "
                   "augmented view); each step runs only the layers that train.")
    if info:
        speed = record.config.get("images_per_second")
        st.caption(f"Training {info.get('trainable_params', 0):,} parameters, "
                   f"{info.get('frozen_params', 0):,} frozen, on {info.get('device', '?')}"
                   + (f" · {speed:,.0f} images/s at {record.config.get('image_size')} px" if speed else "") + ".")
    if status in ("failed", "diverged"):
        st.error(message)
    elif message:
        st.info(message)
    if epochs or batch_losses:
        st.plotly_chart(curves(epochs, batch_losses), width="stretch", key=f"curves-{run_id}")
    if epochs and not running:
        hints_ui(epochs, status, message)
    plan = record.config.get("plan")
    if plan:
        with st.expander("Strategy timeline: which groups trained in which epoch"):
            st.plotly_chart(plan_figure(plan), width="stretch", key=f"plan-{run_id}")
    if epochs and not running:
        last = epochs[-1]
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Validation accuracy", f"{last['val_acc']:.1%}" if not math.isnan(last["val_acc"]) else "—")
        c2.metric("Validation loss", f"{last['val_loss']:.3f}" if not math.isnan(last["val_loss"]) else "—")
        c3.metric("Train accuracy", f"{last['train_acc']:.1%}")
        if record.finished:
            c4.metric("Time, start to end", f"{record.finished - record.created:.1f} s")
    return running


def hints_ui(epochs: list[dict], status: str, message: str) -> None:
    """What the curves say went wrong, next to them, each with the one setting to change."""
    # the record keeps the status, not History.stopped: an early stop is told by core's message
    stopped = status if status in ("diverged", "cancelled") else ("early" if "Stopped early" in (message or "") else None)
    for hint in diagnose(epochs, stopped):
        st.warning(f"**Change: {hint.setting}.** {hint.message}", icon=":material/lightbulb:")


@st.fragment(run_every=1.0)
def live_run(run_id: str) -> None:
    if not show_run(run_id):
        st.rerun()  # finished: redraw the whole page once, without the timer


@st.fragment(run_every=3.0)
def waiting_run(run_id: str) -> None:
    """A queued run polls less often: in a full classroom most sessions wait here, and their
    redraws would otherwise take CPU from the run that is training."""
    snap, _ = run_status(run_id)
    if snap is None or snap.status != "queued":
        st.rerun()  # its turn came (or it ended): switch to the live view
    show_run(run_id)


def compare_ui(runs) -> None:
    st.subheader("Compare runs")
    labels = {r.id: f"{r.label} · {datetime.fromtimestamp(r.created):%H:%M:%S}" for r in runs}
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
        for col, key in ((1, "val_loss"), (2, "val_acc")):
            fig.add_trace(go.Scatter(x=x, y=[e[key] for e in epochs], name=r.label, legendgroup=r.id,
                                     showlegend=col == 1, mode="lines+markers", line=dict(color=colour)), 1, col)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    st.plotly_chart(fig, width="stretch", key="compare-curves")
    st.dataframe([
        {"run": r.label, "status": r.status, "backbone": r.backbone, "pretrained": r.pretrained,
         "frozen groups": len(r.config.get("freeze", [])), "epochs": r.config.get("epochs"),
         "lr": r.config.get("lr"), "input px": r.config.get("image_size"),
         "val acc": r.final(), "val loss": r.final("val_loss"),
         "seconds": round(r.finished - r.created, 1) if r.finished else None}
        for r in chosen
    ], hide_index=True, width="stretch",
        column_config={"val acc": st.column_config.NumberColumn(format="percent")})


@st.fragment(run_every=2.0)
def live_compare() -> None:
    compare_ui(my_runs())


config = settings_ui()
start_ui(config)

run_id = ss.current_run
if run_id:
    job = get_job(run_id)
    snap = job.snapshot() if job is not None else None
    if snap is not None and snap.status == "queued":
        waiting_run(run_id)
    elif snap is not None and not snap.done:
        live_run(run_id)
    else:
        show_run(run_id)

runs = my_runs()
if runs:
    st.divider()
    comparing = [get_job(r) for r in ss.get("compare", [])]
    if any(job is not None and not job.snapshot().done for job in comparing):
        live_compare()
    else:
        compare_ui(runs)
    st.divider()
    st.subheader("Your runs")
    labels = {r.id: f"{datetime.fromtimestamp(r.created):%H:%M:%S} · {r.label} · {r.status}"
              + (f" · val acc {r.final():.0%}" if r.final() is not None and not math.isnan(r.final()) else "")
              for r in runs}
    ids = list(labels)
    picked = st.selectbox("Reopen a run", ids, index=ids.index(run_id) if run_id in ids else 0,
                          format_func=labels.get)
    if picked != run_id and st.button("Open"):
        select_run(picked)
        st.rerun()
    st.caption("Each run has its own link: the address bar now points at the run shown above, "
               "so a refresh or a bookmark brings it back.")
