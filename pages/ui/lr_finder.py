"""The Evaluate page's learning-rate finder: a sweep queued as a run on the model the Train page would
start from, its curve and suggestion, and a button that hands the rate to the Train page."""

import math
from dataclasses import replace

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.errors import UserInputError
from core.runs.kinds.lr_find import start_lr_sweep, sweep_of
from pages.ui.runs import run_status, run_store, stop_run
from pages.ui.session import current_split, split_key
from pages.ui.tasks import follow, store_result, stored_result
from pages.ui.text import plain
from pages.ui.workspace import workspace

__all__ = ["lr_finder_ui"]

# Steps of the learning-rate sweep: one batch each, from 10⁻⁶ to 1.
SWEEP_STEPS = 60


def suggested_rate(lr: float) -> float:
    """The suggestion at two significant digits: the Train page keeps it as it is."""
    return float(f"{lr:.2g}")


def lr_figure(result) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=result.lrs, y=result.losses, mode="lines", name="loss per batch",
                             line=dict(width=1, color="rgba(31,119,180,0.35)")))
    fig.add_trace(go.Scatter(x=result.lrs, y=result.smoothed, mode="lines", name="smoothed loss",
                             line=dict(color="#1f77b4", width=2)))
    i = int(np.argmin(np.abs(np.log(result.lrs) - math.log(result.suggestion))))
    fig.add_trace(go.Scatter(x=[result.suggestion], y=[result.smoothed[i]], mode="markers+text",
                             name="suggested", text=[f"suggested {result.suggestion:.1e}"],
                             textposition="bottom left", marker=dict(size=13, color="#d62728", symbol="x")))
    lo, hi = useful_range(result)
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10), title="Learning-rate range test",
                      xaxis=dict(type="log", title="learning rate"),
                      yaxis=dict(title="training loss (the blow-up runs off the top)", range=[lo, hi]),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def useful_range(result) -> tuple[float, float]:
    """The loss axis from just below the smoothed minimum to just above where the loss started: the
    descent, where the choice is made. Scaled to the blow-up (a loss of 40 after one of 1.6), the
    descent looked flat."""
    smoothed = [v for v in result.smoothed if math.isfinite(v)]
    if not smoothed:
        return 0.0, 1.0
    low = min(smoothed)
    before = smoothed[:smoothed.index(low) + 1]
    top = max(max(before), smoothed[0])
    batch = [v for v in result.losses[:len(before)] if math.isfinite(v)]
    if batch:  # the noisy per-batch losses of the descent too, but not their outliers
        top = max(top, float(np.percentile(batch, 95)))
        low = min(low, float(np.percentile(batch, 5)))
    pad = 0.1 * max(top - low, 1e-6)
    return max(0.0, low - pad), top + pad


def sweep_running(entry) -> bool:
    """Whether the sweep in this session's entry is queued or sweeping now."""
    snap, _ = run_status(entry["run_id"])
    return snap is not None and not snap.done


def start_sweep(mc, cfg, inputs, previous) -> None:
    """Queue a sweep on the model the Train page would start from (a run, in a worker process)."""
    train_ds, _ = current_split()
    # the strategy's own settings (the preset the Model page chose, as the Train page shows them),
    # every group that will train trained at once: the sweep is too short for a schedule
    config = replace(cfg, freeze=list(mc.freeze), lr_multipliers=dict(mc.lr_multipliers),
                     unfreeze_every=0, warmup_epochs=0, early_stopping=0)
    job = start_lr_sweep(run_store(), train_ds, config, backbone=mc.backbone, pretrained=mc.pretrained,
                         weights_path=mc.weights_path if mc.pretrained else None, steps=SWEEP_STEPS,
                         owner=st.session_state.owner, dataset=workspace().dataset_label)
    if previous is not None:  # only the newest sweep is shown: the earlier one stops, or its folder goes
        if sweep_running(previous):
            stop_run(previous["run_id"])
        else:
            run_store().delete(previous["run_id"])
    store_result("lr_finder", inputs, {"run_id": job.run_id, "about": f"{mc.backbone} · {mc.strategy} · {cfg.optimizer}",
                                       "strategy": mc.strategy})


def sweep_progress() -> bool:
    """The running sweep's progress and a Stop button (``follow``'s draw): True while it runs."""
    ss = st.session_state
    entry = ss.get("lr_finder")
    if entry is None:
        return False
    run_id = entry["value"]["run_id"]
    snap, _ = run_status(run_id)
    if snap is None or snap.done:
        st.progress(1.0, text="Learning-rate sweep: ended, drawing the result…")
        return False
    if snap.status == "queued":
        st.info("The learning-rate sweep waits for a free training slot…")
    elif "step" in snap.extra:
        st.progress(snap.extra["step"] / max(1, snap.extra["steps"]),
                    text=f"Learning-rate sweep: lr {snap.extra['lr']:.1e}, loss {snap.extra['loss']:.3g}")
    else:
        st.progress(snap.progress, text=f"Learning-rate sweep: building the model and caching features… "
                                        f"({snap.seconds:.0f} s)")
    if st.button("Stop", icon=":material/stop:", key="lr_finder-stop"):
        stop_run(run_id)
    return True


def sweep_result(entry):
    """The finished sweep's result, or None after saying why there is none."""
    record = run_store().get(entry["run_id"])
    if record is None:
        st.warning("This learning-rate sweep is no longer on the server: start it again.")
        return None
    if record.status == "finished" and sweep_of(record) is not None:
        return sweep_of(record)
    if record.status == "cancelled":
        st.info("The learning-rate sweep was stopped before it finished. Start it again to see a result.")
    elif record.done:
        st.error(plain(record.message))
    else:
        st.warning("This learning-rate sweep stopped with the server: start it again.")
    return None


def lr_finder_ui() -> None:
    ss, ws = st.session_state, workspace()
    mc, cfg = ws.model, ws.config
    st.write(
        "One short run raises the learning rate from 10⁻⁶ to 1, one batch per step, on a copy of the model "
        "the Train page would start from. The loss first barely moves, then falls, then blows up. The "
        "suggestion is where the smoothed loss falls fastest: high enough to learn quickly, well below "
        "where training breaks."
    )
    st.caption(f"Model: **{mc.backbone}**{' pretrained' if mc.pretrained else ' from scratch'} · **{mc.strategy}** "
               f"· {cfg.optimizer} · batch {cfg.batch_size} · {cfg.image_size} px (from the Model and Train pages)")
    # The sweep belongs to the model, settings and data it ran on; change any and it is gone.
    inputs = (mc.backbone, mc.pretrained, mc.weights_path, tuple(mc.freeze), tuple(sorted(mc.lr_multipliers.items())),
              cfg.optimizer, cfg.batch_size, cfg.image_size, cfg.seed, cfg.augment, split_key())
    previous = ss.get("lr_finder", {}).get("value")
    found, stale = stored_result("lr_finder", inputs, running=sweep_running)
    running = found is not None and sweep_running(found)
    if st.button("Find a learning rate", icon=":material/search:", disabled=running and not stale):
        try:
            start_sweep(mc, cfg, inputs, previous)
        except UserInputError as exc:  # a full queue, data the sweep cannot use
            st.error(plain(exc))
            return
        found, stale, running = ss.lr_finder["value"], False, True
    if found is None:
        return
    if running:
        if stale:
            st.warning("The learning-rate sweep is still running for an earlier selection; its result will not "
                       "be shown for the choices above. Stop it, or start again.")
        follow(sweep_progress, live=True)
        return
    result = sweep_result(found)
    if result is None:
        return
    st.plotly_chart(lr_figure(result), width="stretch", key="lr-finder")
    how = ("where the smoothed loss falls fastest" if result.method == "steepest"
           else "one tenth of the learning rate at the lowest loss (the curve had no clear descent)")
    st.markdown(f"Suggested learning rate for {found['about']}: **{result.suggestion:.1e}**, {how}. "
                f"The loss was lowest at {result.min_lr:.1e}"
                + (" and the sweep stopped early, when the loss blew up." if result.stopped_early else "."))
    if found.get("strategy", mc.strategy) != mc.strategy:
        st.warning(f"This sweep was for {found['strategy']}; the Model page now says {mc.strategy}. "
                   "Sweep again: each strategy has its own best rate.")
        return
    choice = suggested_rate(result.suggestion)
    if st.button(f"Use lr = {choice:.2g} on the Train page", key="lr-apply", disabled=ws.is_locked("lr"),
                 help="Sets the Train page's learning rate; every other setting stays."):
        if not ws.change(by_hand=True, lr=choice):
            ss.lr_applied = choice
    if ws.is_locked("lr"):
        st.caption(f":material/lock: Your link locks the learning rate at {ws.config.lr:.2g}: "
                   "the suggestion is for comparing, not for training here.")
    if ss.get("lr_applied") is not None and math.isclose(ws.config.lr, ss.lr_applied):
        st.success(f"Applied: the Train page's learning rate is now {ss.lr_applied:.2g} for {mc.strategy} "
                   f"(the other settings are unchanged). Train there to use it.")
