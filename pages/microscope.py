"""Microscope: what one channel of the network looks for, before and after fine-tuning."""

import streamlit as st

from core import data, microscope, models
from core.cache import FeatureCache, tensor_key
from core.data.encoded import encode_images
from core.errors import UserInputError
from core.models.heads import classifier
from pages.ui.models import model_picker, run_models, sample_photos, session_model
from pages.ui.session import bootstrap
from pages.ui.tasks import start_task, task_result
from pages.ui.text import plain
from pages.ui.workspace import workspace

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state
st.title("Microscope")
st.write(
    "Pick a layer group and one of its channels: the images that excite it most, and an image optimised "
    "to excite it (feature visualization, as in Olah et al. 2017), for the model before fine-tuning and after."
)

SIZE = 128
POOL = 64
TASK = "microscope-vis"


@st.cache_resource(show_spinner=False)
def visualizations() -> FeatureCache:
    """Feature visualizations of every session, by model, layer, channel, seed and steps: the same
    channel of the same run asked for by a whole class is computed once."""
    return FeatureCache(max_items=256)


run_id, record = model_picker("Run")
try:
    pair = run_models(run_id)
except UserInputError as exc:
    st.error(plain(exc))
    st.stop()
if pair.compared:
    sides = {"before": (pair.before, ("run", run_id, "before")), "after": (pair.after, ("run", run_id, "after"))}
else:
    st.info("No finished run picked: showing the pretrained backbone alone. Train a run to compare before and after.")
    backbone = models.DEFAULT_BACKBONE
    model = session_model(("microscope", backbone), lambda: classifier(models.load(backbone), 2).eval())
    sides = {"pretrained": (model, ("pretrained", backbone))}
first = next(iter(sides.values()))[0]
groups = [g.name for g in first.layer_groups[:-1]]

c1, c2, c3 = st.columns(3)
group = c1.selectbox("Layer group", groups, index=len(groups) // 2, key="ms-group",
                     help="Early groups respond to colours and edges, later ones to textures, parts and objects.")
source = c2.radio("Images to search", ["The current dataset", "Sample photos (scikit-image)"], key="ms-source")
if source == "The current dataset":
    ds = workspace().dataset
    pool = [ds[i][0] for i in data.spread(len(ds), POOL)]
else:
    pool = list(sample_photos().values())
if not pool:
    st.warning("There are no images to search: load a dataset on the Data page.")
    st.stop()
images = encode_images([(img, 0) for img in pool], SIZE)
cache = ss.setdefault("_microscope_cache", FeatureCache(max_items=16))


def stats_of(which: str):
    model, key = sides[which]
    return cache.get_or_compute((key, group, tensor_key(images)),
                                lambda: microscope.channel_stats(model, group, images, image_size=SIZE))


try:
    with st.spinner("Looking at every channel on every image…"):
        stats = {which: stats_of(which) for which in sides}
except UserInputError as exc:
    st.error(plain(exc))
    st.stop()
count = next(iter(stats.values()))["means"].shape[1]
modes = ["By number"] + (["Changed most by fine-tuning"] if pair.compared else [])
mode = c3.radio("Channel", modes, key="ms-mode",
                help="Changed most: the channels whose top images changed most (1 − the correlation of their "
                     "activations on these images before and after).")
if pair.compared and group in pair.frozen:
    st.info(f"{group} was frozen in this run: before and after fine-tuning it computes the same, so its channels "
            "look for the same things. Pick a group that trained to see what changed.")
if mode == "By number":
    channel = int(st.number_input(f"Channel (0 to {count - 1})", 0, count - 1, 0, key="ms-channel"))
else:
    ranked = microscope.changed_channels(stats["before"], stats["after"], k=12)
    if ranked[0][1] < 1e-6:
        st.caption("No channel of this group changed on these images.")
    channel = st.selectbox("Channel", [c for c, _ in ranked], key="ms-changed",
                           format_func=dict((c, f"channel {c} (change {v:.2f})") for c, v in ranked).get)
channel = min(int(channel), count - 1)
layer = next(iter(stats.values()))["layer"]

st.subheader(f"{group} ({layer}), channel {channel} of {count}")
st.markdown("**Dataset examples** — the images (cropped around the strongest position) that excite it most")
columns = st.columns(len(sides))
for column, which in zip(columns, sides, strict=True):
    with column:
        st.markdown(f"*{which}*")
        found = microscope.top_examples(sides[which][0], group, channel, images, k=9, stats=stats[which])
        grid = st.columns(3)
        for n, (index, value, box) in enumerate(found):
            crop = images[index][:, box[1]:box[3], box[0]:box[2]].permute(1, 2, 0).numpy()
            grid[n % 3].image(crop, caption=f"{value:.2f}", width="stretch")

st.markdown("**Feature visualization** — an image optimised to excite the channel")
v1, v2, v3 = st.columns([1, 1, 2])
seed = int(v1.number_input("Seed", 0, 10_000, 0, key="ms-seed", help="Another seed: another image of the same pattern."))
steps = int(v2.select_slider("Steps", [64, 128, 256], value=128, key="ms-steps",
                             help="More steps: a clearer pattern, and a longer wait (256 steps at 128 px: "
                                  "seconds on a GPU, up to about 20 s on two CPU cores)."))
keys = {which: (sides[which][1], layer, channel, seed, SIZE, steps) for which in sides}
shared = visualizations()
done = {which: shared.get(key) for which, key in keys.items()}


def body(task):
    out = {}
    for n, (which, key) in enumerate(keys.items()):
        if done[which] is not None:
            out[which] = done[which]
            continue
        try:
            out[which] = microscope.visualize(
                sides[which][0], group, channel, size=SIZE, steps=steps, seed=seed, stop=task.stop,
                progress=lambda f, text, n=n, which=which: task.report((n + f) / len(keys), f"{which}: {text}"))
        except microscope.MicroscopeStopped:
            return None
        shared[key] = out[which]
    return out


if all(v is not None for v in done.values()):
    result = done
else:
    if v3.button("Visualize", type="primary", icon=":material/auto_awesome:", key="ms-run"):
        start_task(TASK, tuple(keys.values()), body, "feature visualization")
    result = task_result(TASK, tuple(keys.values()), "feature visualization")
if result:
    columns = st.columns(len(sides) + 2)
    for column, which in zip(columns, sides, strict=False):
        column.image(result[which], caption=f"{which} · seed {seed}", width="stretch")
    values = {which: microscope.channel_activation(sides[which][0], group, channel, [result[which]])[0]
              for which in sides}
    st.caption("Mean activation of the channel on its visualization: "
               + ", ".join(f"{w} {v:.2f}" for w, v in values.items())
               + f" (its best dataset example: {max(s['means'][:, channel].max().item() for s in stats.values()):.2f}).")
