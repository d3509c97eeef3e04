"""Evaluate: how a trained run does on the validation split; the learning-rate finder; distillation."""

import math
from dataclasses import replace
from functools import partial

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from core import models
from core.analysis import saliency
from core.analysis.evaluation import cell_examples, confusion_by_task, evaluate_dataset, worst_mistakes
from core.analysis.overlay import overlay
from core.devices import pick_device
from core.errors import UserInputError
from core.methods.distillation import soften
from core.runs.kinds.distill import VARIANTS, start_distillation, students_of
from core.runs.kinds.lr_find import start_lr_sweep, sweep_of
from core.runs.tasks import Snapshot
from core.train.base import TrainConfig
from pages.ui.charts import category_axes, fading_scale, fit_title
from pages.ui.models import backbone_catalogue, model_picker, run_models
from pages.ui.multitask import is_multitask, multitask_split, same_tasks
from pages.ui.runs import finished_runs, run_option, run_status, run_store, stop_run
from pages.ui.session import bootstrap, current_split
from pages.ui.tasks import follow, store_result, stored_result
from pages.ui.text import chart_text, plain

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state
st.title("Evaluate")
st.write(
    "Accuracy alone hides which classes a model confuses. Look at the confusion matrix (click a cell to see "
    "its images and where the model looked), the per-class scores and the worst mistakes; then try two "
    "training strategies: finding a learning rate, and distilling a trained model into a fresh student."
)

# Learning-rate choices for the distillation student.
# Steps of the learning-rate sweep: one batch each, from 10⁻⁶ to 1.
SWEEP_STEPS = 60
LR_CHOICES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
COLOURS = {VARIANTS[0]: "#d62728", VARIANTS[1]: "#1f77b4"}
# Images a gallery shows at most: each needs a Grad-CAM, and two dozen take seconds on 2 CPU cores.
GALLERY_CAP = 24


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


def clickable_heatmap(z, counts, classes, title: str, fmt: str):
    """``heatmap`` whose cells can be clicked.

    Plotly reports no selection for a heatmap's cells (streamlit#8760), so an invisible square marker
    sits on every cell and carries the click, with the cell's (true, predicted) indices.
    """
    fig = heatmap(z, classes, title, fmt)
    fig.data[0].hoverinfo = "skip"  # the marker on the cell answers the hover instead
    cells = [(t, p) for t in range(len(classes)) for p in range(len(classes))]
    fig.add_trace(go.Scatter(
        x=[classes[p] for _, p in cells], y=[classes[t] for t, _ in cells], mode="markers", showlegend=False,
        # plain lists: numpy arrays travel as binary blobs, and the click should hand back plain numbers
        customdata=[[t, p, int(counts[t][p])] for t, p in cells],
        marker=dict(symbol="square", size=30, color="rgba(0,0,0,0)"),
        selected=dict(marker=dict(color="rgba(255,255,255,0.35)")), unselected=dict(marker=dict(opacity=1)),
        hovertemplate="true %{y} · predicted %{x}: %{customdata[2]} images, click to see them<extra></extra>",
    ))
    return fig


def cell_keys(run_id: str) -> tuple[str, str]:
    """The cell pickers' keys: one pair per run, so another run's classes never linger."""
    return f"cell-true-{run_id}", f"cell-predicted-{run_id}"


def open_clicked_cell(chart_key: str, run_id: str) -> None:
    """A click on a matrix cell sets the two cell pickers, which then show its images."""
    points = ss[chart_key].selection.points
    if not points:  # a click that cleared the selection leaves the pickers as they are
        return
    data = points[0].get("customdata")
    if not data or len(data) < 2:
        return
    ss[cell_keys(run_id)[0]], ss[cell_keys(run_id)[1]] = int(data[0]), int(data[1])


def gradcams(run_id: str, indices: list[int], targets: list[int]):
    """Grad-CAM overlays (of the predicted class) for validation images, kept for this session."""
    cache = ss.setdefault("_gallery_gradcams", {})
    pair = run_models(run_id)
    _, val_ds = current_split()
    keys = [(run_id, *split_key(), i, t) for i, t in zip(indices, targets, strict=True)]
    todo = [n for n, key in enumerate(keys) if key not in cache]
    if todo:
        images = [val_ds[indices[n]][0] for n in todo]
        x = torch.stack([pair.preprocess(image) for image in images])
        with st.spinner(f"Grad-CAM for {len(todo)} images…"):
            maps = saliency.gradcam_maps(pair.after, x, [targets[n] for n in todo])
        for n, image, cam in zip(todo, images, maps, strict=True):
            cache[keys[n]] = overlay(models.display_crop(image, x.shape[-1]), cam, 0.45)
        while len(cache) > 4 * GALLERY_CAP:
            cache.pop(next(iter(cache)))
    return [cache[key] for key in keys]


def gallery(run_id: str, ev, examples, what: str) -> None:
    """The first GALLERY_CAP of ``examples``, each over its Grad-CAM, with true/predicted class, confidence and loss."""
    shown = examples[:GALLERY_CAP]
    st.caption(f"Showing {len(shown)} of {len(examples)} {what}, highest loss first. The heat map is Grad-CAM of "
               "the predicted class: where the model looked when it gave its answer.")
    try:
        pictures = gradcams(run_id, [e.index for e in shown], [ev.classes.index(e.predicted) for e in shown])
    except UserInputError as exc:
        st.warning(f"No Grad-CAM for this model: {plain(exc)}")
        _, val_ds = current_split()
        pictures = [val_ds[e.index][0] for e in shown]
    for row in range(0, len(shown), 4):  # a row of columns at a time: read in order, worst first
        for column, e, picture in zip(st.columns(4), shown[row:row + 4], pictures[row:row + 4], strict=False):
            column.image(picture, width="stretch", caption=f"{plain(e.true)} → {plain(e.predicted)} · "
                                                           f"{e.confidence:.0%} sure · loss {e.loss:.2f}")


def cell_ui(run_id: str, ev) -> None:
    """The images behind one cell, picked by a click on a matrix or by the two pickers (keyboard too)."""
    st.markdown("**The images behind a cell**")
    options = list(range(len(ev.classes)))
    true_key, predicted_key = cell_keys(run_id)
    c1, c2 = st.columns(2)
    true = c1.selectbox("True class", options, index=None, format_func=lambda i: ev.classes[i], key=true_key,
                        placeholder="Click a cell, or choose")
    predicted = c2.selectbox("Predicted class", options, index=None, format_func=lambda i: ev.classes[i],
                             key=predicted_key, placeholder="Click a cell, or choose")
    if true is None or predicted is None:
        st.caption("Click a cell of either matrix, or choose its true and predicted class here, to see its images.")
        return
    examples = cell_examples(ev, true, predicted)
    name, said = plain(ev.classes[true]), plain(ev.classes[predicted])
    if not examples:
        st.info(f"No validation image of {name} was predicted as {said}.")
        return
    what = (f"{name} images classified correctly" if true == predicted
            else f"{name} images taken for {said}")
    gallery(run_id, ev, examples, what)


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
    if is_multitask(record):
        multitask_evaluation_ui(run_id, record)
        return
    try:
        ev = evaluation(run_id)
    except UserInputError as exc:
        st.error(plain(exc))
        return
    c1, c2, c3 = st.columns(3)
    c1.metric("Validation accuracy", f"{ev.accuracy:.1%}")
    c2.metric("Validation images", len(ev.labels))
    c3.metric("Misclassified", int((ev.preds != ev.labels).sum()))
    left, right = st.columns(2)
    counts = ev.confusion()
    for column, key, z, title, fmt in (
            (left, "confusion-counts", counts, "Confusion matrix (counts)", "%{z}"),
            (right, "confusion-normalised", ev.confusion(normalize=True), "Normalised per true class (rows sum to 1)",
             "%{z:.0%}")):
        column.plotly_chart(clickable_heatmap(z, counts, ev.classes, title, fmt), width="stretch", key=key,
                            on_select=partial(open_clicked_cell, key, run_id), selection_mode="points")
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
    cell_ui(run_id, ev)
    if st.toggle("Show the model's worst mistakes", key=f"worst-{run_id}",
                 help="Every misclassified validation image, the highest loss (the surest wrong answer) first."):
        mistakes = worst_mistakes(ev)
        if not mistakes:
            st.success("Every validation image is classified correctly.")
        else:
            gallery(run_id, ev, mistakes, "mistakes")


def multitask_confusion(run_id: str) -> dict:
    """Each task's confusion matrix on the multi-task validation split, kept for this session."""
    cache = ss.setdefault("_evaluations", {})
    _, val_ds = multitask_split()
    key = (run_id, val_ds.fingerprint)
    if key not in cache:
        model = run_models(run_id).after
        with st.spinner("Predicting every task for every validation image…"):
            cache[key] = confusion_by_task(model, val_ds, device=pick_device())
        while len(cache) > 4:
            cache.pop(next(iter(cache)))
    return cache[key]


def multitask_evaluation_ui(run_id: str, record) -> None:
    """A run with a head per task: each task's accuracy, and the confusion matrix of the task picked."""
    tasks = record.config["tasks"]
    if not same_tasks(record):
        st.warning(f"This run has a head per task ({plain(', '.join(tasks))}); the current dataset does not "
                   "carry those tasks. Load the run's dataset (its ZIP with labels.csv, or the multi-task demo) "
                   "on the Data page to evaluate it.")
        return
    try:
        confusion = multitask_confusion(run_id)
    except UserInputError as exc:
        st.error(plain(exc))
        return
    columns = st.columns(len(tasks))
    for column, (task, matrix) in zip(columns, confusion.items(), strict=False):
        total = int(matrix.sum())
        column.metric(f"Validation accuracy: {plain(task)}", f"{np.trace(matrix) / total:.1%}" if total else "—",
                      help=f"Over the {total} validation images labelled for this task.")
    task = st.selectbox("Task", list(tasks), key="evaluate-task",
                        help="Each head has its own classes, so each task has its own confusion matrix.")
    matrix, classes = confusion[task], tasks[task]
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    left, right = st.columns(2)
    left.plotly_chart(heatmap(matrix, classes, f"Confusion matrix of {task} (counts)", "%{z}"),
                      width="stretch", key="task-confusion-counts")
    right.plotly_chart(heatmap(normalised, classes, f"{task}, normalised per true class", "%{z:.0%}"),
                       width="stretch", key="task-confusion-normalised")
    _, val_ds = multitask_split()
    st.caption(f"Only the {int(matrix.sum())} of {len(val_ds)} validation images labelled for this task count; "
               "an empty cell in labels.csv is no class at all. Rows are the true classes, columns what this "
               "task's head said.")


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
                         owner=ss.owner, dataset=ss.dataset_label)
    if previous is not None:  # only the newest sweep is shown: the earlier one stops, or its folder goes
        if sweep_running(previous):
            stop_run(previous["run_id"])
        else:
            run_store().delete(previous["run_id"])
    store_result("lr_finder", inputs, {"run_id": job.run_id, "about": f"{mc.backbone} · {mc.strategy} · {cfg.optimizer}",
                                       "strategy": mc.strategy})


def sweep_progress() -> bool:
    """The running sweep's progress and a Stop button (``follow``'s draw): True while it runs."""
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
    if st.button(f"Use lr = {choice:.2g} on the Train page", key="lr-apply",
                 help="Sets the Train page's learning rate; every other setting stays."):
        ss.train_config = replace(ss.train_config, lr=choice)
        ss.lr_applied = choice
    if ss.get("lr_applied") is not None and math.isclose(ss.train_config.lr, ss.lr_applied):
        st.success(f"Applied: the Train page's learning rate is now {ss.lr_applied:.2g} for {mc.strategy} "
                   f"(the other settings are unchanged). Train there to use it.")


# --- knowledge distillation ----------------------------------------------------------------


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
    if is_multitask(record):
        st.info("This run has a head per task; distillation here teaches a student one task. Pick a run "
                "trained on one task as the teacher.")
        return
    if list(record.classes) != list(train_ds.classes):
        st.warning(f"The teacher was trained on the classes {plain(', '.join(record.classes))}; the current "
                   f"dataset has {plain(', '.join(train_ds.classes))}. Load the teacher's dataset on the Data page "
                   "to distil it.")
        return
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
    run_id, stale = stored_result("distill_job", inputs, running=lambda r: not distillation_done(r))
    running = run_id is not None and not distillation_done(run_id)
    if st.button("Distil: train the student with and without the teacher", type="primary",
                 icon=":material/school:", disabled=running):
        cfg = ss.train_config
        config = TrainConfig(epochs=int(epochs), batch_size=cfg.batch_size, lr=float(lr), seed=cfg.seed,
                             optimizer=cfg.optimizer, schedule=cfg.schedule, augment=cfg.augment, image_size=int(size))
        try:
            job = start_distillation(run_store(), teacher_id, train_ds, val_ds, config, temperature, alpha,
                                     backbone=student, pretrained=pretrained, owner=ss.owner,
                                     dataset=ss.dataset_label)
            run_id = job.run_id
            store_result("distill_job", inputs, run_id)
            stale = False
        except UserInputError as exc:
            st.error(plain(exc))
            return
        running = True
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


tab_eval, tab_lr, tab_distil = st.tabs(["Validation results", "Learning-rate finder", "Knowledge distillation"])
with tab_eval:
    evaluation_ui()
with tab_lr:
    lr_finder_ui()
with tab_distil:
    distillation_ui()
