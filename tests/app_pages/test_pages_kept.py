"""The pages report the model a run keeps, not its last epoch (a record written straight into the store:
no training needed to show what the pages read from it)."""

import json
import os
import time

import pytest

from core.runs.kept import HEAD_ALONE_WON
from core.runs.store import RunRecord, RunStore
from tests.app_pages.pages_helpers import fresh_app, open_page, texts

# "Fine-tune all": three warm-up epochs of the head alone, then the body; a ten-epoch plan that early
# stopping ended after seven, keeping epoch 3 (90 %) while the last epoch scored 77.5 %
GROUPS = ["stem", "stage1", "head"]
PLAN = [{"stem": 0.0, "stage1": 0.0, "head": 1.0}] * 3 + [{"stem": 1.0, "stage1": 1.0, "head": 1.0}] * 7
ACCS = [0.6, 0.8, 0.9, 0.7, 0.75, 0.72, 0.775]


def add_run(owner: str, kept: int, run_id: str = "ab" * 8) -> RunRecord:
    epochs = [{"epoch": n, "val_acc": a, "val_loss": 1.5 - a, "train_acc": 1.0, "train_loss": 0.1, "seconds": 1.0,
               "lr": 0.001} for n, a in enumerate(ACCS, start=1)]
    record = RunRecord(id=run_id, status="finished", created=time.time() - 60, backbone="efficientnet_lite0",
                       pretrained=True, classes=["a", "b"], owner=owner, dataset="Held-out set",
                       config={"strategy": "Fine-tune all", "plan": PLAN, "epochs": 10, "image_size": 128},
                       epochs=epochs, finished=time.time(), info={"stopped": "early", "kept_epoch": kept,
                                                                  "best_epoch": kept})
    return RunStore(os.environ["TRANSFER_LAB_DATA_DIR"]).create(record)


@pytest.fixture
def app():
    return fresh_app(timeout=60)


def test_the_train_page_headlines_the_kept_weights_and_says_the_warm_up_won(app):
    record = add_run(app.session_state.owner, kept=3)
    app.session_state.current_run = record.id
    app.session_state.compare = [record.id]
    open_page(app, "train")
    metrics = {m.label: m for m in app.metric}
    assert metrics["Validation accuracy"].value == "90.0%"  # epoch 3's, not the last epoch's 77.5 %
    assert "kept: epoch 3 of 7" in " ".join(texts(app.markdown))
    assert any(HEAD_ALONE_WON in s for s in texts(app.info))
    # the run menu and Compare read the same model
    menu = next(s for s in app.selectbox if s.label == "Reopen a run")
    assert "val acc 90.0% (kept: epoch 3 of 7)" in menu.format_func(record.id)
    table = app.dataframe[0].value
    assert table["val acc"].tolist() == [0.9] and table["kept"].tolist() == ["epoch 3 of 7"]
    assert table["kept from"].tolist() == ["the warm-up's head"]
    specs = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    curves = next(s for s in specs if any(a.get("text") == "kept: epoch 3" for a in s["layout"].get("annotations", [])))
    assert any(shape.get("x0") == 3 for shape in curves["layout"]["shapes"])  # the curves mark the kept epoch


def test_a_run_kept_at_a_fine_tuning_epoch_has_no_warm_up_sentence(app):
    record = add_run(app.session_state.owner, kept=5)
    app.session_state.current_run = record.id
    open_page(app, "train")
    assert {m.label: m.value for m in app.metric}["Validation accuracy"] == "75.0%"
    assert not any(HEAD_ALONE_WON in s for s in texts(app.info))
    assert any("fine-tuned epoch" in s for s in texts(app.info))


def test_the_timeline_runs_to_the_last_epoch_trained_not_to_the_plans_end(app):
    record = add_run(app.session_state.owner, kept=3)
    app.session_state.current_run = record.id
    open_page(app, "train")
    specs = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    timeline = next(s for s in specs if s["data"][0]["type"] == "heatmap")
    assert timeline["data"][0]["x"] == list(range(1, 8))


def test_a_run_saving_its_images_is_not_said_to_wait_in_a_queue():
    from streamlit.testing.v1 import AppTest

    def show(position):
        from types import SimpleNamespace

        from pages.ui.runs import run_progress

        run_progress("ab" * 8, SimpleNamespace(status="queued", queue_position=position), str, can_stop=False)

    nothing_queued = AppTest.from_function(show, args=(None,)).run()
    assert not any("in the queue" in s for s in texts(nothing_queued.info)), texts(nothing_queued.info)
    assert any("Getting the run ready" in s for s in texts(nothing_queued.info))
    second = AppTest.from_function(show, args=(2,)).run()
    assert texts(second.info) == ["Waiting for a free training slot: number 2 in the queue."]


def test_the_lr_finders_loss_axis_shows_the_descent_not_the_blow_up():
    import numpy as np

    from core.methods.lr_finder import LRFinderResult, smooth
    from pages.ui.lr_finder import lr_figure

    lrs = list(np.logspace(-6, 0, 60))
    # 1.6 falling to 0.8 up to 1e-2, then blowing up to 40
    losses = [1.6 - 0.8 * i / 45 for i in range(46)] + [0.8 * 1.35 ** k for k in range(1, 15)]
    result = LRFinderResult(lrs, losses, smooth(losses), suggestion=1e-3)
    low, high = lr_figure(result).layout.yaxis.range
    assert high < 2.5 and low < 0.85, (low, high)
    assert (1.6 - 0.8) / (high - low) > 0.6  # the descent fills most of the axis


def test_a_progressive_run_kept_before_a_stage_unfroze_shows_that_stage_as_unchanged_not_trained():
    from pages.ui.runs import frozen_groups, unchanged_groups, weights_caption

    plan = [{"stem": 0.0, "stage1": 0.0, "head": 1.0}] * 2 + [{"stem": 0.0, "stage1": 1.0, "head": 1.0}] * 2 \
        + [{"stem": 1.0, "stage1": 1.0, "head": 1.0}] * 2
    record = RunRecord(id="cd" * 8, status="finished", created=0.0, backbone="efficientnet_lite0", pretrained=True,
                       classes=["a", "b"], config={"plan": plan, "unfreeze_every": 1},
                       epochs=[{"epoch": n, "val_acc": 0.5, "val_loss": 1.0, "train_acc": 1.0, "train_loss": 0.1}
                               for n in range(1, 7)], info={"kept_epoch": 3})
    assert frozen_groups(record) == []  # every group trains at some point of the plan ...
    # ... but the kept weights are epoch 3's: the stem unfroze at epoch 5, so Feature maps greys it
    # (CKA 1, change 0) and says why its maps did not change
    assert unchanged_groups(record) == ["stem"]
    assert "stem trained only after that epoch" in weights_caption(record)
    assert "kept: epoch 3 of 6" in weights_caption(record)


def test_feature_maps_grey_a_stage_that_unfroze_after_the_kept_epoch_and_say_why_it_did_not_change(app):
    from core import models
    from core.data import demo_dataset

    # progressive unfreezing: the head for two epochs, then "top" joins; early stopping kept epoch 2,
    # before "top" trained, so the kept weights hold the pretrained "top" unchanged
    groups = models.group_names(models.DEFAULT_BACKBONE)
    plan = [{g: 1.0 if g == "head" else 0.0 for g in groups}] * 2 + \
        [{g: 1.0 if g in ("head", "top") else 0.0 for g in groups}] * 2
    classes = list(demo_dataset("source").classes)
    store = RunStore(os.environ["TRANSFER_LAB_DATA_DIR"])
    record = store.create(RunRecord(
        id="ef" * 8, status="finished", created=time.time(), backbone=models.DEFAULT_BACKBONE, pretrained=True,
        classes=classes, owner=app.session_state.owner, config={"plan": plan, "unfreeze_every": 1, "image_size": 64},
        epochs=[{"epoch": n, "val_acc": 0.5, "val_loss": 1.0, "train_acc": 0.5, "train_loss": 1.0} for n in (1, 2, 3, 4)],
        info={"kept_epoch": 2}))
    store.save_model(record.id, models.starting_model(models.DEFAULT_BACKBONE, classes, image_size=64))
    app.session_state.current_run = record.id
    open_page(app, "features")
    assert any("top trained only after that epoch" in c for c in texts(app.caption))
    picker = next(s for s in app.selectbox if s.label == "Layer group")
    assert picker.format_func("top") == "top (unfroze at epoch 3, after the kept one)"
    picker.set_value("top").run()
    assert any("the run keeps the weights of epoch 2, from before it did" in s for s in texts(app.success))
    cka = next(json.loads(c.proto.spec) for c in app.get("plotly_chart") if "linear CKA" in c.proto.spec)
    colours = dict(zip(cka["data"][0]["x"], cka["data"][0]["marker"]["color"], strict=True))
    assert colours["top"] == colours["stem"] != colours["head"]  # grey like a frozen group, not red
