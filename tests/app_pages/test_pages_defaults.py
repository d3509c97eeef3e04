"""The strategy presets reach the Train page, the augmentation toggles and preview, run hints, and
the "unlike anything it was trained on" warning, driven through Streamlit's AppTest."""

from core import models
from core.train.strategies import strategy_config
from tests.app_pages.pages_helpers import fresh_app, open_page, texts, train, widget


def test_a_strategy_brings_its_preset_to_the_train_page():
    at = open_page(fresh_app(timeout=240), "model")
    widget(at.radio, "Strategy").set_value("Fine-tune all").run()
    preset = strategy_config("full", models.group_names(models.DEFAULT_BACKBONE))
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
    at = open_page(fresh_app(timeout=240), "train")
    assert not widget(at.checkbox, "Horizontal flips").value
    assert not widget(at.checkbox, "Colour jitter").value
    widget(at.checkbox, "Horizontal flips").check().run()
    assert at.session_state.train_config.flip
    shown = len(at.get("image"))  # the pinned images' thumbnails are on the page too
    widget(at.toggle, "Preview augmented").set_value(True).run()
    assert not at.exception
    assert len(at.get("image")) - shown == 12  # four images, three views each
    assert any("flips" in c for c in texts(at.caption))


def test_a_cat_photo_gets_the_warning_and_a_validation_image_does_not():
    at = fresh_app(timeout=240)
    train(at, epochs=1)
    open_page(at, "use_model")
    widget(at.radio, "Images").set_value("A validation image").run()
    assert not at.exception
    assert not any("Unlike anything" in w for w in texts(at.warning))
    widget(at.radio, "Images").set_value("A sample photo").run()
    widget(at.selectbox, "Photo").set_value("chelsea").run()
    assert any("Unlike anything it was trained on" in w for w in texts(at.warning))
