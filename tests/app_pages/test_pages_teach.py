"""Teaching features through Streamlit's AppTest: ranking backbones before training."""

import time

import pytest

from core.data import demo_dataset
from core.train.base import TrainConfig
from tests.app_pages.pages_helpers import button, fresh_app, open_page


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_DATA_DIR", str(tmp_path))
    return fresh_app(timeout=120)


@pytest.mark.slow
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


# --- links that carry a setup -------------------------------------------------------------------


def opened_with(params: dict, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_DATA_DIR", str(tmp_path))
    return fresh_app(timeout=120, query=params)


def test_a_link_sets_up_data_model_and_training_but_never_the_owner(tmp_path, monkeypatch):
    at = opened_with({"data": "target", "per_class": "10", "strategy": "full", "epochs": "3", "lr": "0.0003",
                      "seed": "4", "size": "96", "kernel": "multi", "u": "0123456789abcdef"}, tmp_path, monkeypatch)
    assert "Demo shapes (target look): 40 images in 4 classes" in [s.value for s in at.subheader]
    assert at.session_state.model_choice.strategy == "Fine-tune all"
    assert at.session_state.model_choice.freeze == []
    cfg = at.session_state.train_config
    assert (cfg.epochs, cfg.lr, cfg.seed, cfg.image_size) == (3, 3e-4, 4, 96)
    assert at.session_state.owner != "0123456789abcdef"  # a shared link never hands over its owner's runs
    assert not at.info  # nothing was wrong with this link
    open_page(at, "train")
    assert [n.value for n in at.number_input if n.label == "Epochs"] == [3]
    # the address bar still says what the session holds, and no owner
    assert at.query_params["epochs"] in ("3", ["3"])
    assert "u" not in at.query_params
    assert at.query_params["data"] in ("target", ["target"])


def test_a_link_with_garbage_opens_normally_with_a_note(tmp_path, monkeypatch):
    at = opened_with({"epochs": "many", "backbone": "alexnet", "zzz": "1", "lock": "everything"},
                     tmp_path, monkeypatch)
    assert at.title[0].value == "Data"
    note = at.info[0].value
    assert "epochs=many" in note and "backbone=alexnet" in note and "'zzz'" in note and "lock=everything" in note
    assert at.session_state.train_config.epochs == TrainConfig().epochs
    at.run()
    assert not at.info  # said once
    assert "epochs" not in at.query_params


def test_locked_settings_are_shown_but_disabled_and_hidden_sections_are_gone(tmp_path, monkeypatch):
    at = opened_with({"lock": "backbone,strategy,epochs", "hide": "ranking,own_weights,uploads"}, tmp_path, monkeypatch)
    assert not [r for r in at.radio if r.label == "Bring images from"]
    open_page(at, "model")
    assert [s.disabled for s in at.selectbox if s.label == "Backbone"] == [True]
    assert [r.disabled for r in at.radio if r.label == "Strategy"] == [True]
    assert not [b for b in at.button if b.label.startswith("Rank the backbones")]
    assert not [e for e in at.expander if "own weights" in e.label]
    open_page(at, "train")
    assert [n.disabled for n in at.number_input if n.label == "Epochs"] == [True]
    assert [n.disabled for n in at.number_input if n.label == "Seed"] == [False]


def test_the_classroom_link_carries_the_setup_with_its_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_DATA_DIR", str(tmp_path))
    # the teacher's picks in the builder (AppTest's sidebar is only readable after the first run)
    at = fresh_app(timeout=120, query={"data": "target", "epochs": "2"},
                   state={"classroom-lock": ["backbone", "epochs"], "classroom-hide": ["uploads"]})
    link = at.sidebar.code[0].value
    query = link.split("?", 1)[1]
    assert sorted(query.split("&")) == ["data=target", "epochs=2", "hide=uploads", "lock=backbone,epochs"]
    from core.links import decode

    settings, notes = decode(dict(part.split("=") for part in query.split("&")))
    assert notes == [] and settings["lock"] == ["backbone", "epochs"]
