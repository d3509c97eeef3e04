"""The Model page's "choose a backbone before training" section: LogME ranking, then a check by training."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from core import models
from core.analysis import transferability
from core.errors import UserInputError
from core.runs.jobs import start_run
from core.runs.kept import kept_metric
from core.train.base import TrainConfig
from pages.ui.models import backbone_catalogue
from pages.ui.runs import run_status, run_store
from pages.ui.session import current_split
from pages.ui.tasks import follow
from pages.ui.workspace import preset_freeze, workspace

RANKING = "_backbone_ranking"
# Strategies that mean the same thing for any architecture; the others are tied to one's groups.
PORTABLE = ("Feature extraction", "Fine-tune the last stage", "Fine-tune all")


def _ranking_table(rows: list[dict]) -> None:
    table = [
        {"rank": i + 1 if r["logme"] is not None else None, "backbone": r["title"],
         "LogME": r["logme"], "parameters (M)": r["params"] / 1e6,
         "seconds": r["seconds"] if r["logme"] is not None else None, "note": r["note"]}
        for i, r in enumerate(rows)
    ]
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "LogME": st.column_config.NumberColumn(format="%.3f", help="Mean log evidence per image of a Bayesian "
                                               "linear model on the backbone's pooled features: higher is better."),
        "parameters (M)": st.column_config.NumberColumn(format="%.1f", help="The plain baseline: a bigger network."),
        "seconds": st.column_config.NumberColumn(format="%.1f"),
    })


def _launch(rows: list[dict], count: int) -> dict[str, str]:
    ws = workspace()
    strategy = ws.model.strategy if ws.model.strategy in PORTABLE else "Feature extraction"
    base = ws.config.to_dict()
    train_ds, val_ds = current_split()
    runs = {}
    for row in rows[:count]:
        # a random backbone has nothing worth keeping frozen: it trains whole, as the Train page's scratch run
        freeze = preset_freeze(strategy, models.group_names(row["name"])) if row["pretrained"] else []
        config = TrainConfig(**{**base, "freeze": freeze, "lr_multipliers": {}, "unfreeze_every": 0})
        job = start_run(run_store(), train_ds, val_ds, backbone=row["name"], pretrained=row["pretrained"],
                        config=config, owner=st.session_state.owner, dataset=ws.dataset_label,
                        label=f"{row['title']} (LogME {row['logme']:.3f})")
        runs[job.run_id] = row
    return runs


def _progress(runs: dict[str, dict]) -> bool:
    """Each of the top backbones' runs and its status (``follow``'s draw): True while one is going."""
    lines, pending = [], 0
    for run_id, row in runs.items():
        snap, record = run_status(run_id)
        status = snap.status if snap else (record.status if record else "missing")
        done = snap.done if snap else (record is None or record.done)
        pending += not done
        lines.append(f"- {row['title']}: {status}")
    st.markdown(f"Training the top {len(runs)} (one run each, queued like any other run):\n" + "\n".join(lines))
    return pending > 0


def _comparison(runs: dict[str, dict]) -> None:
    points = []
    for run_id, row in runs.items():
        record = run_store().get(run_id)
        accuracy = kept_metric(record) if record is not None else None  # the model each run keeps
        if accuracy is not None and record.status == "finished":
            points.append((row, accuracy))
    if len(points) < len(runs):
        st.warning(f"{len(runs) - len(points)} of the runs did not finish; they are left out of the comparison.")
    if not points:
        return
    fig = go.Figure(go.Scatter(
        x=[row["logme"] for row, _ in points], y=[acc for _, acc in points], mode="markers+text",
        text=[row["title"].split(" (")[0] for row, _ in points], textposition="top center",
        marker=dict(size=12)))
    fig.update_layout(height=340, margin=dict(l=0, r=0, t=30, b=0), xaxis_title="LogME (predicted, before training)",
                      yaxis_title="validation accuracy (after training)", yaxis=dict(tickformat=".0%"))
    st.plotly_chart(fig, width="stretch", key="logme-vs-accuracy")
    try:
        tau, p_value = transferability.kendall_tau([row["logme"] for row, _ in points], [acc for _, acc in points])
    except UserInputError as exc:
        st.info(str(exc))
        return
    if tau != tau:  # every accuracy tied: no order to compare
        st.info("Every run reached the same accuracy, so there is no order to compare the scores with.")
        return
    st.metric("Kendall τ between LogME and accuracy", f"{tau:+.2f}",
              help="+1: LogME ordered the backbones exactly as training did; 0: no better than chance; −1: reversed.")
    st.caption(f"p = {p_value:.2f} with {len(points)} backbones: with so few, even a perfect order can be luck.")


def choose_backbone_ui() -> None:
    st.write(
        "Training every backbone to find the best one takes a while. LogME (You et al., 2021) predicts it from "
        "one forward pass: it asks how well a Bayesian linear model on the backbone's pooled features explains "
        "your labels. The parameter count beside it is the plain baseline, \"bigger is better\"."
    )
    _rank_ui()
    ranking = st.session_state.get(RANKING)
    if ranking is not None:
        _check_ui(ranking)


def _rank_ui() -> None:
    """The backbones to score and the button that ranks them on the session's images."""
    ws = workspace()
    catalogue = {info["name"]: info for info in backbone_catalogue()}
    offline = [n for n, info in catalogue.items() if info["offline"]]
    c1, c3 = st.columns([4, 1])
    names = c1.multiselect("Backbones to score", list(catalogue), default=offline,
                           format_func=lambda n: catalogue[n]["title"], key="rank-names")
    max_images = c3.selectbox("Images used", [50, 100, 200, 400], index=2, key="rank-images")
    # a row of its own: beside the picker it was cut short on a 1024 px projector
    scratch = st.checkbox("Also score each from random weights", value=len(offline) < 2, key="rank-scratch",
                          help="The from-scratch baseline: works offline for every architecture.")
    missing = [info["title"] for n, info in catalogue.items() if not info["offline"]]
    if missing:
        st.caption("ImageNet weights not on this server, so not scored pretrained: " + ", ".join(missing)
                   + ". They download on first use where the server has internet.")
    size = int(ws.config.image_size)
    if st.button("Rank the backbones on my images", icon=":material/leaderboard:", disabled=not names):
        bar = st.progress(0.0, text="Scoring…")
        try:
            rows = transferability.rank_backbones(
                ws.dataset, names, size, max_images, from_scratch=scratch,
                progress=lambda i, n, title: bar.progress(i / n, text=f"Scoring {title}…"))
        except UserInputError as exc:
            st.error(str(exc))
            return
        finally:
            bar.empty()
        st.session_state[RANKING] = {"rows": rows, "fingerprint": ws.dataset.fingerprint,
                                     "dataset": ws.dataset_label, "size": size, "runs": {}}


def _check_ui(ranking: dict) -> None:
    """The ranking, and fine-tuning its top few to check it."""
    ws = workspace()
    current = ranking["fingerprint"] == ws.dataset.fingerprint
    st.caption(f"On {ranking['dataset']} at {ranking['size']} px.")
    if not current:
        st.info("This ranking was computed on another dataset: rank again for the current one.")
    _ranking_table(ranking["rows"])
    scored = [r for r in ranking["rows"] if r["logme"] is not None]
    if len(scored) < 2:
        st.info("Fine-tuning the top few needs at least two scored backbones: tick 'Also score each from random "
                "weights' or pick more models.")
        return
    c1, c2 = st.columns([1, 3])
    count = int(c1.number_input("How many of the top", 2, len(scored), min(3, len(scored)), key="rank-top"))
    c2.caption(f"Each trains with the Train page's settings ({ws.config.epochs} epochs) and this page's "
               "strategy when it suits any backbone (else feature extraction); random-weight ones train whole.")
    if c2.button(f"Fine-tune the top {count} and compare", icon=":material/model_training:", disabled=not current):
        try:
            ranking["runs"] = _launch(scored, count)
        except UserInputError as exc:
            st.error(str(exc))
    runs = ranking["runs"]
    if runs:
        ended = all((lambda s, r: s.done if s else (r is None or r.done))(*run_status(i)) for i in runs)
        if ended:
            _comparison(runs)
        else:
            follow(_progress, runs, live=True)
