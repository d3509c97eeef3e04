"""Evaluate: how a trained run does on the validation split; the learning-rate finder; distillation."""

import math
from dataclasses import replace

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core import backbones
from core.devices import pick_device
from core.distillation import VARIANTS, DistillationJob, soften
from core.errors import UserInputError
from core.evaluation import evaluate_dataset
from core.lr_finder import find_lr
from core.training import TrainConfig
from pages._shared import (backbone_catalogue, bootstrap, category_axes, chart_text, current_split, fading_scale,
                           finished_runs, fit_title, model_picker, plain, run_models, run_option, run_store, store_result,
                           stored_result)

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state
st.title("Evaluate")
st.write(
    "Accuracy alone hides which classes a model confuses. Look at the confusion matrix, the per-class "
    "scores and the mistakes it was surest of; then try two training strategies: finding a learning "
    "rate, and distilling a trained model into a fresh student."
)

# Learning-rate choices for the distillation student.
LR_CHOICES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
COLOURS = {VARIANTS[0]: "#d62728", VARIANTS[1]: "#1f77b4"}


def split_key() -> tuple:
    return ss.dataset.fingerprint, ss.val_fraction, ss.split_seed


def heatmap(z, classes, title: str, fmt: str):
    classes = [chart_text(c) for c in classes]
    fig = go.Figure(go.Heatmap(
        z=z, x=classes, y=classes, colorscale=fading_scale((8, 81, 156)), zmin=0, texttemplate=fmt, showscale=False,
        hovertemplate="true %{y} · predicted %{x}: %{z}<extra></extra>",
    ))
    fig.update_layout(title=title, height=140 + 40 * len(classes), margin=dict(l=0, r=0, t=40, b=0),
                      xaxis=dict(title="predicted", side="bottom", type="category"),
                      yaxis=dict(title="true", autorange="reversed", type="category"))
    return fit_title(fig, 30)


def evaluation(run_id: str):
    """The run's evaluation on the current validation split, kept for this session."""
    cache = ss.setdefault("_evaluations", {})
    key = (run_id, *split_key())
    if key not in cache:
        model = run_models(run_id).after
        _, val_ds = current_split()
        with st.spinner("Predicting every validation image…"):
            cache[key] = evaluate_dataset(model, val_ds, device=pick_device())
        while len(cache) > 4:
            cache.pop(next(iter(cache)))
    return cache[key]


def evaluation_ui() -> None:
    runs = finished_runs()
    if not runs:
        st.info("Train a run first (on the Train page): its validation results appear here.")
        return
    run_id, record = model_picker("Run to evaluate")
    if run_id is None:
        st.info("Pick a trained run: the pretrained backbone alone knows ImageNet's classes, not yours.")
        return
    try:
        ev = evaluation(run_id)
    except UserInputError as exc:
        st.error(plain(exc))
        return
    _, val_ds = current_split()
    c1, c2, c3 = st.columns(3)
    c1.metric("Validation accuracy", f"{ev.accuracy:.1%}")
    c2.metric("Validation images", len(ev.labels))
    c3.metric("Misclassified", int((ev.preds != ev.labels).sum()))
    left, right = st.columns(2)
    left.plotly_chart(heatmap(ev.confusion(), ev.classes, "Confusion matrix (counts)", "%{z}"),
                      width="stretch", key="confusion-counts")
    right.plotly_chart(heatmap(ev.confusion(normalize=True), ev.classes,
                               "Normalised per true class (rows sum to 1)", "%{z:.0%}"),
                       width="stretch", key="confusion-normalised")
    st.caption("Rows are the true classes, columns what the model said; the diagonal holds the correct answers. "
               "In the normalised matrix the diagonal is each class's recall.")
    st.dataframe(ev.per_class(), hide_index=True, width="stretch", column_config={
        "precision": st.column_config.NumberColumn(format="percent", help="Of the images called this class, "
                                                                         "how many were."),
        "recall": st.column_config.NumberColumn(format="percent", help="Of the images of this class, how many "
                                                                      "were found."),
        "f1": st.column_config.NumberColumn("F1", format="%.2f", help="The harmonic mean of the two."),
        "support": st.column_config.NumberColumn(help="Validation images of this class."),
    })
    st.markdown("**The mistakes the model was surest of**")
    mistakes = ev.most_confidently_wrong(k=12)
    if not mistakes:
        st.success("Every validation image is classified correctly.")
        return
    columns = st.columns(4)
    for n, m in enumerate(mistakes):
        with columns[n % 4]:
            st.image(val_ds[m.index][0], width="stretch",
                     caption=f"{plain(m.true)}, taken for {plain(m.predicted)} ({m.confidence:.0%})")
            st.caption(" · ".join(f"{plain(name)} {p:.0%}" for name, p in m.top3))


# --- learning-rate finder ------------------------------------------------------------------


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
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10), title="Learning-rate range test",
                      xaxis=dict(type="log", title="learning rate"), yaxis=dict(title="training loss"),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def lr_finder_ui() -> None:
    mc, cfg = ss.model_choice, ss.train_config
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
    if st.button("Find a learning rate", icon=":material/search:"):
        try:
            train_ds, _ = current_split()
            # the strategy's own settings (the preset the Model page chose, as the Train page shows them),
            # every group that will train trained at once: the sweep is too short for a schedule
            config = replace(cfg, freeze=list(mc.freeze), lr_multipliers=dict(mc.lr_multipliers),
                             unfreeze_every=0, warmup_epochs=0, early_stopping=0)
            with st.spinner("Sweeping the learning rate…"):
                model = backbones.starting_model(mc.backbone, list(train_ds.classes), pretrained=mc.pretrained,
                                                 seed=cfg.seed, image_size=cfg.image_size,
                                                 weights_path=mc.weights_path if mc.pretrained else None)
                result = find_lr(model, train_ds, config)
        except UserInputError as exc:
            st.error(plain(exc))
        else:
            store_result("lr_finder", inputs, {"result": result,
                                               "about": f"{mc.backbone} · {mc.strategy} · {cfg.optimizer}",
                                               "strategy": mc.strategy})
    found, _ = stored_result("lr_finder", inputs)
    if not found:
        return
    result = found["result"]
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
    if st.button(f"Use lr = {choice:.2g} on the Train page", key="lr-apply",
                 help="Sets the Train page's learning rate; every other setting stays."):
        ss.train_config = replace(ss.train_config, lr=choice)
        ss.lr_applied = choice
    if ss.get("lr_applied") is not None and math.isclose(ss.train_config.lr, ss.lr_applied):
        st.success(f"Applied: the Train page's learning rate is now {ss.lr_applied:.2g} for {mc.strategy} "
                   f"(the other settings are unchanged). Train there to use it.")


# --- knowledge distillation ----------------------------------------------------------------


def results_figure(snap) -> go.Figure:
    fig = go.Figure()
    for variant in VARIANTS:
        epochs = snap.epochs[variant]
        fig.add_trace(go.Scatter(x=[e.epoch for e in epochs], y=[e.val_acc for e in epochs], mode="lines+markers",
                                 name=f"student {variant}", line=dict(color=COLOURS[variant])))
    if snap.teacher_val_acc is not None:
        fig.add_hline(y=snap.teacher_val_acc, line_dash="dot", annotation_text="teacher",
                      annotation_position="bottom right")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), title="Student's validation accuracy",
                      xaxis=dict(title="epoch", dtick=1), yaxis=dict(range=[0, 1.02], tickformat=".0%"),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def show_distillation(snap) -> None:
    if snap.status == "queued":
        st.info("Waiting for a free training slot…")
    elif not snap.done:
        phase = f" {snap.phase}" if snap.phase else ""  # empty until the first variant starts
        st.progress(snap.progress, text=f"Training the student{phase}… {snap.progress:.0%}")
    if snap.status == "failed":
        st.error(plain(snap.message))
    elif snap.message:
        st.info(plain(snap.message))
    if not any(snap.epochs.values()):
        return
    columns = st.columns(3)
    titles = {VARIANTS[0]: f"With the teacher (T = {snap.temperature:g}, α = {snap.alpha:g})",
              VARIANTS[1]: "Without the teacher (α = 0, labels only)"}
    for column, variant in zip(columns, VARIANTS):
        epochs = snap.epochs[variant]
        column.markdown(f"**{titles[variant]}**")
        if epochs:
            last = epochs[-1]
            column.metric("Validation accuracy", f"{last.val_acc:.1%}")
            column.metric("Validation loss", f"{last.val_loss:.3f}")
        else:
            column.caption("Not trained yet.")
    columns[2].markdown("**The teacher**")
    if snap.teacher_val_acc is not None:
        columns[2].metric("Validation accuracy", f"{snap.teacher_val_acc:.1%}")
    st.plotly_chart(results_figure(snap), width="stretch", key="distill-results")


@st.fragment(run_every=1.0)
def live_distillation() -> None:
    job = ss["distill_job"]["value"]
    snap = job.snapshot()
    show_distillation(snap)
    if snap.done:
        st.rerun()  # finished: redraw the whole page once, without the timer
    elif st.button("Stop", icon=":material/stop:", key="distill-stop"):
        job.cancel()


def softening_figure(teacher, image, classes, temperature: float) -> go.Figure:
    import torch

    with torch.inference_mode():
        logits = teacher.eval()(teacher.preprocess(image).unsqueeze(0))[0]
    fig = go.Figure()
    for t, colour in ((1.0, "#9aa5b1"), (temperature, "#d62728")):
        probs = soften(logits, t).tolist()
        fig.add_trace(go.Bar(x=[chart_text(c) for c in classes], y=probs, name=f"T = {t:g}", marker_color=colour,
                             text=[f"{p:.0%}" for p in probs], textposition="outside"))
    fig.update_layout(barmode="group", height=300, margin=dict(l=10, r=10, t=40, b=10),
                      title="The teacher's output for this image, softened", yaxis=dict(range=[0, 1.1], tickformat=".0%"))
    return category_axes(fig, "xaxis")


def distillation_ui() -> None:
    st.write(
        "A trained model (the teacher) can teach a fresh model (the student) more than the labels do: its "
        "probabilities say which wrong classes look alike. Dividing the teacher's logits by a temperature "
        "T > 1 softens them so those small probabilities carry weight. The student learns from "
        "(1 − α) × the labels' cross-entropy + α × T² × its KL divergence from the softened teacher."
    )
    runs = finished_runs()
    if not runs:
        st.info("Train a run first: a finished run is the teacher.")
        return
    train_ds, val_ds = current_split()
    names = {r.id: run_option(r) for r in runs}
    ids = list(names)
    current = ss.get("current_run")
    teacher_id = st.selectbox("Teacher (a finished run)", ids, index=ids.index(current) if current in ids else 0,
                              format_func=names.get)
    record = run_store().get(teacher_id)
    if record is None:
        st.warning("This run is no longer on the server.")
        return
    if list(record.classes) != list(train_ds.classes):
        st.warning(f"The teacher was trained on the classes {plain(', '.join(record.classes))}; the current "
                   f"dataset has {plain(', '.join(train_ds.classes))}. Load the teacher's dataset on the Data page "
                   "to distil it.")
        return
    catalogue = {info["name"]: info for info in backbone_catalogue()}
    c1, c2, c3 = st.columns(3)
    student = c1.selectbox("Student backbone", list(catalogue), index=list(catalogue).index(backbones.DEFAULT_BACKBONE),
                           format_func=lambda n: f"{catalogue[n]['title']} · {catalogue[n]['params_millions']:.1f} M")
    offline = catalogue[student]["offline"]
    pretrained = c1.checkbox("Student starts from ImageNet weights", offline, disabled=not offline,
                             help="Off: the student starts from random weights. On a few dozen images such a "
                                  "student needs many epochs before it learns anything, with or without a teacher.")
    temperature = c2.slider("Temperature T", 1.0, 10.0, 4.0, 0.5)
    alpha = c3.slider("α: weight of the teacher", 0.0, 1.0, 0.7, 0.05)
    c4, c5, c6 = st.columns(3)
    epochs = c4.number_input("Student epochs", 1, 50, 5)
    size = c5.select_slider("Student input size (px)", [32, 48, 64, 96, 128], value=64,
                            help="A student that sees smaller images is cheaper to run; the teacher keeps its own size.")
    lr = c6.select_slider("Student learning rate", LR_CHOICES, value=1e-3, format_func=lambda v: f"{v:g}")

    pick = st.slider("Validation image", 1, len(val_ds), 1) if len(val_ds) > 1 else 1
    image, label = val_ds[pick - 1]
    left, right = st.columns([1, 3])
    left.image(image, caption=plain(f"{val_ds.classes[label]} · {val_ds.names[pick - 1]}"), width="stretch")
    try:
        teacher_view = run_models(teacher_id).after
    except UserInputError as exc:
        st.error(plain(exc))
        return
    right.plotly_chart(softening_figure(teacher_view, image, record.classes, temperature), width="stretch",
                       key="softening")

    cfg = ss.train_config
    inputs = (teacher_id, split_key(), student, pretrained, temperature, alpha, int(epochs), int(size), float(lr),
              cfg.batch_size, cfg.seed, cfg.optimizer, cfg.schedule, cfg.augment)
    job, stale = stored_result("distill_job", inputs, running=lambda j: not j.snapshot().done)
    running = job is not None and not job.snapshot().done
    if st.button("Distil: train the student with and without the teacher", type="primary",
                 icon=":material/school:", disabled=running):
        cfg = ss.train_config
        config = TrainConfig(epochs=int(epochs), batch_size=cfg.batch_size, lr=float(lr), seed=cfg.seed,
                             optimizer=cfg.optimizer, schedule=cfg.schedule, augment=cfg.augment, image_size=int(size))
        classes = list(train_ds.classes)

        def build():
            return backbones.starting_model(student, classes, pretrained=pretrained, seed=config.seed,
                                            image_size=config.image_size)

        try:
            teacher = run_store().load_model(teacher_id)  # its own copy: the worker thread uses it
            job = DistillationJob(build, teacher, train_ds, val_ds, config, temperature, alpha).start()
            store_result("distill_job", inputs, job)
            stale = False
        except UserInputError as exc:
            st.error(plain(exc))
            return
        running = True
    if job is None:
        return
    if stale:
        st.warning("Still training for the previous selection (another teacher, dataset or setting): these "
                   "results are not for the choices above. Stop it, or wait, then distil again.")
    if running:
        live_distillation()
    else:
        show_distillation(job.snapshot())


tab_eval, tab_lr, tab_distil = st.tabs(["Validation results", "Learning-rate finder", "Knowledge distillation"])
with tab_eval:
    evaluation_ui()
with tab_lr:
    lr_finder_ui()
with tab_distil:
    distillation_ui()
