"""Session state and small helpers shared by the pages (the only UI module that is not a page)."""

from __future__ import annotations

import re
import runpy
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from core import backbones, data
from core.devices import describe_device, pick_device
from core.jobs import get_job, snapshot_of
from core.runs import RunStore, is_run_id
from core.settings import get_settings
from core.training import TrainConfig, strategy_config
from core.uploads import UploadStore

DEMO_LABEL = "Demo shapes"
APP_SCRIPT = Path(__file__).resolve().parent.parent / "app.py"
_THROUGH_APP = "_page_reached_through_app"


def run_page(navigation) -> None:
    """app.py's last step: run the page st.navigation picked, marked as reached through app.py."""
    st.session_state[_THROUGH_APP] = True
    navigation.run()


def bootstrap() -> None:
    """The first call of every page: make sure app.py ran first in this script run.

    Beside a pages/ folder, Streamlit starts in its automatic multipage mode and stays there until
    some session runs app.py's st.navigation (streamlit/streamlit#9624). So the first request after
    a server start, when it is a link to a page, runs that page's file alone: no init_session(),
    and a sidebar listing the raw files of pages/. Handing over to app.py here gives that request
    the real app: app.py initialises the session, calls st.navigation (which ends the automatic
    mode for the whole server) and runs this page again, this time through it.
    """
    if st.session_state.pop(_THROUGH_APP, False):
        return
    runpy.run_path(str(APP_SCRIPT), run_name="__main__")
    st.stop()  # the page has been drawn, through app.py; nothing more to do in this run

# Characters that Markdown, Streamlit's directives (:red[…], :material/…:, emoji :…:) or KaTeX
# ($…$) give a meaning wherever they stand. A backslash makes each one literal (CommonMark).
_MARKDOWN_ANYWHERE = re.compile(r"([\\`*_{}\[\]<>$:~&|])")
# …and those that mean something only at the start of a line: a heading, a quote, a list item.
_MARKDOWN_LINE_START = re.compile(r"^(\s*)([#>+\-=]|\d+(?=[.)]))")
_BARE_LINK = re.compile(r"(?i)\b(www)\.")  # GFM turns "www.x.org" into a live link


def plain(text) -> str:
    """User-supplied text (class, file and dataset names) made safe to put into Markdown: it shows
    exactly as typed, never as bold, colour, maths, a link or an image."""
    # A line break inside a name would start a new Markdown block (a heading, a list).
    text = " ".join(str(text).splitlines())
    text = _MARKDOWN_ANYWHERE.sub(r"\\\1", text)
    text = _BARE_LINK.sub(r"\1\\.", text)

    def literal(m: re.Match) -> str:
        if m.group(2)[0].isdigit():  # "1. " starts a list: the dot after the number is what to escape
            return f"{m.group(1)}{m.group(2)}\\"
        return f"{m.group(1)}\\{m.group(2)}"

    return _MARKDOWN_LINE_START.sub(literal, text)


@dataclass
class ModelChoice:
    """What the Model page decided, read by the Train page."""

    backbone: str = backbones.DEFAULT_BACKBONE
    pretrained: bool = True
    weights_path: str | None = None
    weights_name: str | None = None  # the person's own name for the file at weights_path
    freeze: list[str] = field(default_factory=list)
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    strategy: str = "Feature extraction"
    unfreeze_every: int = 0
    train_bn: bool = False


def run_store() -> RunStore:
    """The server's one run store (it holds no per-person state in memory), for the data folder
    the settings name now."""
    settings = get_settings()
    return _run_store(str(settings.data_dir), settings.disk_cap_mb)


@st.cache_resource
def _run_store(data_dir: str, cap_mb: int) -> RunStore:
    store = RunStore(data_dir, cap_mb=cap_mb)
    # Once per server start: runs a killed server left "running" say so, instead of forever.
    store.mark_interrupted()
    return store


@st.cache_resource
def upload_store() -> UploadStore:
    """Uploaded weights files, kept by content hash (shared: equal files are stored once)."""
    return UploadStore(get_settings().data_dir)


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


# --- charts that fit a projector and follow the theme ---------------------------------------------

# A plot area and empty cells in a colour that reads on Streamlit's light and dark themes alike.
NEUTRAL_PLOT = "rgba(128, 128, 128, 0.12)"


def fading_scale(rgb: tuple[int, int, int]) -> list:
    """A colour scale from transparent (zero: the page's own background shows) to ``rgb``."""
    r, g, b = rgb
    return [[0.0, f"rgba({r},{g},{b},0)"], [1.0, f"rgba({r},{g},{b},1)"]]


def diverging_scale(low=(33, 102, 172), high=(178, 24, 43)) -> list:
    """Blue below zero, red above, transparent at zero: an all-zero map is the page's background."""
    return [[0.0, "rgba({},{},{},1)".format(*low)], [0.5, "rgba({},{},{},0)".format(*low)],
            [0.5, "rgba({},{},{},0)".format(*high)], [1.0, "rgba({},{},{},1)".format(*high)]]


def wrap_title(text: str, width: int = 34) -> tuple[str, int]:
    """A chart title broken into lines of at most ``width`` characters, and how many lines.

    Plotly never wraps a title: in a column of a 1024 px projector a long one is simply cut.
    """
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "<br>".join(lines), len(lines)


def fit_title(fig, width: int = 34):
    """Wrap ``fig``'s title to ``width`` characters a line and make room above the plot for it."""
    text = fig.layout.title.text
    if text:
        wrapped, n = wrap_title(text, width)
        top = (fig.layout.margin.t or 40) + 20 * (n - 1)
        fig.update_layout(title=dict(text=wrapped), margin=dict(t=top),
                          height=(fig.layout.height or 0) + 20 * (n - 1) or None)
    return fig


def plan_figure(plan: list[dict], title: str = "Which groups train in which epoch"):
    """A timeline: layer groups (rows, input at the bottom) by epoch, coloured by learning rate."""
    import plotly.graph_objects as go

    groups = list(plan[0]) if plan else []
    z = [[epoch[g] if epoch[g] > 0 else None for epoch in plan] for g in groups]
    text = [[f"lr × {epoch[g]:.3g}" if epoch[g] > 0 else "frozen" for epoch in plan] for g in groups]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(1, len(plan) + 1)), y=groups, text=text, colorscale=fading_scale((203, 24, 29)), zmin=0,
        hovertemplate="epoch %{x} · %{y}: %{text}<extra></extra>", xgap=2, ygap=2,
        colorbar=dict(title="lr ×"),
    ))
    fig.update_layout(title=title, height=120 + 22 * len(groups), margin=dict(l=0, r=0, t=40, b=0),
                      xaxis=dict(title="epoch", dtick=1), plot_bgcolor=NEUTRAL_PLOT)
    return fit_title(fig, 60)


OWNER_COOKIE = "transfer_lab_owner"


def _cookie(name: str) -> str | None:
    try:
        return st.context.cookies.get(name)
    except Exception:  # no browser behind this session (AppTest, bare mode): no cookies
        return None


def keep_owner_in_browser() -> None:
    """Store this session's owner secret in a cookie, once, so a refresh keeps the person's runs.

    Streamlit reads cookies (st.context.cookies) but cannot set them, so a line of JavaScript does.
    The value is 16 hex digits made here, never text from a request.
    """
    ss = st.session_state
    if ss.pop("owner_cookie_due", False) and is_run_id(ss.owner):
        st.html(f"<script>document.cookie = '{OWNER_COOKIE}={ss.owner}; path=/; max-age=31536000; "
                "SameSite=Strict';</script>", unsafe_allow_javascript=True)


def owns(record) -> bool:
    """Whether this browser owns ``record``: only then may it stop, export or list it."""
    return record is not None and bool(record.owner) and record.owner == st.session_state.get("owner")


def init_session() -> None:
    """Defaults for a new browser session: the demo set and the offline default backbone."""
    ss = st.session_state
    if "owner" not in ss:
        # Who owns runs here (sees "your runs", stops and exports them) is this browser's secret, kept
        # in a cookie across refreshes and never in a link: anyone can be sent a link.
        kept = _cookie(OWNER_COOKIE)
        ss.owner = kept if is_run_id(kept) else secrets.token_hex(8)
        ss.owner_cookie_due = kept != ss.owner
    if "u" in st.query_params:
        # Older links carried the owner (?u=…): it gave whoever opened them the owner's runs.
        del st.query_params["u"]
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
        if "run" in st.query_params and ss.current_run is None:
            # A mistyped or cut link would otherwise stay in the address bar and fail silently.
            del st.query_params["run"]
            ss.link_note = ("This link's run id is not valid (a run id is 16 characters, 0–9 and a–f), so it was "
                            "removed from the address bar. Check the link you were given.")
    # Page switches clear the address bar's query; put the run on screen back every time, so a
    # refresh or a bookmark finds it.
    if ss.current_run and st.query_params.get("run") != ss.current_run:
        st.query_params["run"] = ss.current_run


def link_notes() -> None:
    """Say once what was wrong with the link this session was opened with."""
    note = st.session_state.pop("link_note", None)
    if note:
        st.warning(note, icon=":material/link_off:")


def current_split():
    ss = st.session_state
    return data.split(ss.dataset, ss.val_fraction, ss.split_seed)


def select_run(run_id: str | None) -> None:
    st.session_state.current_run = run_id
    if run_id:
        st.query_params["run"] = run_id
    elif "run" in st.query_params:
        del st.query_params["run"]


def my_runs(kinds=("train", "multitask")):
    """This browser's runs of these kinds (by its owner secret), newest first: by default the runs
    that train a classifier (one head, or one per task). A DAN comparison, a distillation or a
    meta-training is a run too (``config["kind"]``), shown on its own page, not among these."""
    return [r for r in run_store().list(owner=st.session_state.owner) if r.config.get("kind", "train") in kinds]


def run_status(run_id: str):
    """(snapshot or None, record or None): live state while the run is queued here or a worker
    trains it; a page showing a run keeps the disk cap away from it."""
    store = run_store()
    store.touch(run_id)
    job = get_job(run_id)
    if job is not None:
        return job.snapshot(), store.get(run_id)
    record = store.get(run_id)
    if record is not None and not record.done and record.worker_pid:  # trained by another process
        return snapshot_of(store, run_id), record
    return None, record


def stop_run(run_id: str) -> None:
    """Ask a run to stop: its task when this server queued it, else its folder's worker."""
    job = get_job(run_id)
    job.cancel() if job is not None else run_store().request_stop(run_id)


def run_curves(snap, record) -> tuple[list[dict], tuple, str]:
    """(epochs as dicts, batch losses, message) of a run: live from its snapshot while this server
    follows it, else from its record."""
    if snap is not None:
        return [e.__dict__ for e in snap.epochs], snap.batch_losses, snap.message
    return record.epochs, (), record.message


def run_progress(run_id: str, snap, text, stop_label: str = "Stop", can_stop: bool = True) -> None:
    """A going run's place in the queue, or its progress bar with ``text()``, and its Stop button."""
    if snap.status == "queued":
        st.info(f"Waiting for a free training slot: number {snap.queue_position or 1} in the queue.")
    else:
        st.progress(snap.progress, text=text())
    if can_stop and st.button(stop_label, icon=":material/stop:"):
        stop_run(run_id)


def sidebar(refresh: bool = False) -> None:
    """The sidebar's summary, in one slot. app.py draws it before the page, and a page may change
    what it shows (the Model page's strategy): such a page calls ``sidebar(refresh=True)`` at its
    end, which redraws the same slot, so the sidebar never lags a click behind."""
    ss = st.session_state
    if not refresh:
        with st.sidebar:
            keep_owner_in_browser()
    if not refresh or "_sidebar_slot" not in ss:
        ss["_sidebar_slot"] = st.sidebar.empty()  # a new script run: the old slot is gone
    with ss["_sidebar_slot"].container():
        st.caption(f"Device: **{device_label()}**")
        ds = ss.get("dataset")
        if ds is not None:
            st.caption(f"Data: {plain(ss.dataset_label)} — {len(ds)} images, {len(ds.classes)} classes")
        mc = ss.get("model_choice")
        if mc is not None:
            st.caption(f"Model: {mc.backbone}{'' if mc.pretrained else ' (no pretraining)'} — {mc.strategy}")
        if ss.get("current_run"):
            st.caption(f"Run: `{ss.current_run}`")


def stored_result(name: str, key, running=lambda value: False):
    """A result panel's value kept in session state under ``name`` as {"key": …, "value": …}.

    Returns (value, stale). A result made from other inputs than ``key`` is dropped once it has
    finished, so a panel never shows an earlier selection's numbers as if they were the current
    one's; one still running is returned with stale=True, to be labelled (and stoppable).
    """
    entry = st.session_state.get(name)
    if entry is None:
        return None, False
    if entry["key"] == key:
        return entry["value"], False
    if running(entry["value"]):
        return entry["value"], True
    del st.session_state[name]
    return None, False


def store_result(name: str, key, value) -> None:
    st.session_state[name] = {"key": key, "value": value}


def start_task(name: str, key, body, title: str) -> None:
    """Run ``body(task)`` as this session's background task ``name`` for the inputs ``key``
    (a ``core.tasks.Task``: the page stays responsive, shows progress and can stop it). An earlier
    task under ``name`` that is still running is stopped: only the newest one is shown."""
    from core.tasks import Task

    old = st.session_state.get(name)
    if old is not None and isinstance(old["value"], Task):
        old["value"].cancel()
    task = Task(body, name=name, owner=st.session_state.get("owner", ""))
    task.kind = title  # a crash then reads "The <title> crashed: …"
    store_result(name, key, task.start())


def task_result(name: str, key, title: str):
    """Draw this session's task ``name`` and return its result once it has finished for ``key``.

    While it runs: a progress bar and a Stop button that redraw every second, on their own. When
    it failed: its message; when stopped: a note. Returns None until there is a result to draw.
    """
    task, stale = stored_result(name, key, running=lambda t: not t.done)
    if task is None:
        return None
    snap = task.snapshot()
    if not snap.done:
        if stale:
            st.warning(f"The {title} is still running for an earlier selection; its result will not be shown "
                       "for the choices above. Stop it, or start again.")
        follow(_task_progress, name, title, live=True)
        return None
    if snap.status == "failed":
        st.error(plain(snap.message))
        return None
    if snap.status == "cancelled" or task.result is None:
        st.info(f"The {title} was stopped before it finished. Start it again to see a result.")
        return None
    return task.result


def _panel(draw, args: tuple) -> None:
    ended = f"_ended:{getattr(draw, '__name__', 'panel')}:{args}"
    if draw(*args):
        st.session_state.pop(ended, None)
        return
    # It ended. This rerun drew the ended state; the next one asks for the full rerun that stops the
    # timer. Not both at once: see follow().
    if st.session_state.get(ended):
        del st.session_state[ended]
        st.rerun()
    st.session_state[ended] = True


# the redraw intervals a page may ask for. Both wrap _panel, so at one place on a page they are one
# fragment (Streamlit names a fragment by its function and place); the browser replaces its timer
# when the interval changes.
_live_panels = {every: st.fragment(run_every=every)(_panel) for every in (1.0, 2.0)}


def follow(draw, *args, live: bool, every: float = 1.0) -> None:
    """Draw ``draw(*args)``, which returns True while what it shows is still going: while ``live``
    in a fragment that redraws it every ``every`` seconds (1 or 2), else once.

    When it ends, the fragment draws the ended state once by itself and asks for the full rerun
    that stops its timer a second later, never in the same run. Under load Streamlit can drop every
    message of a run whose ScriptRunner was replaced before the messages went out; a full rerun asked
    for in the same run as the last redraw then lost both, and the page showed "queued" for ever
    while the server dropped its timer's requests for a fragment it no longer had (3 of 20 pages in
    the 20-session load test). Now a lost full rerun leaves the ended state on screen."""
    if live:
        _live_panels[every](draw, args)
    else:
        draw(*args)


def _task_progress(name: str, title: str) -> bool:
    """A task's progress bar and Stop button (``follow``'s ``draw``): True while it runs; once it
    has ended, a full bar that says so (``follow`` then asks for the full rerun that draws the result)."""
    entry = st.session_state.get(name)
    if entry is None:
        return False  # it was cleared (a new selection, a reset): the full rerun draws what replaced it
    task = entry["value"]
    snap = task.snapshot()
    title = f"{title[:1].upper()}{title[1:]}"
    if snap.done:
        st.progress(1.0, text=f"{title}: {snap.status}, drawing the result…")
        return False
    st.progress(snap.progress, text=f"{title}: {snap.phase or 'starting'}… ({snap.seconds:.0f} s)")
    if st.button("Stop", icon=":material/stop:", key=f"{name}-stop"):
        task.cancel()
    return True


def frozen_groups(record) -> list[str]:
    """The layer groups that never trained in a run, read from the run's own saved plan
    (per epoch, group -> learning-rate multiplier; 0 = frozen that epoch). A progressive-
    unfreezing run freezes groups through its plan, not through config["freeze"]."""
    plan = record.config.get("plan") or []
    if not plan:
        return list(record.config.get("freeze", []))
    return [g for g in plan[0] if all(epoch.get(g, 0) <= 0 for epoch in plan)]


def first_trained_epoch(record) -> dict[str, int]:
    """Per layer group, the 1-based epoch it first trained in (groups that never trained absent)."""
    first: dict[str, int] = {}
    for n, epoch in enumerate(record.config.get("plan") or [], start=1):
        for g, multiplier in epoch.items():
            if multiplier > 0:
                first.setdefault(g, n)
    return first


def run_strategy(record) -> str:
    """The strategy a run was trained with, read from its settings (older runs did not name it)."""
    config = record.config
    named = config.get("strategy")
    if named:
        return named
    if config.get("unfreeze_every"):
        return "Progressive unfreezing"
    frozen = set(frozen_groups(record))
    groups = list((config.get("plan") or [{}])[0])
    body = [g for g in groups if g != "head"]
    if body and set(body) <= frozen:
        return "Feature extraction"
    if not frozen and len(set(config.get("lr_multipliers", {}).values())) > 1:
        return "Discriminative learning rates"
    if not frozen:
        return "Fine-tune all"
    return "Fine-tune some layers"


def describe_run(record) -> str:
    """A run's display name: its strategy, its data and when it started, e.g.
    "Feature extraction · Demo shapes (source look) · 03:12:07". Plain text (for selectboxes and
    legends); wrap it in plain() before putting it into Markdown."""
    strategy = run_strategy(record)
    if record.label and not record.label.startswith(f"{record.backbone} "):
        strategy = record.label  # a label the Train page chose says more (e.g. "… from scratch")
    elif not record.pretrained:
        strategy += ", from scratch"
    if record.backbone != backbones.DEFAULT_BACKBONE:
        strategy = f"{record.backbone} · {strategy}"
    started = time.strftime("%H:%M:%S", time.localtime(record.created))
    from core.cli import OWNER

    source = "command line" if record.owner == OWNER else ""
    return " · ".join(part for part in (source, strategy, record.dataset, started) if part)


def chart_text(name) -> str:
    """A user-supplied name (a class, a dataset, a run) as a chart must be given it.

    Plotly reads a small HTML subset in tick labels, legends and hover text (``<b>``, ``<br>``,
    ``<a href>``, ``&amp;``-style entities): a class named ``<b>x</b>`` would show bold. With ``&``,
    ``<`` and ``>`` as entities, which plotly turns back into those characters, it shows as typed.
    """
    return str(name).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def category_axes(fig, *axes: str):
    """Class names are names, even "0".."9": plotly would otherwise read them as numbers and draw
    a numeric axis that skips and merges classes."""
    fig.update_layout(**{axis: dict(type="category") for axis in axes})
    return fig


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


def run_option(record) -> str:
    """A run in a picker: its description and, when it has one, its final validation accuracy."""
    final = record.final()
    accuracy = f" · val acc {final:.0%}" if final is not None and final == final else ""
    return f"{describe_run(record)}{accuracy}"


def finished_runs():
    """This browser's runs with a model, and every run trained from the command line (read-only here)."""
    from core.cli import OWNER

    store = run_store()
    # my_runs leaves out meta-training runs: their head names episode ways ("way 1" …), not classes
    # of any data set (the Few-shot page uses them; the pages that classify a data set cannot)
    runs = sorted(my_runs() + store.list(owner=OWNER), key=lambda r: r.created, reverse=True)
    return [r for r in runs
            if r.status in ("finished", "cancelled", "diverged", "interrupted") and store.has_model(r.id)
            and r.config.get("kind", "train") in ("train", "multitask")]


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


# How many models one session keeps (a run's before/after pair counts as two): enough for a run,
# its pretrained backbone and one more page's model, few enough that a classroom fits in memory.
SESSION_MODEL_SLOTS = 4


class ModelCache:
    """A session's models, least recently used first out once they hold more than ``slots`` models.

    Each session has its own (see ``session_models``): one person's hooks, train/eval modes and
    weights never reach another person's model. Safe to use from a session's worker threads.
    """

    def __init__(self, slots: int = SESSION_MODEL_SLOTS):
        self.slots = max(1, int(slots))
        self._items: OrderedDict = OrderedDict()  # key -> (value, how many models it holds)
        self._lock = threading.Lock()

    def get(self, key, build, weight: int = 1):
        """The value kept under ``key``, or ``build()`` kept there (``weight``: how many models it holds)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        value = build()  # outside the lock: loading a model can take seconds
        with self._lock:
            if key in self._items:  # another thread of this session built it meanwhile
                return self._items[key][0]
            self._items[key] = (value, max(1, int(weight)))
            while len(self._items) > 1 and sum(w for _, w in self._items.values()) > self.slots:
                self._items.popitem(last=False)
            return value

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def keys(self) -> list:
        """The keys kept, least recently used first."""
        with self._lock:
            return list(self._items)


def session_models() -> ModelCache:
    """This session's one model cache."""
    return st.session_state.setdefault("_model_cache", ModelCache())


def session_model(key, build, weight: int = 1):
    """A model (or a value holding ``weight`` models) kept for this session only, built on first use.

    Use a key that says what was loaded (e.g. ``("run", run_id)``): every page shares the cache,
    so two pages asking for the same key get the same object.
    """
    return session_models().get(key, build, weight)


def run_models(run_id: str | None, backbone: str = backbones.DEFAULT_BACKBONE) -> ModelPair:
    """The models to inspect: a run's before and after, or a pretrained backbone alone (kept in
    this session's model cache, so one person's hooks never touch another's model)."""
    if run_id:
        store = run_store()
        store.touch(run_id)  # on screen: the disk cap leaves it alone

        def build():
            after = store.load_model(run_id)
            return ModelPair(store.load_starting_model(run_id), after, after.preprocess, after.layer_groups,
                             after.classes, frozen_groups(store.get(run_id)), True)

        return session_model(("run", run_id), build, weight=2)

    def pretrained():
        bb = backbones.load(backbone)
        return ModelPair(bb.model, bb.model, bb.preprocess, bb.layer_groups, bb.categories, [], False)

    return session_model(("pretrained", backbone), pretrained)


def model_picker(label: str = "Model"):
    """Pick a finished run of this person, or the pretrained default backbone alone."""
    runs = finished_runs()
    options = [None] + [r.id for r in runs]
    names = {r.id: run_option(r) for r in runs}
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
        st.error(plain(exc))
        return None, ""


def sanity_figure(similarity: dict, names: list[str]):
    """The sanity check's curves: rank correlation with the original map as layers are randomised.

    The y-axis fits the data, always showing 0 (no relation) and 1 (unchanged): a rank correlation
    can fall to -1, and a fixed range would hide those points.
    """
    import math

    import plotly.graph_objects as go

    from core import saliency

    fig = go.Figure()
    values = [0.0, 1.0]
    for method, curve in similarity.items():
        fig.add_trace(go.Scatter(x=names[:len(curve)], y=list(curve), mode="lines+markers",
                                 name=saliency.METHOD_LABELS[method][0]))
        values += [float(v) for v in curve if v is not None and not math.isnan(float(v))]
    pad = 0.05 * (max(values) - min(values))
    fig.update_layout(height=320, margin=dict(l=0, r=0, t=30, b=0), yaxis_range=[min(values) - pad, max(values) + pad],
                      yaxis_title="rank correlation with the original map",
                      xaxis_title="randomised from the head down to …")
    return category_axes(fig, "xaxis")


def convergence_note(delta: float, raw) -> str:
    """Integrated Gradients' convergence delta in words: its size relative to the attributions' total.

    The attributions should add up to the score's change from the baseline (black) image to this
    one; the delta is what they miss, in units of that score, so only its size next to the total
    says whether it is small.
    """
    import numpy as np

    total = float(np.sum(raw)) if raw is not None else float("nan")
    if not np.isfinite(total) or abs(total) < 1e-12:
        return f"convergence delta {delta:.3g} (the attributions add up to about 0, so it cannot be judged)"
    share = abs(delta) / abs(total)
    verdict = ("good: the attributions account for the score" if share <= 0.05 else
               "fair" if share <= 0.2 else "large: the map is a rough approximation; more steps would help")
    return f"convergence delta {delta:.3g}, {share:.0%} of the attributions' total {total:.3g} — {verdict}"


if __name__ == "__main__":  # opened as a page of the automatic menu (/_shared): it is not a page
    bootstrap()
