"""What the page tests share: the app under AppTest, its pages, finding elements, waiting for a run.

Import it as ``from tests.app_pages.pages_helpers import ...`` (pytest.ini puts the repository on the path).
"""

import os
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

# Another folder's app.py (with the same pages) can be tried by setting TRANSFER_LAB_APP.
APP = os.environ.get("TRANSFER_LAB_APP") or str(Path(__file__).resolve().parents[2] / "app.py")
ENDED = ("finished", "failed", "cancelled", "diverged")


def texts(elements) -> list:
    return [e.value for e in elements]


def messages(at) -> list[str]:
    """Every success, warning, error and info box, in that order."""
    return texts(at.success) + texts(at.warning) + texts(at.error) + texts(at.info)


def widget(elements, label: str):
    """The first element whose label starts with ``label``."""
    return next(e for e in elements if e.label.startswith(label))


def button(at, label: str):
    return widget(at.button, label)


def charts(at) -> list[str]:
    """Every Plotly chart's JSON spec (titles included), in page order."""
    return [c.proto.spec for c in at.get("plotly_chart")]


def fresh_app(timeout: float = 180, query: dict | None = None, state: dict | None = None) -> AppTest:
    """The app run once, on its first page, with ``query`` in the address bar and ``state`` in the session."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    if query:
        at.query_params.update(query)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def open_page(at, page: str):
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def wait_for(at, condition, timeout: float = 240) -> None:
    """Rerun the page (training and analyses run elsewhere) until ``condition(at)`` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        at.run()
        assert not at.exception, at.exception
        if condition(at):
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out; the page shows {messages(at)}")


def run_status(at) -> str | None:
    """The Train page's "Run <id> — <status>" heading, if it shows one."""
    return next((s for s in texts(at.subheader) if s.startswith("Run ")), None)


def wait_for_run(at, timeout: float = 420) -> str:
    """Rerun the Train page until its run has ended; its status heading. Generous: CI is a busy machine."""
    wait_for(at, lambda at: any(word in (run_status(at) or "") for word in ENDED), timeout)
    return run_status(at)


def train(at, epochs: int = 1) -> str:
    """Train the current data on the Train page for ``epochs`` and wait until it finished; the run's id."""
    open_page(at, "train")
    at.number_input[0].set_value(epochs).run()
    next(b for b in at.button if b.label == "Train").click().run()
    assert not at.error, texts(at.error)
    status = wait_for_run(at)
    assert "finished" in status, status
    return at.session_state.current_run
