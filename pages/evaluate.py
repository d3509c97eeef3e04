"""Evaluate: how a trained run does on the validation split; the learning-rate finder (pages/ui/lr_finder.py);
distillation (pages/ui/distillation.py)."""

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
from pages.ui.charts import fading_scale, fit_title
from pages.ui.distillation import distillation_ui
from pages.ui.lr_finder import lr_finder_ui
from pages.ui.models import model_picker, run_models
from pages.ui.multitask import is_multitask, multitask_split, same_tasks
from pages.ui.runs import finished_runs
from pages.ui.session import bootstrap, current_split, split_key
from pages.ui.text import chart_text, plain

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state
st.title("Evaluate")
st.write(
    "Accuracy alone hides which classes a model confuses. Look at the confusion matrix (click a cell to see "
    "its images and where the model looked), the per-class scores and the worst mistakes; then try two "
    "training strategies: finding a learning rate, and distilling a trained model into a fresh student."
)

# Images a gallery shows at most: each needs a Grad-CAM, and two dozen take seconds on 2 CPU cores.
GALLERY_CAP = 24


def dark_theme() -> bool:
    try:
        return st.context.theme.type == "dark"
    except Exception:  # no browser behind this session (AppTest): the light theme
        return False


def heatmap(z, classes, title: str, fmt: str):
    classes = [chart_text(c) for c in classes]
    # Plotly picks each number's colour for its cell's colour, and takes an empty (transparent) cell
    # for a white one: on a dark page its "0" came out dark on dark. There, every cell is dark (the
    # page's own background or blue), so white reads on all of them.
    fig = go.Figure(go.Heatmap(
        z=z, x=classes, y=classes, colorscale=fading_scale((8, 81, 156)), zmin=0, texttemplate=fmt, showscale=False,
        hovertemplate="true %{y} · predicted %{x}: %{z}<extra></extra>",
        textfont=dict(color="white") if dark_theme() else None,
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


tab_eval, tab_lr, tab_distil = st.tabs(["Validation results", "Learning-rate finder", "Knowledge distillation"])
with tab_eval:
    evaluation_ui()
with tab_lr:
    lr_finder_ui()
with tab_distil:
    distillation_ui()
