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
from core.training import TrainConfig

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


def preset_freeze(strategy: str, groups: list[str]) -> list[str]:
    """Which groups a preset strategy keeps frozen (the head always trains)."""
    body = [g for g in groups if g != "head"]
    if strategy == "Feature extraction":
        return body
    if strategy == "Fine-tune the last stage":
        return body[:-2] if len(body) > 2 else body[:-1]
    return []


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
        ss.model_choice = ModelChoice(freeze=preset_freeze("Feature extraction", groups))
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
