"""Model: a pretrained backbone, which layer groups stay frozen, and their learning rates."""

from dataclasses import replace
from pathlib import Path

import streamlit as st

from core import models
from core.errors import UserInputError
from core.train.base import training_plan
from core.workspace import FIELD_WORDS
from pages.ui.charts import plan_figure
from pages.ui.choose_backbone import choose_backbone_ui
from pages.ui.links import hidden, locked
from pages.ui.models import backbone_catalogue, group_table
from pages.ui.runs import run_store, upload_store
from pages.ui.session import bootstrap, sidebar
from pages.ui.text import plain
from pages.ui.workspace import ModelChoice, discriminative_spread, preset_config, workspace

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state
ws = workspace()
choice: ModelChoice = ws.model
st.title("Model")
st.write(
    "Early layers of a pretrained network detect edges and textures that suit almost any image; "
    "later layers are specific to ImageNet. Freeze what should stay general, train what should adapt."
)

catalogue = {info["name"]: info for info in backbone_catalogue()}


def label(name: str) -> str:
    # Short enough for a 1024 px projector; the parameter count, from the real model, sits below.
    info = catalogue[name]
    return info["title"] if info["offline"] else f"{info['title']} · weights not on this server"


STRATEGIES = {
    "Feature extraction": "Freeze the whole backbone and train only the new head. Fast: the backbone's "
                          "features are computed once and cached, and the head trains until the validation "
                          "loss stops improving.",
    "Fine-tune the last stage": "The head warms up alone, then trains with the last stages at lower rates; "
                                "earlier layers keep their general features.",
    "Fine-tune all": "The head warms up alone, then every layer trains, early layers at smaller rates so "
                     "they do not forget. Slowest.",
    "Discriminative learning rates": "Train every layer, with learning rates spread geometrically from "
                                     "the stem (smallest) to the head (largest), as fastai's slice(lo, hi).",
    "Progressive unfreezing": "Start with the head alone, then unfreeze one more group from the top every "
                              "few epochs (ULMFiT): the new head settles before it can disturb early layers.",
    "Custom": "Pick the frozen groups and learning-rate multipliers in the table.",
}

col1, col2 = st.columns([3, 2])
with col1:
    names = list(catalogue)
    name = st.selectbox("Backbone", names, index=names.index(choice.backbone), format_func=label,
                        disabled=locked("backbone"))
    ws.change(backbone=name)
    n_classes = len(ws.dataset.classes)
    st.caption(f"{sum(r['params'] for r in group_table(name, n_classes)):,} parameters with a new head for "
               f"{max(2, n_classes)} classes (ImageNet's 1,000-class head is not kept).")
    pretrained = st.checkbox("Start from ImageNet weights (pretrained)", value=choice.pretrained,
                             help="Untick to start from random weights: the 'from scratch' baseline.",
                             disabled=locked("pretrained"))
    if pretrained and not catalogue[name]["offline"]:
        st.warning(
            f"{catalogue[name]['title']}'s ImageNet weights are not in this server's torch cache. "
            "They download on first use when the server has internet; otherwise training will stop "
            f"with instructions. {catalogue[models.DEFAULT_BACKBONE]['title']} always works offline."
        )
        if st.button("Try to fetch the weights now"):
            try:
                with st.spinner("Downloading…"):
                    models.load(name, pretrained=True)
            except UserInputError as exc:
                st.error(plain(exc))
            else:
                backbone_catalogue.clear()
                st.success("The weights are in the cache now.")
    if not hidden("own_weights"):
        with st.expander("Or start from your own weights file (.safetensors, .pt, .pth)"):
            upload = st.file_uploader("A state_dict of this architecture", type=["safetensors", "pt", "pth"])
            if upload is not None and st.button("Check and use this file"):
                try:
                    # charged to this person, within their quota; then the disk cap runs, as after a run
                    stored = upload_store().add(upload.getvalue(), upload.name,
                                                check=lambda path: models.load(name, pretrained=False, weights_path=path),
                                                owner=ss.owner, in_use=[r.config.get("weights_file")
                                                                        for r in run_store().list()])
                    run_store().enforce_cap()
                except UserInputError as exc:
                    st.error(plain(exc))
                    if choice.weights_path:
                        st.info(f"Training still starts from your earlier file, {plain(choice.weights_name)}.")
                else:
                    ws.change(weights_path=str(stored.path), weights_name=stored.name)
                    st.success(f"{plain(stored.name)} fits {name}; training will start from it.")
                    # Files no run started from, untouched for a day, go (a run's own file stays).
                    upload_store().prune(r.config.get("weights_file") for r in run_store().list())
            if choice.weights_path:
                st.caption(f"In use: {plain(choice.weights_name or Path(choice.weights_path).name)}")
                if st.button("Stop using my weights file"):
                    ws.change(weights_path=None, weights_name=None)
                    st.rerun()
    train_bn = st.checkbox(
        "Frozen groups: update BatchNorm statistics", value=choice.train_bn,
        help="Off (the default): frozen layers compute exactly what they computed before. On: their weights stay, "
             "but BatchNorm's running mean and variance adapt to your images — cheap domain adaptation, "
             "at the price of features that drift and no feature cache.")

ws.change(pretrained=pretrained, train_bn=train_bn)
table = group_table(name, len(ws.dataset.classes))
groups = [row["group"] for row in table]

with col2:
    strategy = st.radio("Strategy", list(STRATEGIES), index=list(STRATEGIES).index(choice.strategy),
                        disabled=locked("strategy"))
    st.caption(STRATEGIES[strategy])
    if strategy != choice.strategy:
        # the preset comes back, but what the person edited on the Train page (or a link locks) stays
        kept = ws.choose_strategy(strategy)
        ss["_kept_note"] = (strategy, kept or [])
    note = ss.get("_kept_note")
    if note and note[0] == choice.strategy and note[1]:
        cfg = ws.config
        st.info(f"{strategy}'s preset is in place, except what you set yourself or your link locks: "
                + ", ".join(f"{FIELD_WORDS.get(k, k)} {getattr(cfg, k)}" for k in note[1]
                            if not isinstance(getattr(cfg, k), (list, dict)))
                + (" (and your layer choices)" if {"freeze", "lr_multipliers"} & set(note[1]) else "")
                + ". Change them on the Train page.", icon=":material/lock_person:")
    lowest = 0.01
    if strategy == "Discriminative learning rates":
        steps = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
        now = choice.lr_multipliers.get(groups[0], 0.01)
        lowest = st.select_slider("Stem's learning rate, relative to the head's", steps,
                                  value=min(steps, key=lambda v: abs(v - now)), disabled=locked("strategy"))
        ws.change(lr_multipliers=discriminative_spread(groups, lowest))
    if strategy == "Progressive unfreezing":
        ws.change(unfreeze_every=st.slider("Unfreeze one more group every … epochs", 1, 5,
                                           max(1, choice.unfreeze_every), disabled=locked("strategy")))

st.subheader("Layer groups, from input to output")
rows = [
    {"group": r["group"], "layers": r["modules"], "parameters": r["params"],
     "train": r["group"] not in choice.freeze, "lr ×": choice.lr_multipliers.get(r["group"], 1.0)}
    for r in table
]
edited = st.data_editor(
    rows,
    key=f"groups-{name}-{strategy}-{lowest}",
    # a locked strategy locks the table too: a ticked box would turn it into "Custom"
    disabled=["group", "layers", "parameters"] + (["train", "lr ×"] if locked("freeze") or locked("strategy") else []),
    column_config={
        "train": st.column_config.CheckboxColumn("train", help="Unticked groups stay frozen, BatchNorm statistics too."),
        "lr ×": st.column_config.NumberColumn("lr ×", min_value=0.0, max_value=100.0, step=0.1, format="%.2f",
                                              help="This group's learning rate = base rate × this."),
        "parameters": st.column_config.NumberColumn(format="localized"),  # 3,384,612, not 3384612
    },
    hide_index=True,
    width="stretch",
)
new_freeze = [row["group"] for row in edited if not row["train"]]
new_rates = {row["group"]: float(row["lr ×"]) for row in edited if float(row["lr ×"]) != 1.0}
if (new_freeze, new_rates) != (choice.freeze, choice.lr_multipliers) and not ws.change(freeze=new_freeze,
                                                                                         lr_multipliers=new_rates):
    if strategy != "Custom" and new_freeze != list(preset_config(strategy, groups).freeze):
        choice.strategy = "Custom"
preview = replace(ws.config, freeze=list(choice.freeze), lr_multipliers=dict(choice.lr_multipliers),
                  unfreeze_every=choice.unfreeze_every)
plan = training_plan(groups, preview)
# What trains is what the plan trains: progressive unfreezing keeps groups frozen for some epochs,
# and a group that the plan never reaches within these epochs never trains at all.
ever_trained = {g for epoch in plan for g, m in epoch.items() if m > 0}
trainable = sum(r["params"] for r in table if r["group"] in ever_trained)
total = sum(r["params"] for r in table)
m1, m2, m3 = st.columns(3)
m1.metric("Trainable parameters", f"{trainable:,}")
m2.metric("Frozen parameters", f"{total - trainable:,}")
m3.metric("Share trained", f"{trainable / total:.1%}")
if choice.unfreeze_every and plan:
    at_first = sum(r["params"] for r in table if plan[0].get(r["group"], 0) > 0)
    never = [g for g in groups if g not in ever_trained]
    st.caption(f"Progressive unfreezing: {at_first:,} parameters train in epoch 1, more join every "
               f"{choice.unfreeze_every} epoch(s)"
               + (f"; in {preview.epochs} epochs the plan never reaches {', '.join(never)}, which stay frozen."
                  if never else "."))
if not any(row["train"] for row in edited):
    st.error("Every group is frozen: tick 'train' for at least the head.")
elif set(groups) - {"head"} <= set(choice.freeze):
    st.info("Only the head trains: the backbone's features will be computed once and cached, so epochs are fast.")
st.caption("The head is always new (one output per class of your data), so it is trained from scratch.")

st.plotly_chart(plan_figure(plan,
                            f"The plan for {preview.epochs} epochs (set epochs on the Train page)"
                            + (", stopping early once validation stops improving" if preview.early_stopping else "")),
                width="stretch", key="plan-preview")

if not hidden("ranking"):
    st.subheader("Which backbone suits your images? Rank them before training")
    choose_backbone_ui()

sidebar(refresh=True)  # this page changed the strategy after app.py drew the sidebar
