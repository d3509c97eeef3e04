"""Few-shot: learn new classes from one or five pictures each, and see which method does it best."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core import models
from core.data import demo_fewshot
from core.errors import UserInputError
from core.methods import fewshot
from core.methods.episodes import largest_ways, sample_episodes, split_classes
from core.runs.jobs import get_job, start_folder_run
from core.runs.kinds.meta import load_meta_run, meta_run
from pages.ui.runs import run_curves, run_progress, run_status, run_store
from pages.ui.session import DEMO_LABEL as SHAPES_LABEL
from pages.ui.session import bootstrap
from pages.ui.tasks import follow
from pages.ui.text import plain
from pages.ui.workspace import workspace

bootstrap()  # first, before the session is read: see bootstrap's docstring

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
SHORT = {"prototypes": "prototypes", "linear": "linear", "anil": "ANIL", "fomaml": "FOMAML", "maml": "MAML",
         "scratch": "scratch"}
DEMO = dict(n_classes=20, per_class=20)
DEMO_LABEL = "Many-class demo"
N_QUERY_SHOWN = 2  # query pictures per class in the example episode
N_QUERY_SCORED = 5  # query pictures per class when the methods are scored


@st.cache_resource(show_spinner="Loading the pretrained backbone…")
def _backbone() -> models.Backbone:
    # read-only: every few-shot method works on its own copy
    return models.load()


@st.cache_data(show_spinner="Generating the many-class demo…")
def _demo(n_classes: int, per_class: int) -> object:
    return demo_fewshot(n_classes=n_classes, per_class=per_class)


def settings_ui(ways: dict[int, int]):
    """``ways``: {K: the largest N} the data allows."""
    left, mid, right = st.columns(3)
    most = max(ways.values())
    n_way = left.slider("N (classes per episode)", 2, most, most) if most > 2 else 2
    if most == 2:
        left.caption("N (classes per episode): 2, all your data allows")
    shots = [k for k, n in ways.items() if n >= n_way]
    k_shot = mid.radio("K (pictures per class) for the example", shots, horizontal=True)
    episodes = right.slider("Episodes per score", 20, 200, 50, step=10,
                            help="More episodes: a narrower interval, a longer wait.")
    methods = st.multiselect("Methods", list(LABELS), default=["prototypes", "linear", "anil"],
                             format_func=LABELS.get,
                             help="MAML adapts the top of the network per episode: slow on a CPU. The "
                                  "meta-learned methods show their predictions once meta-trained below.")
    return n_way, k_shot, episodes, methods


def meta_trained(n_way: int) -> dict[str, str]:
    """This session's newest finished meta-training run of each method with an ``n_way`` head: {method: run id}."""
    found = {}
    for run_id in reversed(ss.get("fs_runs", [])):
        _, record = run_status(run_id)
        if record is not None and record.status == "finished" and record.config.get("n_way") == n_way:
            found.setdefault(record.config["method"], run_id)
    return found


@st.cache_data(max_entries=64, show_spinner="Each method names the query pictures…")
def _predictions(data_key, n_way: int, k_shot: int, seed: int, method: str, run_id: str | None,
                 _ds) -> np.ndarray:
    ds = _ds  # not hashed: data_key (its fingerprint) says which dataset it is
    split = split_classes(ds.classes, seed=0)
    novel_ids = [ds.classes.index(c) for c in split.novel]
    episode = sample_episodes(ds.labels, novel_ids, n_way, k_shot, N_QUERY_SHOWN, 1, seed=seed)[0]
    # a fresh copy of the run's model: adapting patches modules for a moment, never a shared one
    model, meta, _ = load_meta_run(run_store(), run_id) if run_id else (None, None, None)
    return fewshot.predict_episode(_backbone(), ds, episode, method, meta=meta, meta_model=model)


def episode_ui(ds, split, n_way: int, k_shot: int, methods: list[str]) -> None:
    novel_ids = [ds.classes.index(c) for c in split.novel]
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    if left.button("Another episode"):
        ss["fs_seed"] = int(ss.get("fs_seed", 0)) + 1
    right.number_input("Episode number", 0, 99_999, key="fs_seed",
                       help="The same number always draws the same episode: give it to someone to compare.")
    seed = int(ss.get("fs_seed", 0))
    try:
        episode = sample_episodes(ds.labels, novel_ids, n_way, k_shot, N_QUERY_SHOWN, 1, seed=seed)[0]
    except UserInputError as exc:
        st.error(plain(exc))
        return
    st.subheader(f"An episode: {n_way}-way {k_shot}-shot")
    st.caption("The support set: the only labelled pictures of these classes a method gets.")
    for way, col in enumerate(st.columns(n_way)):
        col.markdown(f"**{plain(ds.classes[episode.classes[way]])}**")
        for i in episode.support[episode.support_y == way]:
            col.image(ds[int(i)][0], width=64)

    runs = meta_trained(n_way)
    shown = [m for m in methods if m not in fewshot.META_METHODS or m in runs]
    waiting = [SHORT[m] for m in methods if m not in shown]
    preds = {}
    try:
        for m in shown:
            preds[m] = _predictions(ds.fingerprint, n_way, k_shot, seed, m, runs.get(m), ds)
    except UserInputError as exc:
        st.error(plain(exc))
    st.markdown("**The queries**, each under its true class, and the class each method named "
                "(:green[✓] right, :red[✗] wrong):")
    for way, col in enumerate(st.columns(n_way)):
        for q in np.flatnonzero(episode.query_y == way):
            col.image(ds[int(episode.query[q])][0], width=64)
            lines = [f":green[✓ {SHORT[m]}]" if int(p[q]) == way else
                     f":red[✗ {SHORT[m]}: {plain(ds.classes[episode.classes[int(p[q])]])}]" for m, p in preds.items()]
            if lines:
                col.markdown("  \n".join(lines))
    if preds:
        st.caption("Right in this episode: " + " · ".join(
            f"{SHORT[m]} {int((p == episode.query_y).sum())}/{len(p)}" for m, p in preds.items()))
    if waiting:
        st.caption(f"{', '.join(waiting)}: meta-train it below ({n_way}-way) to see its predictions here.")


def scores_ui(ds, split, n_way: int, episodes: int, methods: list[str], shots: list[int]) -> None:
    if st.button("Score the methods", type="primary", disabled=not methods):
        runs = meta_trained(n_way)
        results = {}
        progress = st.progress(0.0, "Scoring…")
        jobs = [(m, k) for m in methods for k in shots]
        try:
            for j, (method, k) in enumerate(jobs):
                progress.progress(j / len(jobs), f"{LABELS[method]}, {k}-shot…")
                # a method meta-trained below is scored as trained there; otherwise evaluate meta-trains one
                model, meta, _ = load_meta_run(run_store(), runs[method]) if method in runs else (None,) * 3
                results[method, k] = fewshot.evaluate(_backbone(), ds, method, n_way, k, n_query=N_QUERY_SCORED,
                                                      episodes=min(episodes, 30) if method in ("maml", "fomaml")
                                                      else episodes, split=split, meta=meta, meta_model=model)
        except UserInputError as exc:
            st.error(plain(exc))
        progress.empty()
        ss["fs_results"] = {"n_way": n_way, "results": results}

    saved = ss.get("fs_results")
    if saved and saved["results"]:
        results = saved["results"]
        st.subheader(f"Accuracy on novel classes, {saved['n_way']}-way (mean ± 95 % interval)")
        rows = []
        for method in dict.fromkeys(m for m, _ in results):
            row = {"method": LABELS[method]}
            for k in sorted({k for _, k in results}):
                r = results.get((method, k))
                row[f"{k}-shot"] = f"{r.mean:.1%} ± {r.ci95:.1%}" if r else ""
            rows.append(row)
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        curves = {(m, k): r.curve for (m, k), r in results.items() if r.curve}
        if curves:
            st.plotly_chart(adaptation_figure({f"{m}, {k}-shot": c for (m, k), c in curves.items()}))
    else:
        st.info("Press **Score the methods** to compare them on the same episodes of the novel classes.")


def adaptation_figure(curves: dict[str, list[float]]) -> go.Figure:
    fig = go.Figure()
    for name, curve in curves.items():
        fig.add_scatter(x=np.arange(len(curve)), y=curve, name=name, mode="lines+markers")
    fig.update_layout(title="Adaptation: query accuracy after each inner step", xaxis_title="inner steps",
                      yaxis_title="query accuracy", yaxis_range=[0, 1], height=340)
    return fig


# --- meta-training as a run ------------------------------------------------------------------------


def meta_ui(ds, split, n_way: int, k_shot: int, episodes: int, label: str) -> None:
    st.divider()
    st.subheader("Meta-training on the base classes")
    st.write("Meta-training shows the network thousands of small episodes of the base classes, and after each "
             "it learns a starting point from which a few gradient steps on a support set go far. It runs as a "
             f"task like any training run, on {n_way}-way {k_shot}-shot episodes (the settings above), and is "
             f"then scored on {episodes} episodes of the novel classes with 1 and with 5 shots.")
    c1, c2, c3 = st.columns(3)
    # short names: a third of an 800 px projector's page; the long ones are in the Methods list above
    method = c1.selectbox("Method", list(fewshot.META_METHODS)[::-1], format_func=SHORT.get,
                          help=" · ".join(LABELS[m] for m in list(fewshot.META_METHODS)[::-1]))
    epochs = c2.slider("Epochs", 1, 10, 3)
    default = fewshot.meta_config(method)
    per_epoch = c3.slider("Episodes per epoch", 10, 200, default.episodes, step=10,
                          help="ANIL trains the head alone on features computed once: 100 episodes take seconds. "
                               "MAML adapts the top of the network in every episode: much slower on a CPU.")
    if st.button("Meta-train", icon=":material/play_arrow:"):
        try:
            config = fewshot.meta_config(method, epochs=epochs, episodes=per_epoch)
            record, inputs = meta_run(ds, split, method, n_way, k_shot, config, owner=ss.get("owner", ""),
                                              dataset_label=label, eval_episodes=episodes)
            start_folder_run(run_store(), record, inputs)
        except UserInputError as exc:
            st.error(plain(exc))
        else:
            ss["fs_runs"] = [*ss.get("fs_runs", []), record.id][-8:]
            st.rerun()
    runs = ss.get("fs_runs", [])
    if runs:
        job = get_job(runs[-1])
        snap = job.snapshot() if job is not None else None
        if snap is not None and not snap.done:
            # ended: follow asks for the full rerun, so the episode shows the new predictions
            follow(show_meta_run, runs[-1], live=True)
        else:
            show_meta_run(runs[-1])


def meta_curves(epochs: list[dict], batch_losses) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Query loss after adaptation", "Query accuracy"))
    if batch_losses:
        xs, ys = zip(*batch_losses, strict=True)
        fig.add_trace(go.Scatter(x=xs, y=ys, name="base classes (per batch of episodes)", mode="lines",
                                 line=dict(width=1, color="rgba(31,119,180,0.35)")), 1, 1)
    if epochs:
        x = [e["epoch"] for e in epochs]
        for key, name, colour, col in [("train_loss", "base classes", "#1f77b4", 1),
                                       ("val_loss", "novel classes", "#ff7f0e", 1),
                                       ("train_acc", "base classes", "#1f77b4", 2),
                                       ("val_acc", "novel classes", "#ff7f0e", 2)]:
            fig.add_trace(go.Scatter(x=x, y=[e[key] for e in epochs], name=name, mode="lines+markers",
                                     showlegend=col == 1, line=dict(color=colour)), 1, col)
    fig.update_xaxes(title_text="epoch", rangemode="tozero")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def show_meta_run(run_id: str) -> bool:
    """Draw a meta-training run; True while it is still going."""
    snap, record = run_status(run_id)
    if record is None:
        st.warning("This meta-training run is gone (it may have been removed to free disk space).")
        return False
    status = snap.status if snap is not None else record.status
    running = snap is not None and not snap.done
    st.markdown(f"**{plain(record.label)}** · {status}")
    epochs, batch_losses, message = run_curves(snap, record)
    if running:
        phase = "Computing the frozen body's features once…" if snap.phase == "cache" else "Meta-training…"
        run_progress(run_id, snap, lambda: f"{phase} {snap.progress:.0%}", "Stop meta-training")
    if status in ("failed", "diverged"):
        st.error(plain(message))
    elif message:
        st.info(plain(message))
    if epochs or batch_losses:
        st.plotly_chart(meta_curves(epochs, batch_losses), key=f"meta-curves-{run_id}")
        st.caption("Base classes: query accuracy of the training episodes, after the inner steps. Novel classes: "
                   "the same after adapting to episodes of classes meta-training never saw.")
    novel = (record.info or {}).get("novel") if record.done else None
    if novel:
        st.markdown("**The meta-trained model on novel classes** (mean ± 95 % interval):")
        st.dataframe(pd.DataFrame([{"episodes": f"{record.config['n_way']}-way {k}-shot",
                                    "accuracy": f"{r['mean']:.1%} ± {r['ci95']:.1%}",
                                    "scored on": f"{r['episodes']} episodes"} for k, r in novel.items()]),
                     hide_index=True)
        st.plotly_chart(adaptation_figure({f"{k}-shot": r["curve"] for k, r in novel.items()}),
                        key=f"meta-adapt-{run_id}")
        st.caption("The episode above and the scores use this model for "
                   f"{SHORT[record.config['method']]} ({record.config['n_way']}-way).")
    return running


def episode_data():
    """(dataset, its name, base/novel split, {K: largest N}): the person's own images when their classes
    allow episodes, else the built-in many-class set, with a note saying why."""
    own, label = workspace().dataset, workspace().dataset_label
    if not label.startswith(SHAPES_LABEL) and len(own.classes) >= 2:
        split = split_classes(own.classes, seed=0)
        novel = [own.classes.index(c) for c in split.novel]
        ways = largest_ways(own.labels, novel, N_QUERY_SCORED)
        if ways:
            return own, label, split, ways
        st.info(f"{plain(label)} has {len(own.classes)} classes; half of them are kept apart as novel classes, and "
                f"an episode needs at least 2 of them with {1 + N_QUERY_SCORED} pictures each (1 to learn from, "
                f"{N_QUERY_SCORED} to score). So this page uses its built-in many-class set.",
                icon=":material/info:")
    ds = _demo(**DEMO)
    return ds, DEMO_LABEL, split_classes(ds.classes, seed=0), {1: 5, 5: 5}


ds, data_label, split, ways = episode_data()
n_way, k_shot, episodes, methods = settings_ui(ways)
if data_label == DEMO_LABEL:
    st.caption(f"Demo: {len(ds.classes)} classes (colour × shape), {len(ds)} images. "
               f"Base: {', '.join(split.base)}. Novel: {', '.join(split.novel)}.")
else:
    allowed = " and ".join(f"{n}-way {k}-shot" for k, n in ways.items())
    st.caption(f"Your data, {plain(data_label)}: {len(ds.classes)} classes, {len(ds)} images; it allows up to "
               f"{allowed} episodes. Base: {plain(', '.join(split.base))}. Novel: {plain(', '.join(split.novel))}.")
shots = [k for k, n in ways.items() if n >= n_way]
episode_ui(ds, split, n_way, k_shot, methods)
scores_ui(ds, split, n_way, episodes, methods, shots)
meta_ui(ds, split, n_way, k_shot, episodes, data_label)
