"""Run links: what a link may carry, and what opening one lets a browser do."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.runs import is_run_id, new_run_id

APP = str(Path(__file__).resolve().parents[2] / "app.py")


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


def open_train_page(at):
    at.switch_page("pages/train.py")
    at.run()
    assert not at.exception, at.exception
    return at


def test_a_shared_run_link_opens_a_running_run_read_only(monkeypatch):
    """The owner's link, even one carrying the old ?u=<owner>, gives a stranger no Stop and no runs list."""
    from core.runs.jobs import get_job

    owner = AppTest.from_file(APP, default_timeout=120)
    owner.run()
    owner.switch_page("pages/model.py")
    owner.run()
    [r for r in owner.radio if r.label == "Strategy"][0].set_value("Fine-tune all").run()
    open_train_page(owner)
    owner.number_input[0].set_value(50).run()  # long enough to still be going while the stranger looks
    [b for b in owner.button if b.label == "Train"][0].click().run()
    run_id = owner.session_state.current_run
    job = get_job(run_id)
    try:
        owner.run()
        assert any(b.label == "Stop" for b in owner.button)

        # the link as it is shared now, and as links carried the owner before
        for link in ({"run": run_id}, {"run": run_id, "u": owner.session_state.owner}):
            stranger = AppTest.from_file(APP, default_timeout=120)
            for key, value in link.items():
                stranger.query_params[key] = value
            stranger.run()
            open_train_page(stranger)
            assert stranger.session_state.owner != owner.session_state.owner
            assert "u" not in stranger.query_params and stranger.query_params["run"] == run_id
            assert any(run_id in s for s in texts(stranger.subheader))
            assert not job.snapshot().done
            assert not any(b.label == "Stop" for b in stranger.button)
            assert not any(s == "Your runs" for s in texts(stranger.subheader))
            assert any("shared link" in c for c in texts(stranger.caption))
    finally:
        job.cancel()
        assert job.join(120)


def texts(elements):
    return [e.value for e in elements]
