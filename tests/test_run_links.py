"""Run links: what a link may carry, and what opening one lets a browser do."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.runs import is_run_id, new_run_id

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.mark.parametrize("text", ["0123456789abcdef\n", "0123456789abcdef\r\n", " 0123456789abcdef",
                                  "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "", None])
def test_only_sixteen_lowercase_hex_characters_make_a_run_id(text):
    assert not is_run_id(text)


def test_new_run_ids_are_run_ids():
    assert is_run_id(new_run_id()) and is_run_id("0123456789abcdef")


@pytest.mark.parametrize("bad", ["0123456789abcdef\n", "../../etc", "not-a-run"])
def test_an_invalid_run_link_is_cleared_from_the_address_with_a_note(bad):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = bad
    at.run()
    assert not at.exception
    assert "run" not in at.query_params
    assert at.session_state.current_run is None
    assert any("run id is not valid" in w.value for w in at.warning)
    at.run()  # said once, not on every rerun
    assert not any("run id is not valid" in w.value for w in at.warning)


@pytest.mark.parametrize("page", ["data", "model", "train", "features", "saliency", "domain_shift", "evaluate",
                                  "use_model"])
def test_a_page_opened_first_runs_through_app_py(page):
    """A fresh session whose first run is a page's link (as after a server start) gets the whole app."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    assert "train_config" in at.session_state and "owner" in at.session_state
    assert any(c.value.startswith("Device:") for c in at.sidebar.caption)  # app.py's sidebar ran
    assert len(at.title) == 1  # the page drew once, not twice
