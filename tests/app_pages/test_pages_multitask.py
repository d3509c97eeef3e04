"""The Data page with several labels per image: the tasks and their counts, and which task the
single-task pages train (AppTest, no browser)."""

from tests.app_pages.pages_helpers import fresh_app


def test_the_multitask_demo_shows_every_task_and_the_pages_train_the_chosen_one():
    at = fresh_app(timeout=120)
    [b for b in at.button if b.label.startswith("Use the multi-task demo")][0].click().run()
    assert not at.exception, at.exception
    headings = [s.value for s in at.subheader]
    assert "Multi-task demo: 80 images labelled for 3 tasks" in headings
    assert "Multi-task demo · shape: 80 images in 4 classes" in headings
    table = at.dataframe[0].value
    assert set(table["task"]) == {"shape", "colour", "size"} and table["images"].sum() == 3 * 80
    at.selectbox(key="multitask_task").set_value("colour").run()
    [b for b in at.button if b.label == "Train on this task"][0].click().run()
    assert not at.exception, at.exception
    assert "Multi-task demo · colour: 80 images in 3 classes" in [s.value for s in at.subheader]
    [b for b in at.button if b.label == "Use the demo set"][0].click().run()
    assert not any("tasks" in s.value for s in at.subheader)  # a single-task set forgets the tasks


def wait_until_done(at, timeout=240):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        at.run()
        status = [s.value for s in at.subheader if s.value.startswith("Run ")]
        if status and any(word in status[0] for word in ("finished", "failed", "cancelled", "diverged")):
            return status[0]
        time.sleep(0.5)
    raise AssertionError("the run did not end in time")


def test_a_multitask_dataset_trains_every_task_at_once_then_is_evaluated_and_used_per_task():
    at = fresh_app(timeout=120)
    at.slider[0].set_value(5).run()  # 5 images per shape: 20 images
    [b for b in at.button if b.label.startswith("Use the multi-task demo")][0].click().run()
    at.switch_page("pages/train.py")
    at.run()
    assert not at.exception, at.exception
    what = [r for r in at.radio if r.label == "What to train"][0]
    assert what.value.startswith("All 3 tasks at once")  # a multi-task dataset trains every task by default
    [n for n in at.number_input if n.label == "Epochs"][0].set_value(1).run()
    [b for b in at.button if b.label == "Train"][0].click().run()
    assert not at.error, [e.value for e in at.error]
    assert "finished" in wait_until_done(at)
    record = at.session_state.current_run
    from pages.ui.runs import run_store

    assert run_store().get(record).config["kind"] == "multitask"
    assert any("Validation accuracy by task" in c.proto.spec for c in at.get("plotly_chart"))
    assert {"Validation accuracy: shape", "Validation accuracy: colour", "Validation accuracy: size"} <= {
        m.label for m in at.metric}

    at.switch_page("pages/evaluate.py")
    at.run()
    assert not at.exception, at.exception
    assert [m.label for m in at.metric][:3] == ["Validation accuracy: shape", "Validation accuracy: colour",
                                                "Validation accuracy: size"]
    at.selectbox(key="evaluate-task").set_value("colour").run()
    assert not at.exception, at.exception
    charts = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Confusion matrix of colour" in spec and "green" in spec for spec in charts)

    at.switch_page("pages/use_model.py")
    at.run()
    [r for r in at.radio if r.label == "Images"][0].set_value("A validation image").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    answers = [m.value for m in at.markdown if m.value.startswith(("shape:", "colour:", "size:"))]
    assert [a.split(":")[0] for a in answers] == ["shape", "colour", "size"]  # every task answers at once

    # feature maps and saliency look through one head at a time
    for page, key in (("features", "fm-task"), ("saliency", "sal-task")):
        at.switch_page(f"pages/{page}.py")
        at.run()
        at.selectbox(key=key).set_value("size").run()
        assert not at.exception and not at.error, (page, at.exception, [e.value for e in at.error])
    at.switch_page("pages/features.py")
    at.run()
    assert any("linear CKA" in c.proto.spec for c in at.get("plotly_chart"))
