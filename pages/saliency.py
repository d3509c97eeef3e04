"""Saliency: where the model looks, before and after fine-tuning, and a check that it is real."""

import copy

import plotly.graph_objects as go
import streamlit as st

from core import models
from core.analysis import saliency
from core.analysis.overlay import overlay
from core.analysis.sanity import sanity_check
from core.cache import FeatureCache, tensor_key
from core.errors import UserInputError
from pages.ui.charts import category_axes, convergence_note, sanity_figure
from pages.ui.links import hidden, locked, page_choice, remember_choice
from pages.ui.models import image_picker, model_picker, run_models
from pages.ui.multitask import is_multitask, task_pair
from pages.ui.session import bootstrap
from pages.ui.tasks import start_task, stored_result, task_result
from pages.ui.text import chart_text, plain

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state


def chip(method: str) -> str:
    """A method's name without its gloss: a multiselect chip cuts anything longer."""
    return saliency.METHOD_LABELS[method][0].split(" (")[0]

st.title("Saliency")
st.write(
    "Which pixels drive the score of a class? Compare the pretrained ImageNet model with the fine-tuned one "
    "on the same image, and check that a method really depends on what the model learned."
)


def imagenet_model(name: str):
    """The pretrained ImageNet backbone, from this session's model cache (shared with the other pages)."""
    with st.spinner("Loading the pretrained backbone…"):
        return run_models(None, name).after


run_id, record = model_picker("Run")
try:
    pair = run_models(run_id)
    backbone_name = record.backbone if record else models.DEFAULT_BACKBONE
    pretrained_side = imagenet_model(backbone_name) if (record is None or record.pretrained) else pair.before
except UserInputError as exc:
    st.error(plain(exc))
    st.stop()
head_task = None
if is_multitask(record):  # one head per task: explain one head at a time
    head_task = st.selectbox("Head to explain", list(record.config["tasks"]), key="sal-task",
                             help="The tasks share the backbone but each has its own head: where does each look?")
    pair = task_pair(pair, head_task)
categories = models.imagenet_categories()

left, right = st.columns([1, 2])
with left:
    image, caption = image_picker("sal")
if image is None:
    st.stop()
x = pair.preprocess(image)
with right:
    methods = st.multiselect("Methods", list(saliency.METHODS),
                             default=[m for m in page_choice("sal_methods") if m in saliency.METHODS],
                             format_func=chip, disabled=locked("sal_methods"))
    remember_choice("sal_methods", methods)
    for m in methods:
        st.caption(f"**{saliency.METHOD_LABELS[m][0]}** — {saliency.METHOD_LABELS[m][1]}")
    c1, c2 = st.columns(2)
    layer_choices = saliency.gradcam_layers(pair.after, x)
    gradcam_layer = c1.selectbox("Grad-CAM layer", layer_choices, index=len(layer_choices) - 1,
                                 disabled="gradcam" not in methods)
    opacity = c2.slider("Overlay opacity", 0.0, 1.0, 0.55)

cache = ss.setdefault("_saliency_cache", FeatureCache(max_items=64))
image_key = tensor_key(x)
# Integrated Gradients' black baseline lives in the model's normalised space.
reference = models.load(backbone_name, pretrained=False)
mean, std = reference.mean, reference.std


def explain(which: str, model, target: int, method: str):
    options = {"mean": mean, "std": std} if method == "integrated_gradients" else {}
    layer = gradcam_layer if method == "gradcam" else None
    return cache.get_or_compute((run_id, head_task, which, method, target, layer, image_key),
                                lambda: saliency.explain(model, x, target, method, layer=layer, **options))


def top5_chart(top, title):
    fig = go.Figure(go.Bar(x=[p for _, p in top][::-1], y=[chart_text(label) for label, _ in top][::-1], orientation="h",
                           text=[f"{p:.0%}" for _, p in top][::-1], textposition="auto"))
    fig.update_layout(title=title, height=230, margin=dict(l=0, r=0, t=40, b=0), xaxis_range=[0, 1])
    return category_axes(fig, "yaxis")


sides = [("pretrained (ImageNet)", pretrained_side, categories if (record is None or record.pretrained) else None)]
if pair.compared:
    sides.append(("fine-tuned", pair.after, pair.classes))
rgb = models.display_crop(image, x.shape[-1])

columns = st.columns(len(sides))
for col, (name, model, classes) in zip(columns, sides, strict=True):
    with col:
        st.subheader(name)
        top = saliency.top_classes(model, x, k=5, categories=classes)
        st.plotly_chart(top5_chart(top, "Top-5 classes"), width="stretch", key=f"top5-{name}")
        options = classes or [f"class {i}" for i in range(len(top))]
        predicted = options.index(top[0][0]) if top[0][0] in options else 0
        target = st.selectbox("Explain the class", range(len(options)), index=predicted,
                              format_func=lambda i, o=options: o[i], key=f"target-{name}-{run_id}-{image_key}")
        for method in methods:
            try:
                result = explain(name, model, target, method)
            except UserInputError as exc:
                st.error(plain(exc))
                continue
            label = saliency.METHOD_LABELS[method][0]
            st.image(overlay(rgb, result.map, opacity), width="stretch",
                     caption=f"{label} · {result.seconds:.2f} s")
            if result.delta is not None:
                st.caption(convergence_note(result.delta, result.raw),
                           help="Integrated Gradients' attributions should add up to how much the class score "
                                "rises from a black image to this one. The convergence delta is the part they "
                                "miss. Judge it against the attributions' total: a few per cent is good; a "
                                "large share means the path from black was sampled too coarsely.")


def sanity_task(model, x, methods, layer_groups, gradcam_layer, mean, std):
    """The sanity check as a task body, on a model of its own."""
    def body(task):
        task.report(0.0, "computing the original maps")
        target = saliency.predicted_class(model, x)
        result = sanity_check(
            model, x, target, methods, layers=[g.modules for g in layer_groups], gradcam_layer=gradcam_layer,
            options={"integrated_gradients": {"mean": mean, "std": std}}, stop=task.stop,
            progress=lambda i, n, step: task.report(i / n, f"randomised down to {step}"))
        return None if task.stop.is_set() else (result, [g.name for g in layer_groups][::-1])
    return body


if hidden("sanity_check"):
    st.stop()
with st.expander("Sanity check: does the map depend on what the model learned? (Adebayo et al., 2018)"):
    st.write(
        "Re-initialise the fine-tuned model's layers from the top down, one group at a time, and recompute each "
        "map. A method that explains the model must change as its weights are destroyed; a map that stays the "
        "same is showing the image's edges, not the model."
    )
    sanity_methods = st.multiselect("Methods to check", list(saliency.METHODS),
                                    default=[m for m in ("gradient", "gradcam", "smoothgrad") if m in saliency.METHODS],
                                    format_func=chip, key="sanity-methods")
    sanity_inputs = (run_id, head_task, image_key, tuple(sanity_methods), gradcam_layer)
    task, stale = stored_result("sanity", sanity_inputs, running=lambda t: not t.done)
    running = task is not None and not task.done and not stale
    if st.button("Run the sanity check", disabled=not sanity_methods or running):
        # the check's own copy, made here: a copy made in the task's thread could catch the hooks
        # that this page's next rerun puts on the session's model
        model = copy.deepcopy(pair.after).eval()
        start_task("sanity", sanity_inputs,
                   sanity_task(model, x, sanity_methods, pair.layer_groups, gradcam_layer, mean, std), "sanity check")
    found = task_result("sanity", sanity_inputs, "sanity check")
    if found:
        result, names = found
        st.plotly_chart(sanity_figure(result.similarity, names), width="stretch", key="sanity-chart")
        st.caption("Re-initialising BatchNorm resets its running statistics too, so maps of a deeply randomised "
                   "network can go blank (similarity 0).")
