"""Train: start a run, watch its curves grow, reopen finished runs."""

import math
from datetime import datetime

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.errors import UserInputError
from core.jobs import get_job, start_run
from core.training import TrainConfig
from pages._shared import current_split, my_runs, run_status, run_store, select_run

ss = st.session_state
st.title("Train")

SIZES = {96: "fastest", 128: "fast (default)", 160: "balanced", 224: "ImageNet size, slowest"}


def settings_ui() -> TrainConfig:
    cfg: TrainConfig = ss.train_config
    with st.expander("Training settings", expanded=False):
        c1, c2, c3, c4 = st.columns(4)
        epochs = c1.number_input("Epochs", 1, 100, cfg.epochs)
        batch = c2.selectbox("Batch size", [4, 8, 16, 32, 64], index=[4, 8, 16, 32, 64].index(cfg.batch_size)
                             if cfg.batch_size in (4, 8, 16, 32, 64) else 2)
        lr = c3.select_slider("Learning rate", [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
                              value=cfg.lr if cfg.lr in (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1) else 3e-3,
                              format_func=lambda v: f"{v:g}")
        size = c4.selectbox("Input size (px)", list(SIZES), index=list(SIZES).index(cfg.image_size)
                            if cfg.image_size in SIZES else 1, format_func=lambda s: f"{s} — {SIZES[s]}")
        c5, c6, c7, c8 = st.columns(4)
        optimizer = c5.selectbox("Optimizer", ["adamw", "sgd"], index=["adamw", "sgd"].index(cfg.optimizer))
        schedule = c6.selectbox("Schedule", ["cosine", "onecycle", "constant"],
                                index=["cosine", "onecycle", "constant"].index(cfg.schedule))
        augment = c7.checkbox("Augmentation", cfg.augment, help="Random crops, flips and colour jitter.")
        seed = c8.number_input("Seed", 0, 10_000, cfg.seed)
    mc = ss.model_choice
    ss.train_config = TrainConfig(
        epochs=int(epochs), batch_size=int(batch), lr=float(lr), freeze=list(mc.freeze),
        lr_multipliers=dict(mc.lr_multipliers), seed=int(seed), optimizer=optimizer, schedule=schedule,
        augment=augment, image_size=int(size),
    )
    return ss.train_config


def start_ui(config: TrainConfig) -> None:
    mc = ss.model_choice
    st.markdown(
        f"**{ss.dataset_label}** ({len(ss.dataset)} images) · **{mc.backbone}**"
        f"{' pretrained' if mc.pretrained else ' from scratch'} · **{mc.strategy}** · "
        f"{config.epochs} epochs at {config.image_size} px"
    )
    if st.button("Train", type="primary", icon=":material/play_arrow:"):
        try:
            train_ds, val_ds = current_split()
            job = start_run(
                run_store(), train_ds, val_ds, backbone=mc.backbone, pretrained=mc.pretrained,
                weights_path=mc.weights_path, config=config, owner=ss.owner, dataset=ss.dataset_label,
            )
        except UserInputError as exc:
            st.error(str(exc))
            return
        select_run(job.run_id)
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
    if info.get("uses_feature_cache"):
        st.caption(":material/bolt: Only the head trains: the frozen backbone's features were computed once and are reused "
                   "every epoch (augmented views cached too).")
    elif info:
        st.caption(f"Training {info.get('trainable_params', 0):,} parameters, "
                   f"{info.get('frozen_params', 0):,} frozen, on {info.get('device', '?')}.")
    if status in ("failed", "diverged"):
        st.error(message)
    elif message:
        st.info(message)
    if epochs or batch_losses:
        st.plotly_chart(curves(epochs, batch_losses), width="stretch", key=f"curves-{run_id}")
    if epochs and not running:
        last = epochs[-1]
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Validation accuracy", f"{last['val_acc']:.1%}" if not math.isnan(last["val_acc"]) else "—")
        c2.metric("Validation loss", f"{last['val_loss']:.3f}" if not math.isnan(last["val_loss"]) else "—")
        c3.metric("Train accuracy", f"{last['train_acc']:.1%}")
        if record.finished:
            c4.metric("Time, start to end", f"{record.finished - record.created:.1f} s")
    return running


@st.fragment(run_every=1.0)
def live_run(run_id: str) -> None:
    if not show_run(run_id):
        st.rerun()  # finished: redraw the whole page once, without the timer


config = settings_ui()
start_ui(config)

run_id = ss.current_run
if run_id:
    job = get_job(run_id)
    if job is not None and not job.snapshot().done:
        live_run(run_id)
    else:
        show_run(run_id)

runs = my_runs()
if runs:
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
