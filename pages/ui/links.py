"""Links that carry a setup, on the UI side: read the address bar once, keep it in step, build links.

core.links parses and checks; this module only moves values between ``st.query_params`` and the
session. It writes only its own keys (``core.links.KEYS``): the owner, run and token parameters
belong to ``init_session`` and are left as they are.
"""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from core import links, models
from pages.ui.text import plain
from pages.ui.workspace import DEMO_LABEL, demo, discriminative_spread, workspace

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
    return workspace().is_locked(setting)


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


def apply_settings(settings: dict) -> list[str]:
    """Make ``settings`` (as core.links.decode gives them) this person's, through their workspace:
    the data, the model choice, the strategy's preset, then the link's own training settings and the
    pages' method choices. Settings the session's link locks stay as they are (a lesson's "try next"
    link never unlocks a teacher's choice); the names refused."""
    ws, refused = workspace(), []
    locks = ws.locks
    if "data" in settings or "per_class" in settings:
        look = settings.get("data", links.DEFAULTS["data"])
        if not ws.set_dataset(demo(look, settings.get("per_class", links.DEFAULTS["per_class"])),
                              f"{DEMO_LABEL} ({look} look)"):
            refused.append("data")
    refused += ws.change(**{k: settings[k] for k in ("backbone", "pretrained") if k in settings})
    strategy = settings.get("strategy") or ("custom" if "freeze" in settings or "lr_mult" in settings else None)
    if strategy and ws.choose_strategy(STRATEGY_LABELS[strategy]) is None:
        refused.append("strategy")
    changes = {field: settings[key] for key, field in links.TRAINING_KEYS.items() if key in settings}
    if "freeze" in settings:
        changes["freeze"] = settings["freeze"]
    if "lr_mult" in settings:
        changes["lr_multipliers"] = settings["lr_mult"]
    refused += ws.change(**changes)
    for key in PAGE_CHOICES:
        if key in settings and key not in locks:
            remember_choice(key, settings[key])
    return refused


def show_link_notes() -> None:
    """Say once what in the link could not be used (the app opens as usual)."""
    notes = st.session_state.pop("_link_notes", None)
    if notes:
        # a note quotes the link, which anyone can write: its text must not become a link or an image
        st.info("Some of this link's settings were not used:\n\n" + "\n".join(f"- {plain(n)}" for n in notes),
                icon=":material/link:")


def _demo_settings() -> dict:
    """``data`` and ``per_class`` when the current dataset is an untouched demo set, else nothing."""
    ws = workspace()
    for look in ("source", "target"):
        if ws.dataset_label == f"{DEMO_LABEL} ({look} look)" and len(ws.dataset.classes):
            per_class = len(ws.dataset) // len(ws.dataset.classes)
            if 5 <= per_class <= 60 and demo(look, per_class).fingerprint == ws.dataset.fingerprint:
                return {"data": look, "per_class": per_class}
    return {}


def current_settings() -> dict:
    """This person's setup in core.links' terms."""
    ws = workspace()
    mc, cfg = ws.model, ws.config
    strategy = STRATEGY_CODES.get(mc.strategy, "custom")
    settings = {
        **_demo_settings(),
        "backbone": mc.backbone, "pretrained": mc.pretrained, "strategy": strategy,
        "freeze": list(mc.freeze) if strategy == "custom" else None,
        "lr_mult": dict(mc.lr_multipliers) if strategy in ("custom", "discriminative") else {},
        **{key: getattr(cfg, field) for key, field in links.TRAINING_KEYS.items()},
        "lock": sorted(ws.locks), "hide": list(st.session_state.get("link_hide", [])),
    }
    if strategy == "discriminative" and mc.lr_multipliers == discriminative_spread(models.group_names(mc.backbone)):
        settings["lr_mult"] = {}  # the Model page's default spread: the strategy alone says it
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
