"""Long jobs of the pages run as tasks (the page stays responsive and shows the result when done),
and each session keeps its own bounded cache of models."""

from dataclasses import replace

import torch
from streamlit.testing.v1 import AppTest

from core.runs.jobs import get_job
from pages.ui.models import ModelCache
from tests.app_pages.pages_helpers import APP, button, charts, open_page, texts


def finish(at, name):
    """Wait for the session's task ``name`` to end, then draw the page as the next poll would."""
    assert at.session_state[name]["value"].join(300)
    at.run()
    assert not at.exception, at.exception


def test_a_learning_rate_sweep_the_app_cannot_run_says_why_and_draws_no_curve(tmp_path):
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    broken = tmp_path / "mine.pt"
    broken.write_bytes(b"this is not a weights file")
    at.session_state.model_choice = replace(at.session_state.model_choice, weights_path=str(broken),
                                            weights_name="mine.pt")
    open_page(at, "evaluate")
    button(at, "Find a learning rate").click().run()
    assert not at.exception
    sweep = get_job(at.session_state.lr_finder["value"]["run_id"])  # a run in a worker process
    assert sweep.join(300)
    at.run()
    assert not at.exception, at.exception
    assert sweep.snapshot().status == "failed"
    errors = " ".join(texts(at.error))
    assert "mine.pt" in errors and "crashed" not in errors  # the file's own problem, in words
    assert not any("Learning-rate range test" in spec for spec in charts(at))
    assert not button(at, "Find a learning rate").disabled  # and it can be tried again


def test_stop_on_the_evaluate_page_ends_a_learning_rate_sweep_and_it_can_be_run_again():
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    open_page(at, "evaluate")
    button(at, "Find a learning rate").click().run()
    sweep = get_job(at.session_state.lr_finder["value"]["run_id"])
    button(at, "Stop").click().run()  # the page's Stop, while the sweep waits or sweeps
    assert sweep.join(30), "the sweep went on after Stop"
    at.run()
    assert not at.exception and not at.error, texts(at.error)
    assert sweep.snapshot().status == "cancelled"
    assert any("stopped before it finished" in s for s in texts(at.info))
    assert not any("Learning-rate range test" in spec for spec in charts(at))
    assert not button(at, "Find a learning rate").disabled


def test_the_sanity_check_runs_as_a_task_and_its_chart_appears_when_it_is_done():
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    open_page(at, "saliency")
    at.multiselect(key="sanity-methods").set_value(["gradient"]).run()
    button(at, "Run the sanity check").click().run()
    assert not at.exception and not at.error, texts(at.error)
    task = at.session_state.sanity["value"]
    finish(at, "sanity")
    assert task.snapshot().status == "finished", task.snapshot().message
    assert any("rank correlation" in spec for spec in charts(at))
    result, names = task.result
    assert len(result.similarity["gradient"]) == len(names)  # one point per randomised group


def _session_script():
    import streamlit as st

    from pages.ui.models import run_models

    model = run_models(None).after
    if st.session_state.get("mine") is None:
        st.session_state.mine = model
        if st.session_state.get("person") == "first":
            model.train()  # what one person's analysis might leave behind
            model.register_forward_hook(lambda *args: None)


def test_two_sessions_never_share_a_model_nor_its_hooks_and_modes():
    first, second = AppTest.from_function(_session_script), AppTest.from_function(_session_script)
    first.session_state["person"] = "first"
    first.run(timeout=120)
    second.run(timeout=120)
    assert not first.exception and not second.exception
    mine, theirs = first.session_state.mine, second.session_state.mine
    assert mine is not theirs
    assert not set(map(id, mine.parameters())) & set(map(id, theirs.parameters()))
    assert mine.training and mine._forward_hooks  # the first person's changes…
    assert not theirs.training and not theirs._forward_hooks  # …never reach the second's model
    first.run(timeout=120)  # the same session gets its own model back from its cache
    assert first.session_state.mine is mine


def test_the_model_cache_drops_the_least_recently_used_model_first():
    cache, built = ModelCache(slots=3), []

    def build(name):
        def make():
            built.append(name)
            return torch.nn.Linear(1, 1)
        return make

    a = cache.get("a", build("a"))
    cache.get("pair", build("pair"), weight=2)  # a run's before and after
    assert cache.get("a", build("a")) is a and built == ["a", "pair"]  # kept, and now the most recent
    cache.get("b", build("b"))  # four models: the least recently used ("pair") goes
    assert cache.keys() == ["a", "b"]
    cache.get("pair", build("pair"), weight=2)  # back: "a" is now the oldest, and goes
    assert cache.keys() == ["b", "pair"] and built == ["a", "pair", "b", "pair"]
    big = ModelCache(slots=1)
    big.get("pair", build("pair"), weight=2)
    assert big.keys() == ["pair"]  # a value bigger than the cache is still kept, alone
