"""One browser session: the handover to app.py, who owns its runs, its defaults, its data split, the
run on screen and the sidebar's summary."""

from __future__ import annotations

import runpy
import secrets
from pathlib import Path

import streamlit as st

from core import data
from core.runs.store import is_run_id
from pages.ui.models import device_label
from pages.ui.runs import run_store, run_strategy
from pages.ui.text import plain
from pages.ui.workspace import DEMO_LABEL, demo, init_workspace, workspace

__all__ = ["DEMO_LABEL", "APP_SCRIPT", "run_page", "bootstrap", "OWNER_COOKIE", "keep_owner_in_browser", "owns",
           "init_session", "link_notes", "current_split", "split_key", "select_run", "sidebar", "demo"]

APP_SCRIPT = Path(__file__).resolve().parents[2] / "app.py"
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


OWNER_COOKIE = "transfer_lab_owner"


def _cookie(name: str) -> str | None:
    try:
        return st.context.cookies.get(name)
    except Exception:  # no browser behind this session (AppTest, bare mode): no cookies
        return None


def keep_owner_in_browser() -> None:
    """Store this session's owner secret in a cookie, once, so a refresh keeps the person's runs.

    Streamlit reads cookies (st.context.cookies) but cannot set them, so a line of JavaScript does.
    The value is 16 hex digits made here, never text from a request. Tabs opened together all start
    without the cookie, each with an owner of its own: the first tab to draw sets the cookie, and a
    tab that finds it already set by another reloads, which starts its session again with the
    browser's owner. So one browser is one person (its runs, its share of the queue) before anyone
    can click; a private window has a cookie jar of its own, and is another person.
    """
    ss = st.session_state
    if ss.pop("owner_cookie_due", False) and is_run_id(ss.owner):
        # Tabs that start together may all find no cookie and all set one: the last write wins, so
        # each tab looks again a moment later and the ones that lost reload with the winner's owner.
        st.html(f"""<script>(() => {{
  const mine = '{ss.owner}';
  const kept = () => (document.cookie.match(/(?:^|;\\s*){OWNER_COOKIE}=([0-9a-f]{{16}})(?:;|$)/) || [])[1];
  const follow = () => {{ const now = kept(); if (now && now !== mine) window.location.reload(); }};
  if (kept()) {{ follow(); return; }}
  document.cookie = '{OWNER_COOKIE}=' + mine + '; path=/; max-age=31536000; SameSite=Strict';
  setTimeout(follow, 300);
  setTimeout(follow, 1500);
}})();</script>""", unsafe_allow_javascript=True)


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
    init_workspace()
    # Page switches clear the address bar's query; put the run on screen back every time, so a
    # refresh or a bookmark finds it.
    run_id = workspace().current_run
    if run_id and st.query_params.get("run") != run_id:
        st.query_params["run"] = run_id


def link_notes() -> None:
    """Say once what was wrong with the link this session was opened with."""
    note = st.session_state.pop("link_note", None)
    if note:
        st.warning(note, icon=":material/link_off:")


def current_split():
    ss = st.session_state
    return data.split(workspace().dataset, ss.val_fraction, ss.split_seed)


def split_key() -> tuple:
    """What the session's split is made of: a result computed on it belongs to these inputs."""
    ss = st.session_state
    return workspace().dataset.fingerprint, ss.val_fraction, ss.split_seed


def select_run(run_id: str | None) -> None:
    workspace().select_run(run_id)
    if run_id:
        st.query_params["run"] = run_id
    elif "run" in st.query_params:
        del st.query_params["run"]


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
    ws = workspace()
    with ss["_sidebar_slot"].container():
        st.caption(f"Device: **{device_label()}**")
        st.caption(f"Data: {plain(ws.dataset_label)} — {len(ws.dataset)} images, {len(ws.dataset.classes)} classes")
        mc = ws.model
        st.caption(f"Next run: {mc.backbone}{'' if mc.pretrained else ' (no pretraining)'} — {mc.strategy}")
        if ws.current_run:
            # the run on screen says its own strategy: it may not be the one the next run will use
            record = _run_record(ws.current_run)
            about = f" — {plain(run_strategy(record))}" if record is not None else ""
            st.caption(f"Run on screen: `{ws.current_run}`{about}")


def _run_record(run_id: str):
    try:
        return run_store().get(run_id)
    except Exception:  # a run folder another process is writing: the sidebar never breaks a page
        return None
