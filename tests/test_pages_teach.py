"""Teaching features through Streamlit's AppTest: ranking backbones before training."""

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data import demo_dataset
from core.training import TrainConfig

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_DATA_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    return at


def open_page(at, page):
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def button(at, label):
    return next(b for b in at.button if b.label.startswith(label))


def test_ranking_scores_pretrained_above_random_weights_and_checks_itself_by_training(app):
    app.session_state.train_config = TrainConfig(epochs=1, image_size=64)
    app.session_state.dataset = demo_dataset("source", per_class=8)  # small: two runs train in this test
    open_page(app, "model")
    next(c for c in app.checkbox if c.label.startswith("Also score each")).check().run()
    started = time.perf_counter()
    button(app, "Rank the backbones").click().run()
    print(f"ranking: {time.perf_counter() - started:.1f} s")
    assert not app.exception, app.exception
    rows = app.session_state["_backbone_ranking"]["rows"]
    scored = [r for r in rows if r["logme"] is not None]
    lite = {r["pretrained"]: r["logme"] for r in scored if r["name"] == "efficientnet_lite0"}
    assert lite[True] > lite[False]
    assert len(app.dataframe) >= 2  # the layer-group table and the ranking

    started = time.perf_counter()
    button(app, "Fine-tune the top 2").click().run()
    assert len(app.session_state["_backbone_ranking"]["runs"]) == 2
    deadline = time.time() + 240
    while time.time() < deadline and not [m for m in app.metric if m.label.startswith("Kendall")]:
        time.sleep(1)
        app.run()
    print(f"training both: {time.perf_counter() - started:.1f} s")
    assert not app.exception, app.exception
    tau = [m for m in app.metric if m.label.startswith("Kendall")]
    assert tau, "the comparison of LogME with the accuracies never appeared"
    assert app.get("plotly_chart")
