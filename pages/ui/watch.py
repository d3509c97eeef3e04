"""Pinned validation images on the Train page: choosing them before a run, and the player that steps
through what the run recorded for them at every epoch (``core.train.watch``).

The player is one Plotly figure with its frames, slider and play button: it plays in the browser,
with no rerun of the page per frame (a classroom of 30 playing at once costs the server nothing)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.train.base import MAX_PINS, TrainConfig
from core.train.watch import CAM_SIZE
from pages.ui.multitask import current_multitask
from pages.ui.runs import run_store
from pages.ui.session import current_split, split_key
from pages.ui.text import chart_text

__all__ = ["default_pins", "pins_ui", "with_pins", "watch_figure", "watch_player"]

TASK_KEY = "watch_task"
PINS_KEY = "watch_pins"  # the pinned images' names; None: the page's default (one per class)
COLUMNS = 4


def default_pins(val_ds, limit: int = MAX_PINS) -> list[int]:
    """One validation image per class (the first of each), at most ``limit``."""
    first: dict[int, int] = {}
    for i, label in enumerate(getattr(val_ds, "labels", []) or []):
        first.setdefault(int(label) if not isinstance(label, dict) else i, i)
    return sorted(first.values())[:limit] if first else list(range(min(limit, len(val_ds))))


def pins_ui() -> None:
    """The Train page's choice of pinned validation images (kept by name: a multi-task run's split
    finds the same images at its own positions)."""
    ss = st.session_state
    _, val_ds = current_split()
    if len(val_ds) == 0:
        return
    names = val_ds.names
    chosen = _chosen()
    default = [i for i, n in enumerate(names) if n in chosen] if chosen is not None else default_pins(val_ds)
    with st.expander(f"Pinned images — watched at every epoch ({len(default)})"):
        st.caption("The run records, for each pinned validation image, where the network looks (Grad-CAM for "
                   "its class) and how sure it is, at the end of every epoch. The player under the run's curves "
                   "steps through them. The default: one image per class.")
        labels = val_ds.labels

        def describe(i: int) -> str:
            return f"{names[i]} ({val_ds.classes[labels[i]]})"

        mt = current_multitask()
        if mt is not None:  # a run of every task at once watches one task's head
            st.selectbox("Task whose Grad-CAM is shown (runs of every task at once)", list(mt.tasks),
                         key=TASK_KEY)
        picked = st.multiselect("Pinned validation images", list(range(len(val_ds))), default=default,
                                format_func=describe, max_selections=MAX_PINS,
                                key=f"watch-pick-{abs(hash(split_key()))}")  # a new split: a new choice
        ss[PINS_KEY] = {"split": split_key(), "names": [names[i] for i in picked]}
        if picked:
            for column, i in zip(st.columns(MAX_PINS), picked, strict=False):
                column.image(val_ds[i][0], width="stretch")


def _chosen() -> list[str] | None:
    """The names pinned for the current split, or None (the default) for a split not chosen for yet."""
    chosen = st.session_state.get(PINS_KEY)
    return chosen["names"] if chosen and chosen["split"] == split_key() else None


def with_pins(config: TrainConfig, val_ds) -> TrainConfig:
    """``config`` with the pinned images' positions in ``val_ds`` (the split the run trains on)."""
    chosen = _chosen()
    if chosen is None:
        pins = default_pins(val_ds)
    else:
        position = {n: i for i, n in enumerate(val_ds.names)}
        pins = [position[n] for n in chosen if n in position][:MAX_PINS]
    tasks = getattr(val_ds, "tasks", None) or {}
    task = st.session_state.get(TASK_KEY)
    return replace(config, watch=tuple(pins), watch_task=task if task in tasks else "")


def _classes(record) -> list[str]:
    tasks = record.config.get("tasks")
    if tasks:  # a multi-task run watches one task's head
        task = record.config.get("watch_task") or next(iter(tasks))
        return list(tasks[task])
    return list(record.classes)


def _colours(frame: dict, n: int) -> list[str]:
    """The image's own class in red, the others grey."""
    return ["#d62728" if c == frame.get("target") else "#9aa5b1" for c in range(n)]


def _frame_traces(frames: list[dict], classes: list[str]) -> list:
    traces = []
    for f in frames:
        traces.append(go.Heatmap(z=f["cam"]))
        traces.append(go.Bar(y=f["probs"], marker_color=_colours(f, len(classes))))
    return traces


def watch_figure(frames: list[dict], images, classes: list[str], kept: int | None = None) -> go.Figure:
    """The pinned images with their CAM overlay and class probabilities, one animation frame per epoch
    (a slider over the epochs, a play button; the kept epoch is marked). ``images``: uint8 [P, 3, H, W]."""
    epochs = sorted({f["epoch"] for f in frames})
    pins = [f["index"] for f in frames if f["epoch"] == epochs[0]]
    by_epoch = {e: sorted((f for f in frames if f["epoch"] == e), key=lambda f: pins.index(f["index"])) for e in epochs}
    cols = min(COLUMNS, len(pins))
    rows = -(-len(pins) // cols)
    names = [chart_text(c) for c in classes]
    targets = {f["index"]: f.get("target", 0) for f in by_epoch[epochs[0]]}
    titles = []
    for r in range(rows):
        row = pins[r * cols:(r + 1) * cols]
        titles += [f"#{i} · {names[targets[i]] if targets[i] < len(names) else ''}" for i in row] + [""] * (cols - len(row))
        titles += [""] * cols
    fig = make_subplots(rows=2 * rows, cols=cols, subplot_titles=titles, vertical_spacing=0.06,
                        row_heights=[3, 1.4] * rows)
    start = by_epoch[epochs[-1]]
    side = images.shape[-1] if images is not None else CAM_SIZE
    step = side / CAM_SIZE
    for n, f in enumerate(start):
        r, c = 2 * (n // cols) + 1, n % cols + 1
        if images is not None:
            fig.add_trace(go.Image(z=images[n].permute(1, 2, 0).numpy(), hoverinfo="skip"), r, c)
        fig.add_trace(go.Heatmap(z=f["cam"], x0=-0.5 + step / 2, dx=step, y0=-0.5 + step / 2, dy=step,
                                 zmin=0, zmax=1, colorscale="Inferno", opacity=0.5, showscale=False,
                                 zsmooth="best", hoverinfo="skip"), r, c)
        fig.add_trace(go.Bar(x=names, y=f["probs"], showlegend=False, marker_color=_colours(f, len(classes)),
                             hovertemplate="%{x}: %{y:.0%}<extra></extra>"), r + 1, c)
        fig.update_yaxes(range=[0, 1], tickformat=".0%", nticks=3, row=r + 1, col=c)
        fig.update_xaxes(showticklabels=len(names) <= 6, row=r + 1, col=c)
        fig.update_xaxes(visible=False, row=r, col=c)
        fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=f"x{(r - 1) * cols + c}"
                         if (r - 1) * cols + c > 1 else "x", row=r, col=c)
    # the traces that change per frame: each pin's heatmap and bars
    per_pin = 3 if images is not None else 2
    changing = [t for n in range(len(start)) for t in (n * per_pin + per_pin - 2, n * per_pin + per_pin - 1)]
    def label(e: int) -> str:
        return f"{e} ★" if e == kept else str(e)

    def title(e: int) -> str:
        return f"Epoch {e} of {epochs[-1]}" + (f" · the run kept epoch {kept} ★" if kept else "")

    fig.frames = [go.Frame(name=str(e), data=_frame_traces(by_epoch[e], classes), traces=changing,
                           layout=dict(title_text=title(e))) for e in epochs]

    fig.update_layout(
        height=int(330 * rows) + 120, margin=dict(l=10, r=10, t=60, b=10), showlegend=False,
        title=dict(text=title(epochs[-1]), font=dict(size=14)),
        # the buttons sit left of the slider, on its line
        sliders=[dict(active=len(epochs) - 1, currentvalue=dict(prefix="Epoch "), pad=dict(t=20), x=0.16, len=0.84,
                      steps=[dict(method="animate", label=label(e),
                                  args=[[str(e)], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                                       transition=dict(duration=0))]) for e in epochs])],
        updatemenus=[dict(type="buttons", direction="left", x=0, y=0, xanchor="left", yanchor="top",
                          pad=dict(t=45), buttons=[
                              dict(label="▶ Play", method="animate",
                                   args=[None, dict(frame=dict(duration=700, redraw=True), fromcurrent=False,
                                                    transition=dict(duration=0), mode="immediate")]),
                              dict(label="❚❚ Pause", method="animate",
                                   args=[[None], dict(frame=dict(duration=0, redraw=False), mode="immediate")])])],
    )
    return fig


def watch_player(record, running: bool) -> None:
    """The run's pinned images, epoch by epoch: drawn under its curves while it trains and after."""
    if not record.config.get("watch"):
        return
    frames, images = run_store().load_watch(record.id)
    st.markdown("**Pinned images, epoch by epoch**")
    if not frames:
        st.caption("The pinned images are recorded at the end of each epoch: the first appears after epoch 1."
                   if running else "This run recorded no epoch of its pinned images.")
        return
    kept = (record.info or {}).get("best_epoch") if not running else None
    classes = _classes(record)
    if images is not None and len(images) != len({f["index"] for f in frames}):
        images = None
    fig = watch_figure(frames, images, classes, kept)
    st.plotly_chart(fig, width="stretch", key=f"watch-{record.id}")
    moved = [np.abs(np.subtract(a["cam"], b["cam"])).mean() for a, b in zip(
        [f for f in frames if f["epoch"] == frames[0]["epoch"]],
        [f for f in frames if f["epoch"] == frames[-1]["epoch"]], strict=False)]
    st.caption("Colour: Grad-CAM for the image's own class (red bar) at the backbone's last convolutional layer, "
               "bright where the features that support it are. Press ▶ Play or drag the slider."
               + (f" The maps moved by {np.mean(moved):.2f} on average from the first epoch to the last."
                  if moved else ""))
