"""Feature maps: what fine-tuning changed inside the network, and where."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from core import data
from core.analysis import features
from core.cache import FeatureCache, tensor_key
from core.errors import UserInputError
from core.runs.kept import kept_epoch_number
from pages.ui.charts import decade_axis, diverging_scale, fit_title
from pages.ui.models import image_picker, model_picker, run_models
from pages.ui.multitask import is_multitask, task_pair
from pages.ui.runs import first_trained_epoch
from pages.ui.session import bootstrap
from pages.ui.text import plain
from pages.ui.workspace import workspace

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state
st.title("Feature maps")
st.write(
    "The same image through the model before fine-tuning (as the run started) and after it. "
    "Frozen layers compute exactly what they computed before; trained layers have adapted."
)

run_id, record = model_picker("Run")
try:
    pair = run_models(run_id)
except UserInputError as exc:
    st.error(plain(exc))
    st.stop()
head_task = None
if is_multitask(record):  # one head per task on a shared body: look through one head at a time
    head_task = st.selectbox("Head", list(record.config["tasks"]), key="fm-task",
                             help="The body is shared; the head group shows this task's own head.")
    pair = task_pair(pair, head_task)
if not pair.compared:
    st.info("No finished run picked: showing the pretrained backbone alone. Train a run to compare before and after.")

cache = ss.setdefault("_feature_cache", FeatureCache(max_items=48))
left, right = st.columns([1, 2])
with left:
    image, caption = image_picker("fm")
    if image is not None:
        st.image(image, caption=plain(caption), width=160)
if image is None:
    st.stop()
x = pair.preprocess(image)
image_key = tensor_key(x)

layers = features.layer_names(pair.after)
by_group = {g.name: [name for name in layers if any(name == m or name.startswith(m + ".") for m in g.modules)]
            for g in pair.layer_groups}
by_group = {g: names for g, names in by_group.items() if names}
with right:
    c1, c2 = st.columns(2)
    groups = list(by_group)
    joined = first_trained_epoch(record) if record is not None else {}

    def group_label(g: str) -> str:
        if g in pair.frozen:  # unchanged in the kept weights: frozen, or unfrozen only after the kept epoch
            return f"{g} (unfroze at epoch {joined[g]}, after the kept one)" if g in joined else f"{g} (frozen)"
        if joined.get(g, 1) > 1:
            return f"{g} (frozen until epoch {joined[g]})"
        return g

    group = c1.selectbox("Layer group", groups, index=len(groups) // 2, format_func=group_label)
    layer = c2.selectbox("Layer", by_group[group], index=len(by_group[group]) - 1)
    c3, c4 = st.columns(2)
    order = c3.radio("Channels ordered by", ["change", "strength"], horizontal=True,
                     help="change: how much fine-tuning changed each channel's map; strength: how active it is.")
    count = c4.select_slider("Channels shown", [4, 9, 16, 25, 36], value=16)


def identical_note(group: str) -> str:
    """Why a layer's maps did not change: frozen throughout, or trained only after the kept epoch."""
    if group in pair.frozen and group in joined and record is not None:
        return (f"Identical maps: this layer started training at epoch {joined[group]}, but the run keeps the "
                f"weights of epoch {kept_epoch_number(record)}, from before it did.")
    if group in pair.frozen:
        return "Identical maps: this layer was frozen, so fine-tuning did not change what it computes."
    return "Identical maps: fine-tuning did not change what this layer computes for this image."


def maps_for(which: str, model) -> torch.Tensor:
    return cache.get_or_compute((run_id, head_task, which, layer, image_key), lambda: features.feature_maps(model, x, layer))


before = maps_for("before", pair.before)
after = maps_for("after", pair.after) if pair.compared else before
channels = features.channel_order(before, after, by=order)[:count]
columns = int(np.ceil(np.sqrt(len(channels))))
vb, ids = features.tile_channels(before, channels, columns)
va, _ = features.tile_channels(after, channels, columns)
lo, hi = float(np.nanmin([np.nanmin(vb), np.nanmin(va)])), float(np.nanmax([np.nanmax(vb), np.nanmax(va)]))
diff = va - vb
bound = float(np.nanmax(np.abs(diff))) or 1e-6


def heatmap(values, title, zmin, zmax, scale):
    # The colour bar lies under the map: beside it, a full-height bar took a third of a narrow
    # column (a projector at 1024 px with the sidebar open) and left the tiles tiny.
    fig = go.Figure(go.Heatmap(
        z=values, customdata=ids, zmin=zmin, zmax=zmax, colorscale=scale,
        hovertemplate="channel %{customdata:.0f}<br>value %{z:.3f}<extra></extra>",
        colorbar=dict(orientation="h", thickness=12, len=1, x=0.5, xanchor="center", y=-0.03, yanchor="top",
                      tickfont=dict(size=11)),
    ))
    fig.update_yaxes(autorange="reversed", showticklabels=False, scaleanchor="x", constrain="domain")
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_layout(title=title, height=380, margin=dict(l=0, r=0, t=40, b=50))
    return fit_title(fig, 20)


st.subheader(f"{layer} — {before.shape[0]} channels of {before.shape[1]}×{before.shape[2]}")
c1, c2, c3 = st.columns(3)
c1.plotly_chart(heatmap(vb, "before fine-tuning", lo, hi, "Viridis"), width="stretch", key="fm-before")
if pair.compared:
    c2.plotly_chart(heatmap(va, "after fine-tuning", lo, hi, "Viridis"), width="stretch", key="fm-after")
    c3.plotly_chart(heatmap(diff, "after − before", -bound, bound, diverging_scale()), width="stretch", key="fm-diff")
    if float(np.nanmax(np.abs(diff))) == 0.0:
        st.success(identical_note(group))
st.caption("Before and after share one colour scale; hover a pixel for its channel and value.")

if pair.compared:
    st.subheader("Along the depth of the network")
    ds = workspace().dataset
    batch = [ds[i][0] for i in data.spread(len(ds), 32)]
    images = torch.stack([pair.preprocess(img) for img in batch])
    profile = cache.get_or_compute(
        (run_id, head_task, "profile", tensor_key(images)),
        lambda: features.depth_profile(pair.before, pair.after, pair.layer_groups, images),
    )
    names = [p["group"] for p in profile]
    colours = ["#9aa5b1" if n in pair.frozen else "#d62728" for n in names]
    d1, d2 = st.columns(2)
    changes = [p["weight_change"] for p in profile]
    fig = go.Figure(go.Bar(x=names, y=changes, marker_color=colours, hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title="Relative weight change ‖W_after − W_before‖ / ‖W_before‖", height=330,
                      margin=dict(l=0, r=0, t=40, b=0))
    decade_axis(fig, "yaxis", changes)
    fit_title(fig, 30)
    d1.plotly_chart(fig, width="stretch", key="depth-change")
    fig = go.Figure(go.Bar(x=names, y=[p["cka"] for p in profile], marker_color=colours,
                           hovertemplate="%{x}: CKA %{y:.3f}<extra></extra>"))
    fig.update_layout(title="Representation similarity before vs after (linear CKA)", height=330,
                      margin=dict(l=0, r=0, t=40, b=0), yaxis_range=[0, 1.05])
    fit_title(fig, 30)
    d2.plotly_chart(fig, width="stretch", key="depth-cka")
    st.caption(f"Grey: groups the kept weights never trained (frozen, or unfrozen only after the kept epoch: "
               f"change 0, CKA 1). Red: trained groups. CKA over {len(batch)} images of the "
               "current dataset; the head is new, so it always changes most.")

st.subheader("Images that excite a channel most")
if st.toggle("Find them in the current dataset", help="One pass over up to 64 images per model and layer."):
    channel = st.selectbox("Channel", channels, format_func=lambda c: f"channel {c}")
    ds = workspace().dataset
    pool = [ds[i][0] for i in data.spread(len(ds), 64)]
    pool_tensor = torch.stack([pair.preprocess(img) for img in pool])
    pool_key = tensor_key(pool_tensor)
    sides = [("before", pair.before)] + ([("after", pair.after)] if pair.compared else [])
    for which, model in sides:
        # every channel's mean activation per image, once per model and layer: picking another
        # channel then costs nothing
        means = cache.get_or_compute((run_id, head_task, "channel-means", which, layer, pool_key),
                                     lambda m=model: features.channel_means(m, pool_tensor, layer))
        st.markdown(f"**{which}**")
        cols = st.columns(6)
        for col, (i, value) in zip(cols, features.top_activating(model, pool_tensor, layer, channel, 6, means=means), strict=False):
            col.image(pool[i], caption=f"{value:.2f}", width="stretch")
