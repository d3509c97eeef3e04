"""The pages' multi-task parts: the session's images with a label per task, their split, a curve
per task, and which runs have a head per task (a helper module, not a page)."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from core import data
from core.train.multitask import WEIGHTINGS
from pages.ui.workspace import workspace

# one colour per task, the same on every chart of a page
TASK_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def current_multitask():
    """The session's dataset with a label per task (a ZIP with labels.csv, the multi-task demo), or None."""
    mt = st.session_state.get("multitask")
    return mt["dataset"] if mt else None


def multitask_split():
    """The multi-task dataset's training and validation images, split as the Data page splits."""
    ss = st.session_state
    return data.split(current_multitask(), ss.val_fraction, ss.split_seed)


def is_multitask(record) -> bool:
    return record is not None and record.config.get("kind") == "multitask"


def same_tasks(record) -> bool:
    """Whether the session's multi-task dataset has the run's tasks and classes."""
    ds = current_multitask()
    return ds is not None and ds.tasks == record.config.get("tasks")


def multitask_options_ui() -> dict | None:
    """On the Train page with a multi-task dataset: train every task at once (the options of
    ``core.runs.kinds.multitask.start_multitask_run``), or None for the one task the Data page picked."""
    ds = current_multitask()
    if ds is None:
        return None
    everything = f"All {len(ds.tasks)} tasks at once: one shared backbone, a head per task"
    one = f"Only {workspace().dataset_label} (the task picked on the Data page)"
    choice = st.radio("What to train", [everything, one], key="train_tasks",
                      help="Several labels per image: one model can learn every task, or one task alone.")
    if choice != everything:
        return None
    c1, c2 = st.columns([2, 1])
    weighting = c1.selectbox("Loss weighting", list(WEIGHTINGS), format_func=WEIGHTINGS.get, key="train_weighting")
    pcgrad = c2.checkbox("PCGrad", key="train_pcgrad",
                         help="Where two tasks' gradients on the shared layers point apart, project each off "
                              "the other (Yu et al. 2020).")
    weights = {}
    if weighting == "manual":
        columns = st.columns(min(4, len(ds.tasks)))
        for n, task in enumerate(ds.tasks):
            weights[task] = float(columns[n % len(columns)].number_input(
                f"Weight of {task}", 0.0, 10.0, 1.0, 0.1, key=f"train_weight_{n}"))
    return {"weighting": weighting, "weights": weights, "pcgrad": bool(pcgrad)}


def task_curves(epochs: list[dict]) -> go.Figure:
    """Validation accuracy per task, epoch by epoch, with the overall one (their mean) dashed."""
    fig = go.Figure()
    x = [e["epoch"] for e in epochs]
    tasks = list(epochs[-1].get("val_acc_by_task", {})) if epochs else []
    for n, task in enumerate(tasks):
        fig.add_trace(go.Scatter(x=x, y=[_value(e.get("val_acc_by_task", {}).get(task)) for e in epochs],
                                 name=task, mode="lines+markers",
                                 line=dict(color=TASK_COLOURS[n % len(TASK_COLOURS)])))
    fig.add_trace(go.Scatter(x=x, y=[_value(e.get("val_acc")) for e in epochs], name="overall (mean)",
                             mode="lines+markers", line=dict(color="#ff7f0e", dash="dash")))
    fig.update_layout(title="Validation accuracy by task", height=320, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(title="epoch", rangemode="tozero"), yaxis=dict(range=[0, 1.02], tickformat=".0%"),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def _value(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def task_pair(pair, task: str):
    """A run's before/after models seen through one task's head (saliency: where does each head
    look?), the head group narrowed to that task's head."""
    from dataclasses import replace

    from core.models.backbones import LayerGroup
    from core.models.multitask import task_view

    head = pair.after.head_module
    # the head group is this task's own head: its output is one tensor, its weights this head's alone
    groups = [LayerGroup(g.name, [f"{m}.heads.{task}" if m == head else m for m in g.modules])
              for g in pair.layer_groups]
    return replace(pair, before=task_view(pair.before, task), after=task_view(pair.after, task),
                   classes=list(pair.after.tasks[task]), layer_groups=groups)
