"""The Few-shot page, driven through Streamlit's AppTest (no browser)."""

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def open_fewshot(timeout=180):
    at = AppTest.from_file(APP, default_timeout=timeout).run()
    at.switch_page("pages/fewshot.py").run()
    assert not at.exception, at.exception
    return at


def support_classes(at):
    return [m.value.strip("*") for m in at.markdown if m.value.startswith("**") and m.value.endswith("**")]


def verdicts(at):
    """Per query picture, its methods' marks: the lines under each query image."""
    return [m.value.split("  \n") for m in at.markdown if m.value.startswith((":green[", ":red["))]


def test_an_episode_of_novel_classes_shows_each_query_with_every_method_s_prediction():
    at = open_fewshot()
    assert [t.value for t in at.title] == ["Few-shot"]
    assert "An episode: 5-way 1-shot" in [s.value for s in at.subheader]
    novel = at.caption[0].value.split("Novel: ")[1].rstrip(".").split(", ")
    shown = support_classes(at)
    assert len(shown) == 5 and set(shown) <= set(novel)
    # 5 ways x 2 queries; the default methods that need no meta-training name each of them
    marks = verdicts(at)
    assert len(marks) == 10
    assert all(len(lines) == 2 for lines in marks)
    assert all("prototypes" in lines[0] and "linear" in lines[1] for lines in marks)
    assert any("ANIL: meta-train it below" in c.value for c in at.caption)
    right = [c.value for c in at.caption if c.value.startswith("Right in this episode")][0]
    assert "prototypes" in right and "/10" in right

    # an episode number is the same episode for everyone
    at.number_input(key="fs_seed").set_value(7).run()
    seventh = support_classes(at)
    assert seventh != shown
    other = open_fewshot()
    other.number_input(key="fs_seed").set_value(7).run()
    assert support_classes(other) == seventh
    [b for b in at.button if b.label == "Another episode"][0].click().run()
    assert not at.exception, at.exception
    assert at.number_input(key="fs_seed").value == 8 and support_classes(at) != seventh

    at.slider[0].set_value(3).run()
    assert "An episode: 3-way 1-shot" in [s.value for s in at.subheader]
    assert len(verdicts(at)) == 6


def test_scoring_prototypes_gives_one_and_five_shot_accuracies_with_intervals():
    at = open_fewshot(600)
    at.multiselect[0].set_value(["prototypes"]).run()
    at.slider[1].set_value(20).run()
    [b for b in at.button if b.label == "Score the methods"][0].click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["method", "1-shot", "5-shot"]
    assert "±" in table.iloc[0]["1-shot"] and "±" in table.iloc[0]["5-shot"]


@pytest.mark.slow
def test_meta_training_runs_as_a_task_with_curves_and_then_predicts_in_the_episode():
    at = open_fewshot()
    at.slider[0].set_value(3).run()
    at.slider[1].set_value(20).run()  # episodes per score: the finished run is scored on as many
    [s for s in at.slider if s.label == "Epochs"][0].set_value(1).run()
    [s for s in at.slider if s.label == "Episodes per epoch"][0].set_value(10).run()
    [b for b in at.button if b.label == "Meta-train"][0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    deadline = time.time() + 480
    while not any("ANIL meta-training, 3-way 1-shot** · finished" in m.value for m in at.markdown):
        assert not any("· failed" in m.value for m in at.markdown), [e.value for e in at.error]
        assert time.time() < deadline, "the meta-training run did not finish in time"
        time.sleep(1)
        at.run()
    assert not at.exception, at.exception
    table = [d.value for d in at.dataframe if "scored on" in d.value.columns][0]
    assert list(table["episodes"]) == ["3-way 1-shot", "3-way 5-shot"]
    assert list(table["scored on"]) == ["20 episodes"] * 2
    assert all("±" in a for a in table["accuracy"])
    # the episode now shows the meta-trained ANIL's predictions too
    marks = verdicts(at)
    assert len(marks) == 6 and all(len(lines) == 3 and "ANIL" in lines[2] for lines in marks)


def open_fewshot_on(ds, label: str):
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["dataset"], at.session_state["dataset_label"] = ds, label
    at.session_state["load_report"] = None
    at.run()
    at.switch_page("pages/fewshot.py").run()
    assert not at.exception, at.exception
    return at


def test_episodes_come_from_the_persons_classes_and_say_which_episodes_their_data_allows():
    from core.data import demo_fewshot

    mine = demo_fewshot(n_classes=6, per_class=8)  # 3 novel classes of 8: 1-shot with 5 queries, not 5-shot
    at = open_fewshot_on(mine, "my shapes.zip")
    about = at.caption[0].value
    assert about.startswith("Your data, my shapes.zip: 6 classes") and "3-way 1-shot" in about, about
    assert "5-shot" not in about
    novel = about.split("Novel: ")[1].rstrip(".").split(", ")
    shown = support_classes(at)
    assert len(shown) == 3 and set(shown) <= set(novel) and set(novel) <= set(mine.classes)
    assert "An episode: 3-way 1-shot" in [s.value for s in at.subheader]


def test_too_few_classes_fall_back_to_the_built_in_set_with_a_note():
    from core.data import demo_fewshot

    at = open_fewshot_on(demo_fewshot(n_classes=3, per_class=4), "tiny.zip")
    assert any("tiny.zip has 3 classes" in i.value and "built-in" in i.value for i in at.info)
    assert at.caption[0].value.startswith("Demo: 20 classes")
    assert "An episode: 5-way 1-shot" in [s.value for s in at.subheader]
