"""The Domain shift page, driven through Streamlit's AppTest (no browser)."""

import pytest

from tests.app_pages.pages_helpers import fresh_app, messages, open_page, texts, wait_for


@pytest.fixture
def page():
    return open_page(fresh_app(), "domain_shift")


def has_verdict(at):
    return any("at this layer" in m for m in messages(at))


def test_the_demo_source_and_target_looks_differ_with_a_verdict_and_every_chart(page):
    assert texts(page.title) == ["Domain shift"]
    wait_for(page, has_verdict)
    assert "The two sets differ at this layer (p < 0.001)." in texts(page.warning)
    assert not page.error
    specs = " ".join(chart.proto.spec for chart in page.get("plotly_chart"))
    for title in ("random relabellings", "along the depth", "features in 2-D", "Kernel matrix"):
        assert title in specs
    assert "Proxy A-distance" in [m.label for m in page.metric]


def test_two_halves_of_one_dataset_show_no_evidence_of_a_difference(page):
    [r for r in page.radio if r.label == "Compare"][0].set_value("Two halves of one dataset (control)").run()
    assert not page.exception
    wait_for(page, has_verdict)
    assert any(m.startswith("No evidence of a difference at this layer") for m in texts(page.success))


def test_adaptation_trains_plain_and_dan_side_by_side(page):
    wait_for(page, has_verdict)
    [n for n in page.number_input if n.label == "Epochs"][0].set_value(2).run()
    [s for s in page.selectbox if s.label == "Input size (px)"][0].set_value(64).run()
    [b for b in page.button if b.label == "Train plain and DAN"][0].click().run()
    assert not page.error, texts(page.error)
    # generous: both arms train in a worker process, on a busy CI machine
    wait_for(page, lambda at: bool(at.error) or "Target accuracy" in [m.label for m in at.metric], timeout=480)
    assert not page.error, texts(page.error)
    labels = [m.label for m in page.metric]
    assert labels.count("Target accuracy") == 2 and labels.count("MMD² at the head input") == 2
    assert "**Plain fine-tuning (λ = 0)**" in texts(page.markdown) and "**DAN (λ = 1)**" in texts(page.markdown)


def test_the_adaptation_settings_survive_a_visit_to_another_page(page):
    """A finished comparison is shown only for the settings that made it: they must not reset."""
    [n for n in page.number_input if n.label == "Epochs"][0].set_value(2).run()
    [s for s in page.selectbox if s.label == "Input size (px)"][0].set_value(64).run()
    page.switch_page("pages/data.py").run()
    page.switch_page("pages/domain_shift.py").run()
    assert not page.exception, page.exception
    assert [n.value for n in page.number_input if n.label == "Epochs"] == [2]
    assert [s.value for s in page.selectbox if s.label == "Input size (px)"] == [64]


def test_the_page_opens_on_the_persons_own_dataset_split_in_two_halves():
    from core.data import demo_fewshot

    mine = demo_fewshot(n_classes=4, per_class=6)
    at = open_page(fresh_app(state={"dataset": mine, "dataset_label": "pets.zip", "load_report": None}),
                   "domain_shift")
    assert [r.value for r in at.radio if r.label == "Compare"] == ["Two halves of one dataset (control)"]
    assert [s.value for s in at.selectbox if s.label == "Dataset"] == ["current"]
    assert "A: first half (12 images) vs B: second half (12 images)" in texts(at.subheader)
    assert not [s for s in at.slider if s.label == "Demo images per class"]  # no demo set in play
    # two datasets: theirs against a second one they bring, asked for before anything runs
    [r for r in at.radio if r.label == "Compare"][0].set_value("Two datasets").run()
    assert [s.value for s in at.selectbox if s.label.startswith("Set ")] == ["current", "second"]
    assert any("Bring the second dataset above" in i for i in texts(at.info))
    assert at.session_state.dataset is mine  # the page never replaces the person's own data
