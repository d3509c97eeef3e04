"""One workspace per person: presets, edits and locks go through one place; lessons keep to their own;
the classroom link follows the settings. Driven through Streamlit's AppTest."""

from core import models
from core.data import demo_dataset
from core.links import decode
from core.train.base import TrainConfig
from core.train.strategies import strategy_config
from pages.ui.workspace import ModelChoice, Workspace
from tests.app_pages.pages_helpers import fresh_app, open_page, texts, widget

GROUPS = models.group_names(models.DEFAULT_BACKBONE)


def train_settings(at) -> tuple:
    open_page(at, "train")
    return (widget(at.number_input, "Epochs").value, widget(at.select_slider, "Learning rate").value,
            widget(at.number_input, "Early-stopping patience").value, widget(at.number_input, "Head warm-up").value)


def test_a_preset_keeps_the_epochs_the_person_set_and_says_so():
    at = fresh_app(timeout=240)
    open_page(at, "train")
    widget(at.number_input, "Epochs").set_value(7).run()
    open_page(at, "model")
    widget(at.radio, "Strategy").set_value("Fine-tune all").run()
    notes = " ".join(texts(at.info))
    assert "epochs 7" in notes, notes
    preset = strategy_config("full", GROUPS)
    assert train_settings(at) == (7, preset.lr, preset.early_stopping, 6)  # the warm-up fits inside 7 epochs


def test_locked_epochs_and_rate_stay_when_a_student_picks_another_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_DATA_DIR", str(tmp_path))
    at = fresh_app(timeout=240, query={"epochs": "5", "lock": "epochs,lr"})
    open_page(at, "model")
    widget(at.radio, "Strategy").set_value("Fine-tune all").run()
    cfg = at.session_state.train_config
    assert (cfg.epochs, cfg.lr) == (5, TrainConfig().lr)  # not the preset's 40 and 0.002
    assert cfg.early_stopping == strategy_config("full", GROUPS).early_stopping  # what is not locked follows
    assert "epochs 5" in " ".join(texts(at.info))


def test_a_teachers_last_stage_link_trains_with_the_presets_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_DATA_DIR", str(tmp_path))
    at = fresh_app(timeout=240, query={"strategy": "last_stage", "epochs": "5", "lr": "0.002",
                                       "lock": "strategy,epochs,backbone"})
    assert not at.info, texts(at.info)  # the app accepts its own link
    cfg = at.session_state.train_config
    preset = strategy_config("last_stage", GROUPS)
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.early_stopping, cfg.warmup_epochs) == (
        5, 0.002, preset.batch_size, preset.early_stopping, 4)


def test_the_app_opens_its_own_link_to_the_same_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_DATA_DIR", str(tmp_path))
    at = fresh_app(timeout=240)
    open_page(at, "model")
    widget(at.radio, "Strategy").set_value("Discriminative learning rates").run()
    widget(at.select_slider, "Stem's learning rate").set_value(0.1).run()
    open_page(at, "train")
    widget(at.number_input, "Epochs").set_value(12).run()
    widget(at.selectbox, "Batch size").set_value(8).run()
    query = at.sidebar.code[0].value.split("?", 1)[1]
    params = dict(part.split("=", 1) for part in query.split("&"))
    student = fresh_app(timeout=240, query=params)
    assert not student.info, texts(student.info)
    for name in ("model_choice", "train_config"):
        assert student.session_state[name] == at.session_state[name], name


def test_the_classroom_link_follows_a_change_in_the_same_click(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_DATA_DIR", str(tmp_path))
    at = fresh_app(timeout=240)
    open_page(at, "train")
    widget(at.number_input, "Epochs").set_value(7).run()
    query = at.sidebar.code[0].value.split("?", 1)[1]
    settings, _ = decode(dict(part.split("=", 1) for part in query.split("&")))
    assert settings["epochs"] == 7


def test_a_lesson_runs_in_its_own_workspace_until_the_person_continues_with_it():
    mine = demo_dataset("target", per_class=8)
    at = fresh_app(timeout=240, state={"dataset": mine, "dataset_label": "pets.zip", "load_report": None})
    open_page(at, "model")
    widget(at.radio, "Strategy").set_value("Progressive unfreezing").run()
    before = (at.session_state.model_choice, at.session_state.train_config)
    open_page(at, "lessons")
    slug = at.radio(key="lesson-pick").value
    next(b for b in at.button if b.label == "Run this experiment").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert at.session_state.dataset_label == "pets.zip" and at.session_state.dataset is mine
    assert (at.session_state.model_choice, at.session_state.train_config) == before
    assert at.session_state.current_run is None
    assert "pets.zip" in " ".join(c.value for c in at.sidebar.caption)
    at.button(key=f"adopt-{slug}").click().run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Train"]
    assert at.session_state.dataset_label.startswith("Demo shapes")
    assert at.session_state.current_run is not None
    cfg = at.session_state.train_config
    # what the sidebar's strategy says is what the Train page trains with: no settings left from Progressive
    assert at.session_state.model_choice.strategy != "Progressive unfreezing"
    assert cfg.unfreeze_every == 0 and cfg.epochs != before[1].epochs
    at.switch_page("pages/lessons.py").run()
    at.button(key=f"lesson-stop-{slug}").click().run()


def workspace_with(locks=()) -> Workspace:
    """A workspace over a plain mapping, as the person's is over session state."""
    preset = strategy_config("last_stage", GROUPS)
    return Workspace({"dataset": demo_dataset("source", per_class=5), "dataset_label": "demo",
                      "model_choice": ModelChoice(strategy="Fine-tune the last stage", freeze=list(preset.freeze),
                                                  lr_multipliers=dict(preset.lr_multipliers)),
                      "train_config": preset, "link_lock": list(locks)})


def test_a_locked_rate_refuses_the_lr_finders_suggestion():
    ws = workspace_with(locks=["lr"])
    assert ws.change(by_hand=True, lr=0.0058) == ["lr"]
    assert ws.config.lr == 0.002


def test_a_locked_strategy_refuses_a_layer_table_change_and_stays_as_it_is():
    ws = workspace_with(locks=["strategy"])
    before = list(ws.model.freeze)
    assert set(ws.change(freeze=[])) == {"freeze"}
    assert ws.model.freeze == before and ws.config.freeze == before
    assert ws.choose_strategy("Fine-tune all") is None
    assert ws.model.strategy == "Fine-tune the last stage"


def test_a_locked_dataset_is_kept_when_a_lesson_is_continued_with():
    ws = workspace_with(locks=["data"])
    lesson = Workspace.detached(demo_dataset("target", per_class=5), "lesson data", ModelChoice(), TrainConfig())
    assert "data" in ws.adopt(lesson)
    assert ws.dataset_label == "demo"


def test_the_sidebar_names_the_run_on_screens_own_strategy_beside_the_next_runs():
    from tests.app_pages.pages_helpers import train

    at = fresh_app(timeout=240)
    run_id = train(at, epochs=1)
    open_page(at, "model")
    widget(at.radio, "Strategy").set_value("Progressive unfreezing").run()
    captions = [c.value for c in at.sidebar.caption]
    assert any(c.startswith("Next run:") and c.endswith("Progressive unfreezing") for c in captions), captions
    assert f"Run on screen: `{run_id}` — Feature extraction" in captions, [c for c in captions if "Run" in c]
