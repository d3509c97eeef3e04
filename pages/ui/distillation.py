"""The Evaluate page's knowledge distillation: a finished run teaches a fresh student, trained with and
without it as one run; the teacher's softened output for an image, and the two students' curves."""

import plotly.graph_objects as go
import streamlit as st
import torch

from core import models
from core.errors import UserInputError
from core.methods.distillation import soften
from core.runs.kinds.distill import VARIANTS, start_distillation, students_of
from core.runs.tasks import Snapshot
from core.train.base import TrainConfig
from pages.ui.charts import category_axes
from pages.ui.models import backbone_catalogue, run_models
from pages.ui.multitask import is_multitask
from pages.ui.runs import finished_runs, run_option, run_status, run_store, stop_run
from pages.ui.session import current_split, split_key
from pages.ui.tasks import follow, store_result, stored_result
from pages.ui.text import chart_text, plain
from pages.ui.workspace import workspace

__all__ = ["distillation_ui"]

# Learning-rate choices for the distillation student.
LR_CHOICES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
COLOURS = {VARIANTS[0]: "#d62728", VARIANTS[1]: "#1f77b4"}


def results_figure(view: dict) -> go.Figure:
    fig = go.Figure()
    for variant in VARIANTS:
        epochs = view["epochs"].get(variant, [])
        fig.add_trace(go.Scatter(x=[e["epoch"] for e in epochs], y=[e["val_acc"] for e in epochs],
                                 mode="lines+markers", name=f"student {variant}", line=dict(color=COLOURS[variant])))
    if view["teacher_val_acc"] is not None:
        fig.add_hline(y=view["teacher_val_acc"], line_dash="dot", annotation_text="teacher",
                      annotation_position="bottom right")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), title="Student's validation accuracy",
                      xaxis=dict(title="epoch", dtick=1), yaxis=dict(range=[0, 1.02], tickformat=".0%"),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def distillation_view(run_id: str):
    """(snapshot, what to draw) of a distillation run: live from its events, or from its record once it ended."""
    snap, record = run_status(run_id)
    if record is None:
        return None, None
    config, info = record.config, record.info or {}
    if snap is None:  # ended (or left behind by a restarted server): the record is all there is
        status = record.status if record.done else "interrupted"
        snap = Snapshot(run_id, status, 1.0, message=record.message)
    live = not record.done and isinstance(snap.epochs, dict)
    view = {"epochs": {v: list(snap.epochs.get(v, ())) for v in VARIANTS} if live else students_of(record),
            "teacher_val_acc": snap.extra.get("teacher_val_acc", info.get("teacher_val_acc")),
            "temperature": config.get("temperature"), "alpha": config.get("alpha")}
    return snap, view


def show_distillation(snap, view: dict) -> None:
    if snap.status == "queued":
        st.info("Waiting for a free training slot…")
    elif not snap.done:
        variant = snap.extra.get("arm")
        phase = f" {variant}" if variant else ""  # empty until the first variant starts
        st.progress(snap.progress, text=f"Training the student{phase}… {snap.progress:.0%}")
    if snap.status in ("failed", "interrupted"):
        st.error(plain(snap.message))
    elif snap.message:
        st.info(plain(snap.message))
    if not any(view["epochs"].values()):
        return
    columns = st.columns(3)
    titles = {VARIANTS[0]: f"With the teacher (T = {view['temperature']:g}, α = {view['alpha']:g})",
              VARIANTS[1]: "Without the teacher (α = 0, labels only)"}
    for column, variant in zip(columns, VARIANTS, strict=False):
        epochs = view["epochs"][variant]
        column.markdown(f"**{titles[variant]}**")
        if epochs:
            last = epochs[-1]
            column.metric("Validation accuracy", f"{last['val_acc']:.1%}")
            column.metric("Validation loss", f"{last['val_loss']:.3f}")
        else:
            column.caption("Not trained yet.")
    columns[2].markdown("**The teacher**")
    if view["teacher_val_acc"] is not None:
        columns[2].metric("Validation accuracy", f"{view['teacher_val_acc']:.1%}")
    st.plotly_chart(results_figure(view), width="stretch", key="distill-results")


def live_distillation(run_id: str) -> bool:
    """The distillation's curves and a Stop button (``follow``'s draw): True while it runs."""
    snap, view = distillation_view(run_id)
    if snap is None:
        st.warning("This distillation is no longer on the server.")
        return False
    show_distillation(snap, view)
    if snap.done:
        return False
    if st.button("Stop", icon=":material/stop:", key="distill-stop"):
        stop_run(run_id)
    return True


def softening_figure(teacher, image, classes, temperature: float) -> go.Figure:
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
    chosen = _teacher()
    if chosen is None:
        return
    teacher_id, classes = chosen
    student = _student_settings()
    if _softening_preview(teacher_id, classes, student["temperature"]):
        _distil(teacher_id, student)


def _teacher() -> tuple[str, list[str]] | None:
    """The finished run picked as the teacher and its classes, or None after saying why it cannot teach."""
    runs = finished_runs()
    if not runs:
        st.info("Train a run first: a finished run is the teacher.")
        return None
    train_ds, _ = current_split()
    names = {r.id: run_option(r) for r in runs}
    ids = list(names)
    current = workspace().current_run
    teacher_id = st.selectbox("Teacher (a finished run)", ids, index=ids.index(current) if current in ids else 0,
                              format_func=names.get)
    record = run_store().get(teacher_id)
    if record is None:
        st.warning("This run is no longer on the server.")
        return None
    if is_multitask(record):
        st.info("This run has a head per task; distillation here teaches a student one task. Pick a run "
                "trained on one task as the teacher.")
        return None
    if list(record.classes) != list(train_ds.classes):
        st.warning(f"The teacher was trained on the classes {plain(', '.join(record.classes))}; the current "
                   f"dataset has {plain(', '.join(train_ds.classes))}. Load the teacher's dataset on the Data page "
                   "to distil it.")
        return None
    return teacher_id, list(record.classes)


def _student_settings() -> dict:
    """The student's backbone, start, temperature, α, epochs, input size and learning rate."""
    catalogue = {info["name"]: info for info in backbone_catalogue()}
    c1, c2, c3 = st.columns(3)
    student = c1.selectbox("Student backbone", list(catalogue), index=list(catalogue).index(models.DEFAULT_BACKBONE),
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
    return {"backbone": student, "pretrained": pretrained, "temperature": temperature, "alpha": alpha,
            "epochs": int(epochs), "size": int(size), "lr": float(lr)}


def _softening_preview(teacher_id: str, classes: list[str], temperature: float) -> bool:
    """One validation image and the teacher's output for it, plain and softened; False when the
    teacher cannot be loaded (after saying why)."""
    _, val_ds = current_split()
    pick = st.slider("Validation image", 1, len(val_ds), 1) if len(val_ds) > 1 else 1
    image, label = val_ds[pick - 1]
    left, right = st.columns([1, 3])
    left.image(image, caption=plain(f"{val_ds.classes[label]} · {val_ds.names[pick - 1]}"), width="stretch")
    try:
        teacher_view = run_models(teacher_id).after
    except UserInputError as exc:
        st.error(plain(exc))
        return False
    right.plotly_chart(softening_figure(teacher_view, image, classes, temperature), width="stretch",
                       key="softening")
    return True


def _distil(teacher_id: str, student: dict) -> None:
    """The Distil button, and the distillation it started for these choices: live, or its results."""
    ss, ws = st.session_state, workspace()
    cfg = ws.config
    inputs = (teacher_id, split_key(), student["backbone"], student["pretrained"], student["temperature"],
              student["alpha"], student["epochs"], student["size"], student["lr"], cfg.batch_size, cfg.seed,
              cfg.optimizer, cfg.schedule, cfg.augment)
    run_id, stale = stored_result("distill_job", inputs, running=lambda r: not distillation_done(r))
    running = run_id is not None and not distillation_done(run_id)
    if st.button("Distil: train the student with and without the teacher", type="primary",
                 icon=":material/school:", disabled=running):
        config = TrainConfig(epochs=student["epochs"], batch_size=cfg.batch_size, lr=student["lr"], seed=cfg.seed,
                             optimizer=cfg.optimizer, schedule=cfg.schedule, augment=cfg.augment,
                             image_size=student["size"])
        train_ds, val_ds = current_split()
        try:
            job = start_distillation(run_store(), teacher_id, train_ds, val_ds, config, student["temperature"],
                                     student["alpha"], backbone=student["backbone"], pretrained=student["pretrained"],
                                     owner=ss.owner, dataset=ws.dataset_label)
        except UserInputError as exc:
            st.error(plain(exc))
            return
        run_id, stale, running = job.run_id, False, True
        store_result("distill_job", inputs, run_id)
    if run_id is None:
        return
    if stale:
        st.warning("Still training for the previous selection (another teacher, dataset or setting): these "
                   "results are not for the choices above. Stop it, or wait, then distil again.")
    if running:
        follow(live_distillation, ss["distill_job"]["value"], live=True)
    else:
        snap, view = distillation_view(run_id)
        if snap is None:
            st.warning("This distillation is no longer on the server.")
        else:
            show_distillation(snap, view)


def distillation_done(run_id: str) -> bool:
    snap, _ = distillation_view(run_id)
    return snap is None or snap.done
