"""The strategy presets reach the Train page, the augmentation toggles and preview, run hints, and
the "unlike anything it was trained on" warning, driven through Streamlit's AppTest."""

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import backbones
from core.training import strategy_config

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def texts(elements):
    return [e.value for e in elements]


def open_page(at, page):
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def widget(elements, label):
    return next(e for e in elements if e.label.startswith(label))


def fresh():
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    assert not at.exception
    return at


def test_a_strategy_brings_its_preset_to_the_train_page():
    at = open_page(fresh(), "model")
    widget(at.radio, "Strategy").set_value("Fine-tune all").run()
    preset = strategy_config("full", backbones.group_names(backbones.DEFAULT_BACKBONE))
    config = at.session_state.train_config
    assert (config.epochs, config.lr, config.warmup_epochs, config.early_stopping) == (
        preset.epochs, preset.lr, preset.warmup_epochs, preset.early_stopping)
    assert at.session_state.model_choice.lr_multipliers == {k: v for k, v in preset.lr_multipliers.items() if v != 1.0}
    open_page(at, "train")
    assert widget(at.number_input, "Epochs").value == preset.epochs
    assert widget(at.number_input, "Early-stopping patience").value == preset.early_stopping
    assert widget(at.number_input, "Head warm-up").value == preset.warmup_epochs
    assert widget(at.select_slider, "Learning rate").value == preset.lr
    assert at.session_state.train_config.lr_multipliers == at.session_state.model_choice.lr_multipliers


def test_flips_and_colour_jitter_start_off_and_the_preview_shows_augmented_views():
    at = open_page(fresh(), "train")
    assert not widget(at.checkbox, "Horizontal flips").value
    assert not widget(at.checkbox, "Colour jitter").value
    widget(at.checkbox, "Horizontal flips").check().run()
    assert at.session_state.train_config.flip
    widget(at.toggle, "Preview augmented").set_value(True).run()
    assert not at.exception
    assert len(at.get("image")) == 12  # four images, three views each
    assert any("flips" in c for c in texts(at.caption))


def test_a_cat_photo_gets_the_warning_and_a_validation_image_does_not():
    at = open_page(fresh(), "train")
    at.number_input[0].set_value(1).run()
    widget(at.button, "Train").click().run()
    deadline = time.time() + 420
    while time.time() < deadline:
        at.run()
        status = [s for s in texts(at.subheader) if s.startswith("Run ")]
        if status and "finished" in status[0]:
            break
        time.sleep(0.5)
    open_page(at, "use_model")
    widget(at.radio, "Images").set_value("A validation image").run()
    assert not at.exception
    assert not any("Unlike anything" in w for w in texts(at.warning))
    widget(at.radio, "Images").set_value("A sample photo").run()
    widget(at.selectbox, "Photo").set_value("chelsea").run()
    assert any("Unlike anything it was trained on" in w for w in texts(at.warning))
