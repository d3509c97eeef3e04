"""Background work a page starts and follows: a session's task per result panel, and ``follow``, the
one way a page redraws something that is still going."""

from __future__ import annotations

import streamlit as st

from core.runs.tasks import Task
from pages.ui.text import plain

__all__ = ["stored_result", "store_result", "start_task", "task_result", "follow"]


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
    (a ``core.runs.tasks.Task``: the page stays responsive, shows progress and can stop it). An earlier
    task under ``name`` that is still running is stopped: only the newest one is shown."""
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
