"""The Data page with several labels per image: the tasks and their counts, and which task the
single-task pages train (AppTest, no browser)."""

from pages_helpers import fresh_app


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
