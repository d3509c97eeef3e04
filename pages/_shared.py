"""Session state and small helpers shared by the pages (the only UI module that is not a page)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import streamlit as st

from core import backbones, data
from core.devices import describe_device, pick_device
from core.jobs import get_job
from core.runs import RunStore, is_run_id
from core.settings import get_settings
from core.training import TrainConfig, strategy_config

DEMO_LABEL = "Demo shapes"


@dataclass
class ModelChoice:
    """What the Model page decided, read by the Train page."""

    backbone: str = backbones.DEFAULT_BACKBONE
    pretrained: bool = True
    weights_path: str | None = None
    freeze: list[str] = field(default_factory=list)
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    strategy: str = "Feature extraction"
    unfreeze_every: int = 0
    train_bn: bool = False


@st.cache_resource
def run_store() -> RunStore:
    """The server's one run store (it holds no per-person state in memory)."""
    settings = get_settings()
    return RunStore(settings.data_dir, cap_mb=settings.disk_cap_mb)


@st.cache_resource
def device_label() -> str:
    return describe_device(pick_device())


@st.cache_data(show_spinner=False)
def backbone_catalogue() -> list[dict]:
    return [info.__dict__.copy() for info in backbones.list_backbones()]


@st.cache_data(show_spinner="Reading the backbone's layers…")
def group_table(name: str, num_classes: int = 2) -> list[dict]:
    """Layer groups of a classifier for ``num_classes`` with their parameter counts (plain data)."""
    bb = backbones.load(name, pretrained=False)
    model = backbones.classifier(bb, max(2, num_classes))
    params = backbones.group_parameters(model, bb.layer_groups)
    return [
        {"group": g.name, "modules": ", ".join(g.modules) if len(g.modules) <= 3 else
         f"{g.modules[0]} … {g.modules[-1]} ({len(g.modules)} blocks)",
         "params": sum(p.numel() for p in params[g.name])}
        for g in bb.layer_groups
    ]


@st.cache_data(show_spinner="Generating the demo images…")
def _demo(domain: str, per_class: int, seed: int) -> data.ImageDataset:
    return data.demo_dataset(domain, per_class=per_class, seed=seed)


def demo(domain: str = "source", per_class: int = 20, seed: int = 0) -> data.ImageDataset:
    return _demo(domain, per_class, seed)


# The Model page's strategies and the core preset each starts from ("Custom" keeps what is set).
PRESETS = {
    "Feature extraction": "feature_extraction",
    "Fine-tune the last stage": "last_stage",
    "Fine-tune all": "full",
    "Discriminative learning rates": "full",
    "Progressive unfreezing": "progressive",
}

# Settings of the person's that a change of strategy keeps (they describe the data, not the strategy).
KEPT_SETTINGS = ("seed", "image_size", "flip", "color_jitter", "device")


def preset_config(strategy: str, groups: list[str], current: TrainConfig | None = None) -> TrainConfig:
    """The core preset's TrainConfig for a Model-page strategy, keeping ``current``'s data settings."""
    kept = {k: getattr(current, k) for k in KEPT_SETTINGS} if current is not None else {}
    return strategy_config(PRESETS.get(strategy, "feature_extraction"), groups, **kept)


def preset_freeze(strategy: str, groups: list[str]) -> list[str]:
    """Which groups a preset strategy keeps frozen (the head always trains)."""
    return list(preset_config(strategy, groups).freeze)


def plan_figure(plan: list[dict], title: str = "Which groups train in which epoch"):
    """A timeline: layer groups (rows, input at the bottom) by epoch, coloured by learning rate."""
    import plotly.graph_objects as go

    groups = list(plan[0]) if plan else []
    z = [[epoch[g] if epoch[g] > 0 else None for epoch in plan] for g in groups]
    text = [[f"lr × {epoch[g]:.3g}" if epoch[g] > 0 else "frozen" for epoch in plan] for g in groups]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(1, len(plan) + 1)), y=groups, text=text, colorscale="Reds", zmin=0,
        hovertemplate="epoch %{x} · %{y}: %{text}<extra></extra>", xgap=2, ygap=2,
        colorbar=dict(title="lr ×"),
    ))
    fig.update_layout(title=title, height=120 + 22 * len(groups), margin=dict(l=0, r=0, t=40, b=0),
                      xaxis=dict(title="epoch", dtick=1), plot_bgcolor="#eef0f3")
    return fig


def init_session() -> None:
    """Defaults for a new browser session: the demo set and the offline default backbone."""
    ss = st.session_state
    if "owner" not in ss:
        owner = st.query_params.get("u", "")
        ss.owner = owner if is_run_id(owner) else secrets.token_hex(8)
    if "dataset" not in ss:
        ss.dataset = demo()
        ss.dataset_label = f"{DEMO_LABEL} (source look)"
        ss.load_report = None
    ss.setdefault("val_fraction", 0.25)
    ss.setdefault("split_seed", 0)
    if "model_choice" not in ss:
        groups = [g["group"] for g in group_table(backbones.DEFAULT_BACKBONE)]
        preset = preset_config("Feature extraction", groups)
        ss.model_choice = ModelChoice(freeze=list(preset.freeze), lr_multipliers=dict(preset.lr_multipliers))
    ss.setdefault("train_config", TrainConfig())
    if "current_run" not in ss:
        run_id = st.query_params.get("run", "")
        ss.current_run = run_id if is_run_id(run_id) else None
    # Page switches clear the address bar's query; put the person's link back every time, so a
    # refresh or a bookmark finds their runs (u) and the run on screen (run).
    if st.query_params.get("u") != ss.owner:
        st.query_params["u"] = ss.owner
    if ss.current_run and st.query_params.get("run") != ss.current_run:
        st.query_params["run"] = ss.current_run


def current_split():
    ss = st.session_state
    return data.split(ss.dataset, ss.val_fraction, ss.split_seed)


def select_run(run_id: str | None) -> None:
    st.session_state.current_run = run_id
    if run_id:
        st.query_params["run"] = run_id
    elif "run" in st.query_params:
        del st.query_params["run"]


def my_runs():
    """This person's runs (by the owner token in their link), newest first."""
    return run_store().list(owner=st.session_state.owner)


def run_status(run_id: str):
    """(snapshot or None, record or None): live state when the job is in this process."""
    job = get_job(run_id)
    return (job.snapshot() if job else None), run_store().get(run_id)


def sidebar() -> None:
    ss = st.session_state
    with st.sidebar:
        st.caption(f"Device: **{device_label()}**")
        ds = ss.get("dataset")
        if ds is not None:
            st.caption(f"Data: {ss.dataset_label} — {len(ds)} images, {len(ds.classes)} classes")
        mc = ss.get("model_choice")
        if mc is not None:
            st.caption(f"Model: {mc.backbone}{'' if mc.pretrained else ' (no pretraining)'} — {mc.strategy}")
        if ss.get("current_run"):
            st.caption(f"Run: `{ss.current_run}`")


SAMPLE_PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "cat")


@st.cache_data(show_spinner=False)
def sample_photos() -> dict:
    """Real photos that ship with scikit-image, for explaining the ImageNet model itself."""
    from PIL import Image
    from skimage import data as skdata

    photos = {}
    for name in SAMPLE_PHOTOS:
        loader = getattr(skdata, name, None)
        if loader is not None:
            photos[name] = Image.fromarray(loader()).convert("RGB")
    return photos


def finished_runs():
    store = run_store()
    return [r for r in my_runs() if r.status in ("finished", "cancelled", "diverged") and store.has_model(r.id)]


@dataclass
class ModelPair:
    """A model before and after fine-tuning (the same object twice for the backbone alone)."""

    before: object
    after: object
    preprocess: object
    layer_groups: list
    classes: list
    frozen: list
    compared: bool


def run_models(run_id: str | None, backbone: str = backbones.DEFAULT_BACKBONE) -> ModelPair:
    """The models to inspect, cached in this session only.

    Each session loads its own copies, so one person's hooks never touch another's model.
    """
    cache = st.session_state.setdefault("_models", {})
    key = run_id or f"pretrained:{backbone}"
    if key not in cache:
        if len(cache) >= 3:
            cache.pop(next(iter(cache)))
        if run_id:
            store = run_store()
            record = store.get(run_id)
            after = store.load_model(run_id)
            cache[key] = ModelPair(store.load_starting_model(run_id), after, after.preprocess, after.layer_groups,
                                   after.classes, list(record.config.get("freeze", [])), True)
        else:
            bb = backbones.load(backbone)
            cache[key] = ModelPair(bb.model, bb.model, bb.preprocess, bb.layer_groups, bb.categories, [], False)
    return cache[key]


def model_picker(label: str = "Model"):
    """Pick a finished run of this person, or the pretrained default backbone alone."""
    runs = finished_runs()
    options = [None] + [r.id for r in runs]
    names = {r.id: f"{r.label} · {r.dataset} · val acc {r.final():.0%}" if r.final() == r.final() else r.label
             for r in runs}
    current = st.session_state.get("current_run")
    index = options.index(current) if current in options else (1 if runs else 0)
    run_id = st.selectbox(label, options, index=index,
                          format_func=lambda r: names.get(r, r) if r else "Pretrained EfficientNet-Lite0 alone (ImageNet)")
    return run_id, (run_store().get(run_id) if run_id else None)


def image_picker(key: str):
    """An image from the dataset, an upload or a sample photo; returns (PIL image, caption)."""
    from core import data as core_data
    from core.errors import UserInputError

    ds = st.session_state.dataset
    source = st.radio("Image", ["From the dataset", "Sample photo", "Upload"], horizontal=True, key=f"{key}-src")
    if source == "From the dataset":
        class_name = st.selectbox("Class", ds.classes, key=f"{key}-class")
        indices = [i for i, label in enumerate(ds.labels) if ds.classes[label] == class_name]
        pick = st.slider("Which image", 1, len(indices), 1, key=f"{key}-idx") if len(indices) > 1 else 1
        i = indices[pick - 1]
        return ds[i][0], f"{class_name} · {ds.names[i]}"
    if source == "Sample photo":
        photos = sample_photos()
        name = st.selectbox("Photo (from scikit-image)", list(photos), key=f"{key}-photo")
        return photos[name], name
    upload = st.file_uploader("An image", type=sorted(core_data.IMAGE_EXTENSIONS), key=f"{key}-upload")
    if upload is None:
        return None, ""
    try:
        return core_data.open_image(upload.getvalue(), upload.name), upload.name
    except UserInputError as exc:
        st.error(str(exc))
        return None, ""
