"""The Evaluate and Use-the-model pages, driven through Streamlit's AppTest (no browser)."""

import io
import time
import zipfile

import numpy as np
import pytest
import torch

from core import models
from core.analysis.evaluation import evaluate_dataset
from core.data import split
from core.runs import RunRecord, RunStore, new_run_id
from core.runs.jobs import get_job
from core.settings import get_settings
from tests.app_pages.pages_helpers import button, charts, fresh_app, open_page, texts, train, widget


@pytest.fixture
def trained():
    at = fresh_app()
    train(at, epochs=2)
    return at


def test_without_a_run_both_pages_ask_for_one_and_the_lr_finder_still_works():
    at = open_page(fresh_app(), "evaluate")
    assert any("Train a run first" in s for s in texts(at.info))
    button(at, "Find a learning rate").click().run()
    assert not at.exception and not at.error, texts(at.error)
    sweep = get_job(at.session_state.lr_finder["value"]["run_id"])  # a run: the page does not wait
    assert sweep.snapshot().status in ("queued", "preparing", "running")
    assert button(at, "Stop")  # the page follows it, and can stop it
    assert sweep.join(300)
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


def untrained_run(lite0, classes) -> str:
    """A finished run as the command line leaves it, with a head that never trained: it makes mistakes."""
    from core.cli import OWNER

    store = RunStore(get_settings().data_dir)
    record = store.create(RunRecord(
        id=new_run_id(), status="finished", created=time.time(), backbone=lite0.name, pretrained=True,
        classes=classes, config={"epochs": 1, "image_size": 64, "seed": 0}, owner=OWNER, dataset="demo"))
    torch.manual_seed(3)  # the same random head every time
    store.save_model(record.id, models.classifier(lite0, len(classes), classes=classes, image_size=64))
    return record.id


def captions(at) -> list[str]:
    """The gallery's captions (the distillation tab shows an image too)."""
    return [c for image in at.get("image") for c in image.captions if " · loss " in c]


def test_picking_a_cell_shows_exactly_its_images_and_the_worst_mistakes_come_by_loss(lite0):
    at = fresh_app()
    ss = at.session_state
    run_id = untrained_run(lite0, list(ss.dataset.classes))
    open_page(at, "evaluate")
    widget(at.selectbox, "Run to evaluate").set_value(run_id).run()
    assert not at.exception and not at.error, texts(at.error)
    # the same evaluation, made here without the page
    _, val_ds = split(ss.dataset, ss.val_fraction, ss.split_seed)
    ev = evaluate_dataset(RunStore(get_settings().data_dir).load_model(run_id), val_ds)
    counts = ev.confusion()
    off = counts - np.diag(np.diag(counts))
    true, predicted = np.unravel_index(off.argmax(), off.shape)
    assert counts[true, predicted] > 0, counts

    assert not captions(at)  # no cell picked yet: no gallery
    at.selectbox(key=f"cell-true-{run_id}").set_value(int(true)).run()
    at.selectbox(key=f"cell-predicted-{run_id}").set_value(int(predicted)).run()
    assert not at.exception and not at.error, texts(at.error)
    shown = captions(at)
    n = int(counts[true, predicted])
    assert len(shown) == min(n, 24)
    pair = f"{ev.classes[true]} → {ev.classes[predicted]} · "
    assert all(c.startswith(pair) for c in shown), shown
    assert any(f"Showing {min(n, 24)} of {n} " in c for c in texts(at.caption))

    # the diagonal: the images it got right
    at.selectbox(key=f"cell-predicted-{run_id}").set_value(int(true)).run()
    shown = captions(at)
    assert len(shown) == min(int(counts[true, true]), 24)
    assert all(c.startswith(f"{ev.classes[true]} → {ev.classes[true]} · ") for c in shown)

    at.toggle(key=f"worst-{run_id}").set_value(True).run()
    assert not at.exception and not at.error, texts(at.error)
    worst = [c for c in captions(at) if not c.startswith(f"{ev.classes[true]} → {ev.classes[true]} · ")]
    wrong = int((ev.preds != ev.labels).sum())
    assert len(worst) == min(wrong, 24)
    losses = [float(c.rsplit("loss ", 1)[1]) for c in worst]
    assert losses == sorted(losses, reverse=True)
    pairs = [c.split(" · ")[0].split(" → ") for c in worst]
    assert all(true != said for true, said in pairs)  # only mistakes
