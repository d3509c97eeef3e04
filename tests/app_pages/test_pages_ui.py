"""What a person sees: names as typed, results that belong to the current choices, runs told apart.

Driven through Streamlit's AppTest (no browser).
"""

import json
import re

from PIL import Image

from core.data import ImageDataset
from core.runs.jobs import get_job
from tests.app_pages.pages_helpers import button, fresh_app, open_page, texts, train

MARKDOWN_NAME = "**bold** :red[red] $x^2$"
IMAGE_LINK_NAME = "![x](http://evil.example/x.png)"


def dataset(counts: dict[str, int]) -> ImageDataset:
    ds = ImageDataset()
    for k, (name, n) in enumerate(counts.items()):
        ds = ds.with_images([Image.new("RGB", (32, 32), (k * 60 % 256, i * 20 % 256, 90)) for i in range(n)], name)
    return ds


def app_with(ds=None, label="Demo shapes (source look)"):
    """The app opened on ``ds`` instead of the demo set."""
    return fresh_app(state=None if ds is None else {"dataset": ds, "dataset_label": label, "load_report": None})


def markdown_sources(at) -> list[str]:
    """Every element whose text Streamlit renders as Markdown."""
    found = []
    for kind in ("markdown", "caption", "subheader", "title", "header", "warning", "error", "info", "success"):
        found += [str(e.value) for e in at.get(kind)]
    return found


def test_class_and_dataset_names_show_as_typed_never_as_markdown():
    ds = dataset({MARKDOWN_NAME: 6, IMAGE_LINK_NAME: 6, "plain": 1})
    at = app_with(ds, label="**mine**.zip")
    sources = markdown_sources(at) + [str(e.value) for e in at.sidebar.caption]
    joined = "\n".join(sources)
    for raw in (MARKDOWN_NAME, IMAGE_LINK_NAME, "**mine**"):
        assert raw not in joined  # interpolated unescaped, Markdown would format it
    assert not re.search(r"(?<!\\):red\[|(?<!\\)\]\(http", joined)
    # the names are there, escaped: the preview heading and the warning about the small class
    assert any(r"\*\*bold\*\* \:red\[red\] \$x^2\$" in s for s in sources)
    assert any(r"\*\*mine\*\*.zip" in s for s in sources)


def test_number_class_names_are_categories_in_the_counts_chart():
    at = app_with(dataset({str(d): 5 for d in range(10)}))
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["yaxis"]["type"] == "category"


def test_class_names_with_plotly_markup_show_as_typed_in_the_counts_chart():
    at = app_with(dataset({"<b>bold</b>": 5, "a<br>b": 5, "R&D": 5}))
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    labels = spec["data"][0]["y"]
    assert sorted(labels) == sorted(["&lt;b&gt;bold&lt;/b&gt;", "a&lt;br&gt;b", "R&amp;D"])


def test_many_one_image_classes_give_one_warning_box():
    at = app_with(dataset({f"c{i}": 1 for i in range(60)} | {"big": 5}))
    assert 1 <= len(at.warning) <= 3  # one per kind of problem (few images, imbalance), not one per class
    assert "60 classes have fewer than 5 images" in " ".join(texts(at.warning) + texts(at.markdown))


def test_a_split_with_no_validation_image_cannot_train_and_says_why():
    at = app_with(dataset({"a": 1, "b": 1, "c": 1}))
    assert any("validation split is empty" in e for e in texts(at.error))
    open_page(at, "train")
    button(at, "Train").click().run()
    assert any("validation split is empty" in e for e in texts(at.error))
    assert not at.session_state.current_run


def test_the_sidebar_shows_the_strategy_picked_in_the_same_click():
    at = app_with()
    open_page(at, "model")
    [r for r in at.radio if r.label == "Strategy"][0].set_value("Fine-tune all").run()
    assert any("Fine-tune all" in c for c in texts(at.sidebar.caption)), texts(at.sidebar.caption)


def test_the_model_page_counts_groups_that_progressive_unfreezing_never_reaches_as_frozen():
    from dataclasses import replace

    at = app_with()
    open_page(at, "model")
    [r for r in at.radio if r.label == "Strategy"][0].set_value("Progressive unfreezing").run()
    # the preset's own epochs reach every group; two epochs (set on the Train page) do not
    at.session_state["train_config"] = replace(at.session_state.train_config, epochs=2, warmup_epochs=0)
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Frozen parameters"] != "0" and metrics["Share trained"] != "100.0%"
    assert any("never reaches" in c for c in texts(at.caption))


def test_runs_are_named_by_strategy_and_data_and_a_run_refuses_another_datasets_images():
    at = app_with()
    run_id = train(at)
    reopen = next(s for s in at.selectbox if s.label == "Reopen a run")
    name = reopen.format_func(run_id)
    assert name.startswith("Feature extraction · Demo shapes (source look) · ")
    assert "efficientnet_lite0 pretrained" not in name

    # Another dataset's classes: Use the model must not label its images with this run's classes.
    at.session_state["dataset"] = dataset({"cat": 6, "dog": 6})
    at.session_state["dataset_label"] = "pets.zip"
    open_page(at, "use_model")
    at.radio(key="use-source").set_value("A validation image").run()
    assert not at.exception
    assert any("trained on the classes circle, square, star, triangle" in e for e in texts(at.error))
    assert not at.get("plotly_chart")  # no prediction drawn


def test_progressive_runs_mark_the_groups_that_never_trained_as_frozen():
    at = app_with()
    open_page(at, "model")
    [r for r in at.radio if r.label == "Strategy"][0].set_value("Progressive unfreezing").run()
    train(at, epochs=1)  # one epoch: only the head trains
    open_page(at, "features")
    picker = next(s for s in at.selectbox if s.label == "Layer group")
    labels = [picker.format_func(g) for g in picker.options]
    assert all(label.endswith("(frozen)") for label in labels if not label.startswith("head"))


def test_distillation_results_go_when_the_data_they_came_from_changes():
    at = app_with()
    train(at)
    open_page(at, "evaluate")
    [n for n in at.number_input if n.label == "Student epochs"][0].set_value(1).run()
    [s for s in at.select_slider if s.label == "Student input size (px)"][0].set_value(32).run()
    button(at, "Distil").click().run()
    assert not at.error, texts(at.error)
    assert get_job(at.session_state.distill_job["value"]).join(300)  # the run's id: a worker process trains it
    at.run()
    assert any("With the teacher" in m for m in texts(at.markdown))

    open_page(at, "data")
    at.radio[1].set_value("target").run()
    button(at, "Use the demo set").click().run()
    open_page(at, "evaluate")
    assert not any("With the teacher" in m for m in texts(at.markdown))
    assert "distill_job" not in at.session_state
