"""The workspace's rules without the UI: locks refuse changes, a preset keeps what the person edited."""

from core.train.base import TrainConfig
from core.train.strategies import strategy_config
from core.workspace import apply_changes, preset_changes

GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def test_a_locked_setting_refuses_a_change_and_the_others_go_through():
    config, refused = apply_changes(TrainConfig(epochs=5), {"epochs": 40, "lr": 0.002, "seed": 3}, locks=["epochs"])
    assert refused == ["epochs"]
    assert (config.epochs, config.lr, config.seed) == (5, 0.002, 3)


def test_setting_a_locked_setting_to_its_own_value_is_no_refusal():
    _, refused = apply_changes(TrainConfig(epochs=5), {"epochs": 5}, locks=["epochs"])
    assert refused == []


def test_the_freeze_lock_holds_the_frozen_groups_multipliers_and_unfreezing_pace():
    config, refused = apply_changes(TrainConfig(freeze=["stem"]), {"freeze": [], "lr_multipliers": {"stem": 0.1},
                                                                    "unfreeze_every": 2}, locks=["freeze"])
    assert sorted(refused) == ["freeze", "lr_multipliers", "unfreeze_every"]
    assert config.freeze == ["stem"]


def test_a_preset_comes_back_whole_when_nothing_was_edited():
    progressive = strategy_config("progressive", GROUPS)
    config, kept = preset_changes("feature_extraction", GROUPS, progressive)
    assert kept == []
    assert config == strategy_config("feature_extraction", GROUPS)


def test_a_preset_keeps_what_the_person_edited_and_what_a_link_locks_and_names_them():
    mine = TrainConfig(epochs=7, lr=0.01, batch_size=8, seed=4)
    config, kept = preset_changes("full", GROUPS, mine, edited={"epochs", "batch_size"}, locks=["lr"])
    preset = strategy_config("full", GROUPS)
    assert sorted(kept) == ["batch_size", "epochs", "lr"]
    assert (config.epochs, config.lr, config.batch_size, config.seed) == (7, 0.01, 8, 4)
    assert config.early_stopping == preset.early_stopping and config.freeze == preset.freeze
    assert config.warmup_epochs == 6  # the preset's 30 warm-up epochs shrink to fit 7 epochs
    config.validate(GROUPS)
