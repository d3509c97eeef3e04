"""Few-shot: learn new classes from one or five pictures each, and see which method does it best."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import backbones, fewshot
from core.data import demo_fewshot
from core.errors import UserInputError

ss = st.session_state
st.title("Few-shot")
st.write(
    "An *N-way K-shot* episode shows the model K labelled pictures of N classes it has never seen "
    "(the support set) and asks it to name more pictures of them (the queries). The classes are split "
    "into *base* classes, which meta-learning methods may train on, and *novel* classes, which every "
    "method is scored on. Pretrained features with a nearest-mean rule often beat MAML here."
)

LABELS = {"prototypes": "Prototypes (nearest class mean, no training)",
          "linear": "Linear classifier per episode",
          "anil": "ANIL (meta-learned head, body frozen)",
          "fomaml": "First-order MAML (top of the network)",
          "maml": "MAML, second order (top of the network)",
          "scratch": "Same network from random weights (floor)"}


@st.cache_resource(show_spinner="Loading the pretrained backbone…")
def _backbone() -> backbones.Backbone:
    # read-only: every few-shot method works on its own copy
    return backbones.load()


@st.cache_data(show_spinner="Generating the many-class demo…")
def _demo(n_classes: int, per_class: int) -> object:
    return demo_fewshot(n_classes=n_classes, per_class=per_class)


def settings_ui():
    left, mid, right = st.columns(3)
    n_way = left.slider("N (classes per episode)", 2, 5, 5)
    k_shot = mid.radio("K (pictures per class) for the example", [1, 5], horizontal=True)
    episodes = right.slider("Episodes per score", 20, 200, 50, step=10,
                            help="More episodes: a narrower interval, a longer wait.")
    methods = st.multiselect("Methods", list(LABELS), default=["prototypes", "linear", "anil"],
                             format_func=LABELS.get,
                             help="MAML adapts the top of the network per episode: slow on a CPU.")
    return n_way, k_shot, episodes, methods


n_way, k_shot, episodes, methods = settings_ui()
ds = _demo(20, 20)
split = fewshot.split_classes(ds.classes, seed=0)
st.caption(f"Demo: {len(ds.classes)} classes (colour × shape), {len(ds)} images. "
           f"Base: {', '.join(split.base)}. Novel: {', '.join(split.novel)}.")

# --- one episode ---------------------------------------------------------------------------------
novel_ids = [ds.classes.index(c) for c in split.novel]
try:
    episode = fewshot.sample_episodes(ds.labels, novel_ids, n_way, k_shot, 3, 1, seed=ss.get("fs_seed", 0))[0]
except UserInputError as exc:
    st.error(str(exc))
    st.stop()
if st.button("Another episode"):
    ss["fs_seed"] = ss.get("fs_seed", 0) + 1
    st.rerun()
st.subheader(f"An episode: {n_way}-way {k_shot}-shot")
cols = st.columns(n_way)
for way, col in enumerate(cols):
    col.markdown(f"**{ds.classes[episode.classes[way]]}**")
    for i in episode.support[episode.support_y == way]:
        col.image(ds[int(i)][0], width=64)

# --- the scores --------------------------------------------------------------------------------
if st.button("Score the methods", type="primary", disabled=not methods):
    results = {}
    progress = st.progress(0.0, "Scoring…")
    jobs = [(m, k) for m in methods for k in (1, 5)]
    try:
        for j, (method, k) in enumerate(jobs):
            progress.progress(j / len(jobs), f"{LABELS[method]}, {k}-shot…")
            results[method, k] = fewshot.evaluate(_backbone(), ds, method, n_way, k, n_query=5,
                                                  episodes=min(episodes, 30) if method in ("maml", "fomaml")
                                                  else episodes, split=split)
    except UserInputError as exc:
        st.error(str(exc))
    progress.empty()
    ss["fs_results"] = {"n_way": n_way, "results": results}

saved = ss.get("fs_results")
if saved and saved["results"]:
    results = saved["results"]
    st.subheader(f"Accuracy on novel classes, {saved['n_way']}-way (mean ± 95 % interval)")
    rows = []
    for method in dict.fromkeys(m for m, _ in results):
        row = {"method": LABELS[method]}
        for k in (1, 5):
            r = results.get((method, k))
            row[f"{k}-shot"] = f"{r.mean:.1%} ± {r.ci95:.1%}" if r else ""
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    curves = {(m, k): r.curve for (m, k), r in results.items() if r.curve}
    if curves:
        fig = go.Figure()
        for (m, k), curve in curves.items():
            fig.add_scatter(x=np.arange(len(curve)), y=curve, name=f"{m}, {k}-shot", mode="lines+markers")
        fig.update_layout(title="Adaptation: query accuracy after each inner step", xaxis_title="inner steps",
                          yaxis_title="query accuracy", yaxis_range=[0, 1], height=340)
        st.plotly_chart(fig)
else:
    st.info("Press **Score the methods** to compare them on the same episodes of the novel classes.")
