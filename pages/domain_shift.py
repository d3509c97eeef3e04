"""Domain shift: how far apart two image sets are inside the network, where, and adaptation that closes it."""

import math
import threading

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core import data, models
from core.analysis import domain
from core.errors import UserInputError
from core.methods import adaptation
from core.runs.jobs import get_job
from core.runs.kinds.dan import comparison_of, start_comparison
from core.runs.tasks import Snapshot, Task
from pages.ui.charts import fit_title
from pages.ui.links import hidden, locked, page_choice, remember_choice
from pages.ui.models import model_picker, session_models
from pages.ui.runs import run_status, run_store, waiting_text
from pages.ui.session import DEMO_LABEL, bootstrap, demo
from pages.ui.tasks import follow, store_result, stored_result
from pages.ui.text import plain
from pages.ui.workspace import workspace

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state
st.title("Domain shift")
st.write(
    "Two image sets can look different to a network even when they hold the same classes. The MMD "
    "measures how far apart their features are, a permutation test says whether that distance is "
    "more than chance, and adaptation (DAN) trains the network to close it."
)

SETS = {"source": f"{DEMO_LABEL} — source look", "target": f"{DEMO_LABEL} — target look", "current": None,
        "second": None}
CONTROL = "Two halves of one dataset (control)"
SIZES = [64, 96, 128, 160, 224]


@st.cache_data(show_spinner=False)
def backbone_facts(name: str) -> dict:
    """What the page needs to know about an architecture, without its weights (plain data)."""
    bb = models.load(name, pretrained=False)
    return {"groups": [(g.name, list(g.modules)) for g in bb.layer_groups], "head_module": bb.head_module,
            "mean": bb.mean, "std": bb.std}


def kept(name: str, default):
    """A setting of this page as last chosen: Streamlit forgets a widget's state while another page
    is open, and a finished comparison is only shown for the settings that made it."""
    return ss.setdefault("_domain_settings", {}).get(name, default)


def keep(name: str, value):
    ss.setdefault("_domain_settings", {})[name] = value
    return value


def own_data() -> bool:
    """Whether the person works on images of their own (not a demo set): the page then opens on them."""
    return not workspace().dataset_label.startswith(DEMO_LABEL)


def set_label(choice: str) -> str:
    if choice == "second":
        second = ss.get("_domain_second")
        return f"Your second dataset ({second['label']})" if second else "A second dataset you bring (ZIP)"
    return SETS[choice] or f"Your current dataset ({workspace().dataset_label})"


def dataset(choice: str, per_class: int):
    if choice == "second":
        second = ss.get("_domain_second")
        return second["dataset"] if second else None
    return workspace().dataset if choice == "current" else demo(choice, per_class)


def second_upload_ui() -> None:
    """A second dataset, only for this page: the person's own dataset stays theirs."""
    upload = st.file_uploader("Your second dataset: a ZIP with one folder per class", type=["zip"],
                              key="domain-second-zip")
    if upload is None or (ss.get("_domain_second") or {}).get("name") == upload.name:
        return
    try:
        ds, _ = data.load_zip(upload.getvalue())
        if not isinstance(ds, data.ImageDataset):
            ds = ds.as_single_task(ds.task_names[0])
    except UserInputError as exc:
        st.error(plain(exc))
        return
    ss["_domain_second"] = {"dataset": ds, "label": upload.name, "name": upload.name}


def sets_ui():
    """(set A, set B, short names, whether this is the two-halves control); set B is None until the
    person brings the second dataset they picked."""
    modes, sets = ["Two datasets", CONTROL], list(SETS)
    # your own images first: their two halves as the control, or against a second set you bring
    mine = own_data()
    mode = keep("mode", st.radio("Compare", modes, index=modes.index(kept("mode", modes[mine])), horizontal=True,
                                 key="domain-mode", help="The control splits one dataset into two stratified "
                                                         "halves: the test should find nothing."))
    c1, c2, c3 = st.columns([2, 2, 1])
    labels = {choice: set_label(choice) for choice in sets}  # read now: a format_func may run outside the page
    if mode == CONTROL:
        choice = keep("control", c1.selectbox("Dataset", sets[:3], index=sets.index(kept("control", sets[2 * mine])),
                                              format_func=labels.get, key="domain-control"))
        per_class = demo_size(c3, choice)
        a, b = domain.split_halves(dataset(choice, per_class), seed=0)
        return a, b, ("first half", "second half"), True
    choice_a = keep("a", c1.selectbox("Set A (labelled source)", sets, index=sets.index(kept("a", sets[2 * mine])),
                                      format_func=labels.get, key="domain-a"))
    choice_b = keep("b", c2.selectbox("Set B (target)", sets, index=sets.index(kept("b", sets[1 + 2 * mine])),
                                      format_func=labels.get, key="domain-b"))
    per_class = demo_size(c3, choice_a, choice_b)
    if "second" in (choice_a, choice_b):
        second_upload_ui()
    names = {"source": "source look", "target": "target look", "current": "your dataset", "second": "your second set"}
    return dataset(choice_a, per_class), dataset(choice_b, per_class), (names[choice_a], names[choice_b]), False


def demo_size(column, *choices) -> int:
    """The demo sets' images per class, asked only when a demo set is compared."""
    if not {"source", "target"} & set(choices):
        return kept("per_class", 20)
    return keep("per_class", column.slider("Demo images per class", 10, 40, kept("per_class", 20), step=5,
                                           key="domain-per-class"))


def model_ui():
    """(model key, backbone name, loader, default input size)."""
    run_id, record = model_picker("Model")
    if run_id:
        store = run_store()
        return f"run:{run_id}", record.backbone, lambda: store.load_model(run_id), int(
            record.config.get("image_size", 128))
    name = models.DEFAULT_BACKBONE
    return f"pretrained:{name}", name, lambda: models.load(name).model, 96


def layer_label(layer: str, groups) -> str:
    if layer == domain.HEAD_INPUT:
        return "head input (pooled features)"
    return next(f"{g} · {modules[-1]}" for g, modules in groups if modules[-1] == layer)


# --------------------------------------------------------------------------- the analysis


def start_analysis(key, model_key, load, ds_a, ds_b, layer, groups, facts, size, bandwidth, method):
    # the session's one model cache, read here (the task's thread has no session); the "domain" key
    # keeps the hooks an analysis puts on its model off the models other pages show, and the lock
    # runs this session's analyses one at a time
    cache, lock = session_models(), ss.setdefault("_domain_lock", threading.Lock())
    layer_groups = [models.LayerGroup(g, modules) for g, modules in groups]

    def work(task: Task):
        with lock:
            task.report(0.0, "Loading the model…")
            model = cache.get(("domain", model_key), load)
            return domain.analyse_shift(
                model, ds_a, ds_b, layer, layer_groups, size, model_key=model_key, bandwidth=bandwidth,
                method=method, mean=facts["mean"], std=facts["std"], head_module=facts["head_module"],
                progress=task.report)

    old = ss.get("_domain_analysis")
    if old is not None and not old["task"].done:
        old["task"].cancel()
    ss["_domain_analysis"] = {"key": key, "task": Task(work, name="domain-analysis").start()}


def analysis_progress() -> bool:
    """The running analysis's progress (``follow``'s draw): True while it runs."""
    current = ss.get("_domain_analysis")
    if current is None:
        return False
    state = current["task"].snapshot()
    if state.done:
        st.progress(1.0, text=f"Analysis {state.status}, drawing the result…")
        return False
    st.progress(state.progress, text=f"{state.phase or 'Starting…'} ({state.seconds:.0f} s)")
    return True


def null_histogram(result) -> go.Figure:
    fig = go.Figure(go.Histogram(x=result.null, nbinsx=40, marker_color="#9aa5b1", name="permuted",
                                 hovertemplate="MMD² %{x:.4f}: %{y} permutations<extra></extra>"))
    fig.add_vline(x=result.mmd2, line=dict(color="#d62728", width=3),
                  annotation_text=f"observed {result.mmd2:.4f}", annotation_position="top left")
    fig.update_layout(title=f"MMD² of {result.n_permutations:,} random relabellings vs the observed one",
                      height=320, margin=dict(l=0, r=0, t=40, b=0), xaxis_title="MMD²",
                      yaxis_title="permutations", showlegend=False)
    fit_title(fig, 34)
    return fig


def profile_chart(profile, layer) -> go.Figure:
    colours = ["#d62728" if row["p_value"] <= 0.01 else "#9aa5b1" for row in profile]
    fig = go.Figure(go.Scatter(
        x=[row["group"] for row in profile], y=[row["mmd2"] for row in profile], mode="lines+markers",
        marker=dict(size=11, color=colours), line=dict(color="#555"),
        customdata=[[row["layer"], row["p_value"], row["width"]] for row in profile],
        hovertemplate="%{x} (%{customdata[0]}, %{customdata[2]} channels)<br>MMD² %{y:.4f}, "
                      "p = %{customdata[1]:.3f}<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="#bbb", dash="dot"))
    fig.update_layout(title="MMD² along the depth of the network (input → output)", height=340,
                      margin=dict(l=0, r=0, t=40, b=0), yaxis_title="MMD²")
    return fit_title(fig, 34)  # half a 1024 px projector's page: plotly would cut a one-line title


def embedding_chart(points, n_a, names, method) -> go.Figure:
    fig = go.Figure()
    for label, rows, colour in ((f"A: {names[0]}", np.arange(n_a), "#1f77b4"),
                                (f"B: {names[1]}", np.arange(n_a, len(points)), "#ff7f0e")):
        fig.add_trace(go.Scatter(x=points[rows, 0], y=points[rows, 1], mode="markers", name=label,
                                 customdata=rows, marker=dict(size=8, color=colour, opacity=0.8),
                                 hovertemplate=f"{label}, image %{{customdata}}<extra></extra>"))
    fig.update_layout(title=f"Both sets' features in 2-D ({'PCA' if method == 'pca' else 't-SNE'})", height=420,
                      margin=dict(l=0, r=0, t=40, b=0), legend=dict(orientation="h", y=-0.1),
                      dragmode="lasso")
    return fig


def kernel_chart(analysis) -> go.Figure:
    n_shown_a = int((analysis.kernel_index < analysis.n_a).sum())
    fig = go.Figure(go.Heatmap(z=analysis.kernel, colorscale="Viridis", zmin=0, zmax=1,
                               hovertemplate="k(%{y}, %{x}) = %{z:.3f}<extra></extra>"))
    edge = n_shown_a - 0.5
    for shape in (dict(x0=edge, x1=edge, y0=-0.5, y1=len(analysis.kernel) - 0.5),
                  dict(y0=edge, y1=edge, x0=-0.5, x1=len(analysis.kernel) - 0.5)):
        fig.add_shape(type="line", line=dict(color="white", width=2), **shape)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(title="Kernel matrix: set A's images, then set B's", height=420,
                      margin=dict(l=0, r=0, t=40, b=0))
    return fit_title(fig, 30)  # its colour bar takes part of the width


def selected_points(event) -> list[int]:
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else (
        event.selection.points if event is not None and hasattr(event, "selection") else [])
    picked = []
    for point in points:
        value = point.get("customdata")
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            picked.append(int(value))
    return picked


def show_analysis(analysis: domain.ShiftAnalysis, ds_a, ds_b, names, method, control: bool) -> None:
    test = analysis.test
    differ = test.p_value <= 0.01
    (st.warning if differ else st.success)(analysis.verdict)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("MMD² (unbiased)", f"{test.mmd2:.4f}",
              help="0 when both sets come from one distribution; it can dip below 0 by chance.")
    c2.metric("p-value", "< 0.001" if test.p_value < 0.001 else f"{test.p_value:.3f}",
              help=f"The share of {test.n_permutations:,} random relabellings of the pooled images "
                   "whose MMD² is at least the observed one.")
    c3.metric("Proxy A-distance", f"{analysis.proxy_a:.2f}",
              help="2(1 − 2·error) of a linear classifier that tells the sets apart on held-out "
                   "features: 0 = indistinguishable, 2 = always told apart.")
    c4.metric("Images", f"{analysis.n_a} + {analysis.n_b}")
    sigmas = ", ".join(f"{s:.3g}" for s in test.bandwidths)
    st.caption(f"Gaussian kernel, σ = {sigmas} (median heuristic{'' if len(test.bandwidths) == 1 else ' × 2^-2…2^2'}). "
               + ("As expected for two halves of one set, the test finds no difference."
                  if control and not differ else ""))

    left, right = st.columns(2)
    left.plotly_chart(null_histogram(test), width="stretch", key="domain-null")
    right.plotly_chart(profile_chart(analysis.profile, analysis.layer), width="stretch", key="domain-profile")
    right.caption(f"Each group's features: its last module's output, averaged over space "
                  f"({domain.PROFILE_PERMUTATIONS} permutations per group). Red: p ≤ 0.01.")

    st.subheader("Seeing it")
    left, right = st.columns(2)
    with left:
        event = st.plotly_chart(embedding_chart(analysis.embedding, analysis.n_a, names, method), width="stretch",
                                key=f"domain-embedding-{method}", on_select="rerun",
                                selection_mode=["points", "box", "lasso"])
        picked = selected_points(event)[:12]
        if picked:
            images = [ds_a[i][0] if i < analysis.n_a else ds_b[i - analysis.n_a][0] for i in picked]
            captions = [plain(f"A · {ds_a.names[i]}" if i < analysis.n_a else f"B · {ds_b.names[i - analysis.n_a]}")
                        for i in picked]
            st.image(images, caption=captions, width=88)
        else:
            st.caption("Draw a box or a lasso around some points (or click one) to see their images here.")
    right.plotly_chart(kernel_chart(analysis), width="stretch", key="domain-kernel")
    right.caption("Bright blocks on the diagonal and a dark off-diagonal block mean the sets are far apart.")


# --------------------------------------------------------------------------- adaptation


def adaptation_ui(ds_a, ds_b, backbone: str, control: bool) -> None:
    st.subheader("Closing the gap: adaptation (DAN)")
    st.write(
        "Fine-tune on set A's labels while adding λ × MMD² between A's and B's features at the head's "
        "input to the loss; set B's labels are never used for training. Plain fine-tuning (λ = 0) runs "
        "alongside with everything else the same."
    )
    if control:
        st.info("Pick two different datasets to adapt from one to the other.")
        return
    if len(ds_a.classes) < 2 or len(ds_a) < 4:
        st.info("Set A needs at least two classes and four images to train on.")
        return
    c1, c2, c3 = st.columns(3)
    lam = keep("lam", c1.select_slider("λ (weight of the MMD term)", [0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0],
                                       value=kept("lam", adaptation.DEFAULT_LAMBDA), key="domain-lam"))
    epochs = keep("epochs", c2.number_input("Epochs", 1, 30, kept("epochs", 6), key="domain-epochs"))
    sizes = [64, 96, 128]
    size = keep("dan_size", c3.selectbox("Input size (px)", sizes, index=sizes.index(kept("dan_size", 96)),
                                         key="domain-dan-size"))
    labelled = ds_b.classes == ds_a.classes
    st.caption(
        f"{backbone}, pretrained; the last two stages and the head train. "
        + ("Set B has the same classes, so its accuracy is scored (its labels are not used for training)."
           if labelled else "Set B's classes differ from set A's: only the MMD can be compared.")
    )
    # The comparison belongs to the sets, backbone and settings it trained with.
    inputs = (ds_a.fingerprint, ds_b.fingerprint, backbone, lam, int(epochs), int(size))
    run_id, stale = stored_result("_domain_adapt", inputs, running=lambda r: not comparison_state(r)[0].done)
    if st.button("Train plain and DAN", type="primary", icon=":material/compare_arrows:"):
        config = adaptation.adaptation_config(backbone, epochs=int(epochs), image_size=int(size))
        try:
            train, val = data.split(ds_a, 0.25, 0)
            old = run_id if stale else None
            job = start_comparison(
                train, val, ds_b, config, lam, store=run_store(), backbone=backbone,
                target_eval=ds_b if labelled else None, owner=ss.owner,
                dataset=workspace().dataset_label)
            run_id = job.run_id
            store_result("_domain_adapt", inputs, run_id)
            stale = False
            if old is not None:
                stop_run(old)  # the previous selection's comparison is no longer wanted
        except UserInputError as exc:
            st.error(plain(exc))
    if run_id is None:
        return
    if stale:
        st.warning("Still training for the previous selection (other sets or settings): the figures below "
                   "are not for the choices above.")
    if not comparison_state(run_id)[0].done:
        follow(adaptation_progress, run_id, live=True)
    else:
        show_adaptation(run_id)


def comparison_state(run_id: str):
    """(snapshot, record) of a comparison run, read from its folder (a done snapshot once it has ended)."""
    snap, record = run_status(run_id)
    if snap is None:  # not going on here any more: what its folder says is all there is
        status = record.status if record is not None and record.done else "interrupted"
        message = record.message if record is not None else "This comparison is no longer on the server."
        snap = Snapshot(run_id, status, 1.0, message=message)
    return snap, record


def stop_run(run_id: str) -> None:
    job = get_job(run_id)
    job.cancel() if job is not None else run_store().request_stop(run_id)


def progress_text(state) -> str:
    if state.status == "queued":
        return waiting_text(state.queue_position)
    arm = state.extra.get("arm")
    if arm is None:
        return f"Loading the model and measuring the MMD before training… ({state.seconds:.0f} s)"
    doing = "caching the frozen layers' output" if state.phase == "cache" else f"epoch {state.extra.get('epoch') or 1}"
    return f"{arm}: {doing}… ({state.seconds:.0f} s)"


def adaptation_progress(run_id: str) -> bool:
    """The plain-vs-DAN comparison's progress and curves (``follow``'s draw): True while it runs."""
    state, record = comparison_state(run_id)
    if state.done:
        st.progress(1.0, text=f"Plain vs DAN: {state.status}, drawing the result…")
    else:
        st.progress(state.progress, text=progress_text(state))
        if st.button("Stop", icon=":material/stop:"):
            stop_run(run_id)
    if isinstance(state.epochs, dict):
        epoch_charts(state.epochs, (record.config if record else {}).get("lam", adaptation.DEFAULT_LAMBDA))
    return not state.done


def epoch_charts(epochs: dict, lam: float) -> None:
    """Each arm's target accuracy and MMD per epoch; ``epochs``: {arm: list of dicts of DANEpoch fields}."""
    from plotly.subplots import make_subplots

    if not any(epochs.values()):
        return
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Target accuracy", "MMD² at the head input (eval)"))
    for arm, colour in (("plain", "#9aa5b1"), ("DAN", "#d62728")):
        rows = epochs.get(arm, [])
        x = [e["epoch"] for e in rows]
        name = "plain (λ = 0)" if arm == "plain" else f"DAN (λ = {lam:g})"
        fig.add_trace(go.Scatter(x=x, y=[e["target_acc"] for e in rows], name=name, legendgroup=arm,
                                 mode="lines+markers", line=dict(color=colour)), 1, 1)
        fig.add_trace(go.Scatter(x=x, y=[e["layer_mmd"] for e in rows], name=name, legendgroup=arm, showlegend=False,
                                 mode="lines+markers", line=dict(color=colour)), 1, 2)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.3))
    st.plotly_chart(fig, width="stretch", key="domain-adapt-curves")


def percent(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.0%}"


def show_adaptation(run_id: str) -> None:
    state, record = comparison_state(run_id)
    if state.status == "failed":
        st.error(plain(state.message))
        return
    result = comparison_of(record)
    if result is None:
        st.info(plain(state.message) or "The comparison was stopped.")
        return
    # One arm a row, its three figures across the page: two arms side by side gave each metric a
    # sixth of a projector's page, and cut labels and values short.
    for arm in result.arms:
        with st.container():
            st.markdown(f"**{'Plain fine-tuning (λ = 0)' if arm.name == 'plain' else f'DAN (λ = {arm.lam:g})'}**")
            m1, m2, m3 = st.columns(3)
            other = result.dan if arm is result.plain else result.plain
            m1.metric("Target accuracy", percent(arm.target_acc),
                      delta=None if math.isnan(arm.target_acc) or arm is result.plain else
                      f"{(arm.target_acc - other.target_acc) * 100:+.0f} pts vs plain")
            m2.metric("Source val accuracy", percent(arm.val_acc))
            m3.metric("MMD² at the head input", f"{arm.mmd_after:.4f}",
                      delta=f"{arm.mmd_after - arm.mmd_before:+.4f} vs before", delta_color="inverse")
            st.caption(f"MMD² before training {arm.mmd_before:.4f} → after {arm.mmd_after:.4f}; {arm.seconds:.0f} s.")
    if state.message:
        st.info(plain(state.message))
    epoch_charts({arm.name: [e.__dict__ for e in arm.history.epochs] for arm in result.arms}, result.dan.lam)
    st.caption(f"Both arms started from the same pretrained weights and head (seed 0); "
               f"{result.seconds:.0f} s for both. MMD² in eval mode between all of set A and all of set B.")


# --------------------------------------------------------------------------- the page

ds_a, ds_b, names, control = sets_ui()
model_key, backbone, load, default_size = model_ui()
facts = backbone_facts(backbone)
groups = facts["groups"]
layers = [domain.HEAD_INPUT] + [modules[-1] for _, modules in groups]
# the layer's names are long ("head input (pooled features)"): a row of their own, so an 800 px
# projector shows them whole; the three short choices share the next
layer = st.selectbox("Layer", layers, format_func=lambda name: layer_label(name, groups),
                     help="A group's features are its last module's output averaged over space.")
c2, c3, c4 = st.columns([2, 2, 1])
kernel = c2.radio("Kernel", ["median", "multi"], index=["median", "multi"].index(page_choice("kernel")),
                  horizontal=True, disabled=locked("kernel"),
                  format_func=lambda k: "one (median heuristic)" if k == "median" else "five (DAN multi-kernel)")
method = c3.radio("2-D picture", ["pca", "tsne"], index=["pca", "tsne"].index(page_choice("picture")), horizontal=True,
                  disabled=locked("picture"), format_func=lambda m: "PCA" if m == "pca" else "t-SNE")
remember_choice("kernel", kernel)
remember_choice("picture", method)
default_size = kept(f"size-{model_key}", default_size)
size = keep(f"size-{model_key}", c4.selectbox("Input px", SIZES, index=SIZES.index(default_size) if default_size in SIZES
                                              else 1, key=f"domain-size-{model_key}"))

if ds_a is None or ds_b is None:
    st.info("Bring the second dataset above (a ZIP with one folder per class) to compare yours against it. "
            "It is used on this page only: your dataset on the other pages stays as it is.")
    st.stop()
if len(ds_a) < 4 or len(ds_b) < 4:
    st.error("Each set needs at least 4 images; add images on the Data page.")
    st.stop()

key = (model_key, ds_a.fingerprint, ds_b.fingerprint, layer, size, kernel, method)
current = ss.get("_domain_analysis")
if current is None or current["key"] != key:
    start_analysis(key, model_key, load, ds_a, ds_b, layer, groups, facts, size, kernel, method)
    current = ss["_domain_analysis"]
task = current["task"]
st.subheader(f"A: {names[0]} ({len(ds_a)} images) vs B: {names[1]} ({len(ds_b)} images)")
if not task.done:
    follow(analysis_progress, live=True)
else:
    state = task.snapshot()
    if state.status == "failed":
        st.error(plain(state.message))
    elif task.result is not None:
        show_analysis(task.result, ds_a, ds_b, names, method, control)
        seconds = task.result.seconds
        st.caption(f"Computed in {state.seconds:.1f} s (features {seconds.get('features', 0):.1f} s; "
                   "they are cached, so another layer, kernel or picture of these sets needs no new pass).")

if not hidden("adaptation"):
    st.divider()
    adaptation_ui(ds_a, ds_b, backbone, control)
