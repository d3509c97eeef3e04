"""Each page, driven through Streamlit's AppTest (no browser)."""

import pytest

from tests.app_pages.pages_helpers import fresh_app, open_page, texts, train, wait_for_run


@pytest.fixture
def app():
    return fresh_app(timeout=120)


def test_the_app_opens_on_the_demo_set_with_the_offline_backbone(app):
    assert texts(app.title) == ["Data"]
    assert "Demo shapes (source look): 80 images in 4 classes" in texts(app.subheader)
    sidebar = " ".join(texts(app.sidebar.caption))
    assert "Device: **CPU" in sidebar or "Device: **GPU" in sidebar
    assert "efficientnet_lite0" in sidebar
    assert app.session_state.model_choice.strategy == "Feature extraction"


def test_the_data_page_switches_to_the_target_look(app):
    app.radio[1].set_value("target").run()
    [b for b in app.button if b.label == "Use the demo set"][0].click().run()
    assert "Demo shapes (target look): 80 images in 4 classes" in texts(app.subheader)


def test_the_model_page_counts_trainable_parameters_per_strategy(app):
    open_page(app, "model")
    values = texts(app.metric)
    assert values[0] == f"{1280 * 4 + 4:,}"  # feature extraction: only the new 4-class head trains
    [r for r in app.radio if r.label == "Strategy"][0].set_value("Fine-tune all").run()
    assert not app.exception
    values = texts(app.metric)
    assert values[1] == "0" and values[2] == "100.0%"
    assert app.session_state.model_choice.freeze == []


def test_the_train_page_trains_and_reopens_the_run_from_its_link(app):
    open_page(app, "train")
    app.number_input[0].set_value(2).run()
    [b for b in app.button if b.label == "Train"][0].click().run()
    assert not app.error, texts(app.error)
    status = wait_for_run(app)
    assert "finished" in status
    run_id = app.session_state.current_run
    labels = [m.label for m in app.metric]
    assert "Validation accuracy" in labels
    accuracy = float(app.metric[labels.index("Validation accuracy")].value.rstrip("%"))
    assert accuracy > 50  # four classes: chance is 25%

    # the link opens the run for anyone, read-only: the owner's runs stay the owner's
    fresh = fresh_app(timeout=60, query={"run": run_id})
    open_page(fresh, "train")
    assert any(run_id in s and "finished" in s for s in texts(fresh.subheader))
    assert not any("Your runs" == s for s in texts(fresh.subheader))
    assert any("Your runs" == s for s in texts(app.subheader))


def test_a_bad_run_link_says_so(app):
    other = fresh_app(timeout=60, query={"run": "0123456789abcdef"})
    open_page(other, "train")
    assert any("No run with this link" in w for w in texts(other.warning))


def test_pretrained_vs_scratch_trains_both_and_overlays_them(app):
    open_page(app, "train")
    app.number_input[0].set_value(2).run()
    [b for b in app.button if b.label == "Pretrained vs from scratch"][0].click().run()
    assert not app.error, texts(app.error)
    compare = app.session_state.compare
    assert len(compare) == 2
    from core.runs.jobs import get_job

    for run_id in compare:
        assert get_job(run_id).join(240)
    app.run()
    table = app.dataframe[0].value
    assert sorted(table["pretrained"].tolist()) == [False, True]
    assert (table["status"] == "finished").all()


def test_the_model_page_offers_progressive_unfreezing_with_a_timeline(app):
    open_page(app, "model")
    [r for r in app.radio if r.label == "Strategy"][0].set_value("Progressive unfreezing").run()
    assert not app.exception
    choice = app.session_state.model_choice
    assert choice.unfreeze_every == 1 and choice.freeze == []
    assert any("The plan for" in chart.proto.spec for chart in app.get("plotly_chart"))


def test_feature_maps_show_frozen_layers_unchanged_and_the_depth_charts(app):
    open_page(app, "features")
    assert not app.error and "pretrained backbone alone" in " ".join(texts(app.info))
    train(app)
    open_page(app, "features")
    assert "Along the depth of the network" in texts(app.subheader)
    # feature extraction froze every group up to the head: any body layer is unchanged
    assert any("Identical maps" in s for s in texts(app.success))
    charts = [c.proto.spec for c in app.get("plotly_chart")]
    assert any("Relative weight change" in spec for spec in charts) and any("linear CKA" in spec for spec in charts)


def test_saliency_explains_a_real_photo_with_the_pretrained_model(app):
    open_page(app, "saliency")
    app.radio[0].set_value("Sample photo").run()
    assert not app.exception and not app.error
    targets = [s for s in app.selectbox if s.label == "Explain the class"]
    assert targets and targets[0].format_func(targets[0].value) == "espresso"
    train(app)
    open_page(app, "saliency")
    assert texts(app.subheader)[:2] == ["pretrained (ImageNet)", "fine-tuned"]
    [b for b in app.button if b.label == "Run the sanity check"][0].click().run()
    assert not app.exception
    assert app.session_state.sanity["value"].join(300)  # a task: the page polls it
    app.run()
    assert any("rank correlation" in c.proto.spec for c in app.get("plotly_chart"))


def test_one_person_may_queue_only_their_share_and_can_cancel_their_waiting_runs(app, monkeypatch):
    import threading

    from core.runs.jobs import get_job
    from core.runs.tasks import get_queue

    queue = get_queue()
    monkeypatch.setattr(queue, "per_person", 1)
    others = [f"another-class-{i}" for i in range(queue.slots)]
    for slot in others:  # the whole class is training: this person's run has to wait
        assert queue.acquire(slot, threading.Event())
    try:
        open_page(app, "train")
        [b for b in app.button if b.label == "Train"][0].click().run()
        assert not app.error, texts(app.error)
        run_id = app.session_state.current_run
        assert [b for b in app.button if b.label == "Train"][0].disabled
        assert any("the most one person may queue" in c for c in texts(app.caption))
        [b for b in app.button if b.label.startswith("Cancel my waiting runs")][0].click().run()
        assert get_job(run_id).join(30)
        assert get_job(run_id).snapshot().status == "cancelled"
        app.run()
        assert not [b for b in app.button if b.label == "Train"][0].disabled
    finally:
        for slot in others:
            queue.release(slot)
