"""Which epoch's weights a run keeps, and the figures and sentences every page reads from that."""

from types import SimpleNamespace

import pytest

from core.runs.kept import (
    HEAD_ALONE_WON,
    kept_epoch_number,
    kept_label,
    kept_metric,
    kept_phase,
    plan_as_run,
    trained_groups_by,
    who_won,
)
from core.runs.recording import ending
from core.train.base import EpochMetrics, History

# "Fine-tune all" as it trains: three warm-up epochs of the head alone, then the body joins
PLAN = [{"stem": 0.0, "body": 0.0, "head": 1.0}] * 3 + [{"stem": 1.0, "body": 1.0, "head": 1.0}] * 4


def record(accs, status="finished", info=None, plan=PLAN, **more):
    epochs = [{"epoch": n, "val_acc": a, "val_loss": 1 - a, "train_acc": 1.0, "train_loss": 0.1}
              for n, a in enumerate(accs, start=1)]
    return SimpleNamespace(epochs=epochs, status=status, info=info or {}, config={"plan": plan, **more},
                           done=status != "running")


def test_the_headline_figures_are_the_kept_epochs_not_the_last_ones():
    run = record([0.6, 0.8, 0.9, 0.7, 0.75, 0.72, 0.775], info={"best_epoch": 3, "kept_epoch": 3})
    assert kept_metric(run) == 0.9 and kept_metric(run, "val_loss") == pytest.approx(0.1)
    assert kept_label(run) == "kept: epoch 3 of 7"


def test_a_record_without_kept_epoch_falls_back_to_best_epoch_then_to_the_last_epoch():
    assert kept_epoch_number(record([0.5, 0.9, 0.6], info={"best_epoch": 2})) == 2
    assert kept_epoch_number(record([0.5, 0.9, 0.6])) == 3
    assert kept_metric(record([])) is None and kept_label(record([])) == ""


def test_an_interrupted_run_keeps_its_best_accuracy_so_far():
    assert kept_epoch_number(record([0.5, 0.9, 0.6], status="interrupted")) == 2


def test_a_run_that_diverged_in_its_first_epoch_keeps_the_starting_weights():
    run = record([0.5], status="diverged", info={"kept_epoch": 0})
    assert kept_metric(run) is None
    assert "starting weights" in kept_label(run)


def test_the_who_won_sentence_appears_for_a_run_kept_at_a_warm_up_epoch():
    run = record([0.6, 0.8, 0.9, 0.7, 0.75, 0.72, 0.775], info={"kept_epoch": 3})
    assert kept_phase(run) == "warm-up"
    assert HEAD_ALONE_WON in who_won(run)


def test_the_who_won_sentence_is_absent_for_a_run_kept_at_a_fine_tuning_epoch():
    run = record([0.6, 0.8, 0.85, 0.9, 0.95, 0.9, 0.9], info={"kept_epoch": 5})
    assert kept_phase(run) == "fine-tuning"
    assert HEAD_ALONE_WON not in who_won(run)
    assert "fine-tuned epoch" in who_won(run) and "95.0%" in who_won(run) and "85.0%" in who_won(run)


def test_a_fine_tuned_epoch_kept_below_the_heads_accuracy_is_not_called_a_win():
    run = record([0.6, 0.8, 1.0, 0.9, 0.75, 0.25], status="diverged", info={"kept_epoch": 5})
    assert "beat" not in who_won(run) and "diverged" in who_won(run) and "75.0%" in who_won(run)


def test_feature_extraction_has_no_warm_up_to_beat():
    head_only = [{"body": 0.0, "head": 1.0}] * 4
    run = record([0.6, 0.8, 0.9, 0.85], info={"kept_epoch": 3}, plan=head_only)
    assert kept_phase(run) == "" and who_won(run) == ""


def test_the_record_says_which_epoch_and_phase_the_fit_kept():
    history = History(epochs=[EpochMetrics(n, 0.5, 0.5, 1.0, 0.5, 0.1) for n in range(1, 8)], plan=PLAN,
                      best_epoch=3, stopped="early")
    assert ending(history) == {"stopped": "early", "best_epoch": 3, "kept_epoch": 3, "kept_phase": "warm-up"}
    history.best_epoch = None  # no early stopping: the last epoch's weights are the model
    assert ending(history)["kept_epoch"] == 7 and ending(history)["kept_phase"] == "fine-tuning"


def test_a_layer_that_unfroze_after_the_kept_epoch_had_not_trained_by_then():
    progressive = [{"stem": 0.0, "body": 0.0, "head": 1.0}] * 2 + [{"stem": 0.0, "body": 1.0, "head": 1.0}] * 2 \
        + [{"stem": 1.0, "body": 1.0, "head": 1.0}] * 2
    run = record([0.5, 0.6, 0.9, 0.8, 0.7, 0.7], info={"kept_epoch": 3}, plan=progressive)
    assert trained_groups_by(run) == {"body", "head"}
    assert trained_groups_by(run, 6) == {"stem", "body", "head"}


def test_the_timeline_of_a_finished_run_ends_at_its_last_epoch():
    run = record([0.5] * 5)  # early stopping ended a seven-epoch plan after five
    assert len(plan_as_run(run)) == 5
    running = record([0.5] * 5, status="running")
    assert len(plan_as_run(running)) == 7
