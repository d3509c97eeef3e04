"""Links that carry a setup, on the UI side: read the address bar once, keep it in step, build links.

core.links parses and checks; this module only moves values between ``st.query_params`` and the
session. It writes only its own keys (``core.links.KEYS``): the owner, run and token parameters
belong to ``init_session`` and are left as they are.
"""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from core import links, models
from core.train.base import TrainConfig
from pages.ui.models import preset_freeze
from pages.ui.session import DEMO_LABEL, demo
from pages.ui.text import plain

STRATEGY_LABELS = {
    "feature_extraction": "Feature extraction",
    "last_stage": "Fine-tune the last stage",
    "full": "Fine-tune all",
    "discriminative": "Discriminative learning rates",
    "progressive": "Progressive unfreezing",
    "custom": "Custom",
}
STRATEGY_CODES = {label: code for code, label in STRATEGY_LABELS.items()}
PAGE_CHOICES = ("sal_methods", "kernel", "picture")


def locked(setting: str) -> bool:
    """True when this session's link locks ``setting`` (a key of core.links.LOCKABLE)."""
    return setting in st.session_state.get("link_lock", ())


def hidden(section: str) -> bool:
    """True when this session's link hides ``section`` (a key of core.links.SECTIONS)."""
    return section in st.session_state.get("link_hide", ())


def page_choice(key: str):
    """A page's method choice (Saliency methods, Domain shift kernel and picture) for its widget."""
    return st.session_state.setdefault("link_choices", {}).get(key, links.DEFAULTS[key])


def remember_choice(key: str, value) -> None:
    st.session_state.setdefault("link_choices", {})[key] = list(value) if isinstance(value, list) else value


def apply_link() -> None:
    """Once per session: the settings in the link this session was opened with."""
    ss = st.session_state
    if ss.get("_link_applied"):
        return
    ss._link_applied = True
    settings, notes = links.decode(st.query_params.to_dict())
    apply_settings(settings)
    ss.link_lock = settings.get("lock", [])
    ss.link_hide = settings.get("hide", [])
    ss._link_notes = notes


def apply_settings(settings: dict) -> None:
    """Make ``settings`` (as core.links.decode gives them) this session's: the data, the model
    choice, the training settings and the pages' method choices. Settings the session's link
    locks are left as they are (a lesson's "try next" link never unlocks a teacher's choice)."""
    ss = st.session_state
    locks = set(ss.get("link_lock", ()))
    settings = {k: v for k, v in settings.items()
                if k not in locks and not (k in ("lr_mult", "unfreeze_every") and "freeze" in locks)
                and not (k == "per_class" and "data" in locks)}
    if "data" in settings or "per_class" in settings:
        look = settings.get("data", links.DEFAULTS["data"])
        ss.dataset = demo(look, settings.get("per_class", links.DEFAULTS["per_class"]))
        ss.dataset_label, ss.load_report = f"{DEMO_LABEL} ({look} look)", None
    mc = ss.model_choice
    if "backbone" in settings:
        mc.backbone, mc.weights_path = settings["backbone"], None
    mc.pretrained = settings.get("pretrained", mc.pretrained)
    strategy = settings.get("strategy") or ("custom" if "freeze" in settings else None)
    if strategy or "backbone" in settings:
        mc.strategy = STRATEGY_LABELS[strategy] if strategy else mc.strategy
        mc.freeze = preset_freeze(mc.strategy, models.group_names(mc.backbone))
        mc.lr_multipliers = {}
    mc.freeze = settings.get("freeze", mc.freeze)
    mc.lr_multipliers = settings.get("lr_mult", mc.lr_multipliers)
    mc.unfreeze_every = settings.get("unfreeze_every", mc.unfreeze_every)
    if mc.strategy == STRATEGY_LABELS["progressive"]:
        mc.unfreeze_every = max(1, mc.unfreeze_every)
    cfg = ss.train_config.to_dict()
    ss.train_config = TrainConfig(**{
        **cfg, "epochs": settings.get("epochs", cfg["epochs"]), "lr": settings.get("lr", cfg["lr"]),
        "seed": settings.get("seed", cfg["seed"]), "image_size": settings.get("size", cfg["image_size"]),
        "freeze": list(mc.freeze), "lr_multipliers": dict(mc.lr_multipliers), "unfreeze_every": mc.unfreeze_every})
    for key in PAGE_CHOICES:
        if key in settings:
            remember_choice(key, settings[key])


def show_link_notes() -> None:
    """Say once what in the link could not be used (the app opens as usual)."""
    notes = st.session_state.pop("_link_notes", None)
    if notes:
        # a note quotes the link, which anyone can write: its text must not become a link or an image
        st.info("Some of this link's settings were not used:\n\n" + "\n".join(f"- {plain(n)}" for n in notes),
                icon=":material/link:")


def _demo_settings() -> dict:
    """``data`` and ``per_class`` when the current dataset is an untouched demo set, else nothing."""
    ss = st.session_state
    for look in ("source", "target"):
        if ss.get("dataset_label") == f"{DEMO_LABEL} ({look} look)" and len(ss.dataset.classes):
            per_class = len(ss.dataset) // len(ss.dataset.classes)
            if 5 <= per_class <= 60 and demo(look, per_class).fingerprint == ss.dataset.fingerprint:
                return {"data": look, "per_class": per_class}
    return {}


def current_settings() -> dict:
    """This session's setup in core.links' terms."""
    ss = st.session_state
    mc, cfg = ss.model_choice, ss.train_config
    strategy = STRATEGY_CODES.get(mc.strategy, "custom")
    settings = {
        **_demo_settings(),
        "backbone": mc.backbone, "pretrained": mc.pretrained, "strategy": strategy,
        "freeze": list(mc.freeze) if strategy == "custom" else None,
        "lr_mult": dict(mc.lr_multipliers) if strategy == "custom" else {},
        "unfreeze_every": mc.unfreeze_every if strategy == "progressive" else 0,
        "epochs": cfg.epochs, "lr": cfg.lr, "seed": cfg.seed, "size": cfg.image_size,
        "lock": list(ss.get("link_lock", [])), "hide": list(ss.get("link_hide", [])),
    }
    for key in PAGE_CHOICES:
        settings[key] = page_choice(key)
    return settings


def sync_link() -> None:
    """Put this session's setup in the address bar, so a refresh or a copied link keeps it."""
    try:
        params = links.encode(current_settings())
    except Exception:  # the address bar is a convenience: it must never break a page
        return
    for key in links.KEYS:
        if key in params:
            if st.query_params.get(key) != params[key]:
                st.query_params[key] = params[key]
        elif key in st.query_params:
            del st.query_params[key]


def classroom_link_ui() -> None:
    """The sidebar's link builder: this setup, with settings to lock and sections to hide."""
    ss = st.session_state
    if ss.get("link_lock") or ss.get("link_hide"):
        fixed = [links.LOCKABLE[k] for k in ss.get("link_lock", [])]
        st.caption("Set by your teacher's link" + (f": {', '.join(fixed)}." if fixed else "."))
    with st.expander("Classroom link", icon=":material/school:"):
        st.caption("Set things up on the pages first: the link carries the demo data, the model, how it trains "
                   "and the method choices. Students who open it get the same setup.")
        lock = st.multiselect("Lock for students (shown, not editable)", list(links.LOCKABLE),
                              format_func=links.LOCKABLE.get, key="classroom-lock")
        hide = st.multiselect("Hide sections", list(links.SECTIONS), format_func=links.SECTIONS.get,
                              key="classroom-hide")
        params = links.encode({**current_settings(), "lock": lock, "hide": hide})
        try:
            base = (st.context.url or "").split("?")[0]
        except Exception:  # older Streamlit: a relative link still works when pasted after the address
            base = ""
        st.code(base + ("?" + urlencode(params, safe=",:") if params else ""), language=None, wrap_lines=True)
        if not _demo_settings():
            st.caption("Your own dataset cannot travel in a link: students start on the demo set.")
