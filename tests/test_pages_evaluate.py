"""The Evaluate and Use-the-model pages, driven through Streamlit's AppTest (no browser)."""

import io
import os
import time
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.jobs import get_job

# Another folder's app.py (with the same pages) can be tried by setting TRANSFER_LAB_APP.
APP = os.environ.get("TRANSFER_LAB_APP") or str(Path(__file__).resolve().parent.parent / "app.py")


def texts(elements):
    return [e.value for e in elements]


def open_page(at, page):
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def button(at, label):
    return next(b for b in at.button if b.label.startswith(label))


def charts(at):
    return [c.proto.spec for c in at.get("plotly_chart")]


def train_once(at):
    open_page(at, "train")
    at.number_input[0].set_value(2).run()
    button(at, "Train").click().run()
    assert not at.error, texts(at.error)
    deadline = time.time() + 420  # generous: a busy CI machine can be slow
    while time.time() < deadline:
        at.run()
        status = [s for s in texts(at.subheader) if s.startswith("Run ")]
        if status and any(word in status[0] for word in ("finished", "failed", "cancelled", "diverged")):
            assert "finished" in status[0], status
            return
        time.sleep(0.5)
    raise AssertionError("the run did not end in time")


@pytest.fixture
def trained():
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception
    train_once(at)
    return at


def test_without_a_run_both_pages_ask_for_one_and_the_lr_finder_still_works():
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    open_page(at, "evaluate")
    assert any("Train a run first" in s for s in texts(at.info))
    button(at, "Find a learning rate").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert at.session_state.lr_finder["value"].join(300)  # the sweep is a task: the page does not wait
    at.run()
    assert not at.exception and not at.error, texts(at.error)
    assert any("Learning-rate range test" in spec for spec in charts(at))
    assert any("Suggested learning rate" in m for m in texts(at.markdown))
    lr_button = button(at, "Use lr = ")
    rate = float(lr_button.label.split("= ")[1].split()[0])
    lr_button.click().run()
    assert at.session_state.train_config.lr == rate
    assert any(f"learning rate is now {rate:.2g}" in s for s in texts(at.success))  # it says so
    open_page(at, "train")
    assert [s.value for s in at.select_slider if s.label == "Learning rate"] == [rate]  # and Train shows it
    open_page(at, "use_model")
    assert any("Train a run first" in s for s in texts(at.info))


def test_evaluate_shows_accuracy_confusion_scores_and_a_distillation(trained):
    at = open_page(trained, "evaluate")
    assert not at.error, texts(at.error)
    labels = [m.label for m in at.metric]
    assert "Validation accuracy" in labels
    accuracy = float(at.metric[labels.index("Validation accuracy")].value.rstrip("%"))
    assert accuracy > 50  # four classes: chance is 25%
    specs = charts(at)
    assert any("Confusion matrix (counts)" in s for s in specs)
    assert any("Normalised per true class" in s for s in specs)
    table = at.dataframe[0].value
    assert list(table.columns) == ["class", "precision", "recall", "f1", "support"]
    assert table["support"].sum() == int(at.metric[labels.index("Validation images")].value)
    assert any("softened" in s for s in specs)  # the teacher's output at T = 1 and T = 4

    [n for n in at.number_input if n.label == "Student epochs"][0].set_value(1).run()
    [s for s in at.select_slider if s.label == "Student input size (px)"][0].set_value(64).run()
    button(at, "Distil").click().run()
    assert not at.exception and not at.error, texts(at.error)
    job = get_job(at.session_state.distill_job["value"])  # the run's id: a worker process trains it
    assert job.join(300)
    at.run()
    snap = job.snapshot()
    assert snap.status == "finished", snap.message
    assert set(snap.epochs) == {"with teacher", "without teacher"}
    assert all(len(snap.epochs[v]) == 1 for v in snap.epochs)
    assert any("With the teacher" in m for m in texts(at.markdown))
    assert any("Without the teacher" in m for m in texts(at.markdown))
    assert any("validation accuracy" in s for s in charts(at))


def test_use_the_model_predicts_and_exports_a_checked_torchscript_file(trained):
    at = open_page(trained, "use_model")
    at.radio(key="use-source").set_value("A validation image").run()
    assert not at.exception and not at.error, texts(at.error)
    assert len(at.get("plotly_chart")) == 1  # the top-5 bars
    button(at, "Export as TorchScript").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert any("the same predictions" in s for s in texts(at.success))
    assert any(b.proto.label.startswith("Download") for b in at.get("download_button"))
    bundle = at.session_state._exports[(at.session_state.current_run, "torchscript")]
    assert "model.pt" in zipfile.ZipFile(io.BytesIO(bundle.data)).namelist()
