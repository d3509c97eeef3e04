"""Hints read from a run's curves: each names what went wrong and the one setting to change."""

from core.analysis.diagnosis import diagnose
from core.train.base import EpochMetrics, History


def run(train_loss, train_acc, val_loss, val_acc=None, stopped=None):
    val_acc = val_acc or [0.5] * len(train_loss)
    epochs = [EpochMetrics(i + 1, tl, ta, vl, va, 0.1)
              for i, (tl, ta, vl, va) in enumerate(zip(train_loss, train_acc, val_loss, val_acc, strict=True))]
    return History(epochs=epochs, stopped=stopped)


def kinds(hints):
    return [(h.kind, h.setting) for h in hints]


def test_healthy_converged_run_gets_no_hint():
    assert diagnose(run([1.0, 0.6, 0.45, 0.44], [0.6, 0.8, 0.86, 0.86], [1.0, 0.7, 0.6, 0.6])) == []


def test_train_accuracy_still_rising_at_the_end_says_train_longer():
    hints = diagnose(run([2.0, 1.6, 1.3, 1.1, 0.9], [0.2, 0.3, 0.4, 0.48, 0.55], [2.0, 1.7, 1.5, 1.3, 1.2]))
    assert kinds(hints) == [("underfitting", "epochs")]
    assert "10" in hints[0].message  # twice the epochs it ran


def test_a_run_that_stopped_early_is_not_told_to_train_longer():
    history = run([2.0, 1.6, 1.3], [0.2, 0.3, 0.4], [2.0, 1.7, 1.5], stopped="early")
    assert diagnose(history) == []


def test_an_early_stop_told_by_the_history_is_not_told_to_train_longer():
    history = run([2.0, 1.6, 1.3], [0.2, 0.3, 0.4], [2.0, 1.7, 1.5])
    assert kinds(diagnose(history)) == [("underfitting", "epochs")]
    history.stopped = "early"
    assert diagnose(history) == []


def test_validation_loss_rising_while_train_loss_falls_says_fewer_epochs():
    hints = diagnose(run([1.0, 0.5, 0.3, 0.15, 0.08], [0.6, 0.8, 0.9, 0.97, 0.99],
                         [0.9, 0.6, 0.7, 0.9, 1.2]))
    assert kinds(hints) == [("overfitting", "epochs")]
    assert "about 2" in hints[0].message  # the best validation epoch


def test_overfitting_after_early_stopping_asks_for_augmentation_instead():
    hints = diagnose(run([1.0, 0.5, 0.3, 0.15], [0.6, 0.8, 0.9, 0.95], [0.9, 0.6, 0.8, 1.0], stopped="early"))
    assert kinds(hints) == [("overfitting", "augmentation")]


def test_a_diverged_run_says_lower_the_learning_rate_and_nothing_else():
    assert kinds(diagnose(run([1.0, 0.9], [0.5, 0.6], [1.0, 1.0]), stopped="diverged")) == [("divergence", "learning rate")]
    blown = run([0.7, 3.0, float("nan")], [0.5, 0.4, 0.1], [0.7, 5.0, float("nan")])
    assert kinds(diagnose(blown)) == [("divergence", "learning rate")]


def test_reads_plain_epoch_dicts_of_a_saved_run():
    epochs = [{"train_loss": 2.0 - 0.3 * i, "train_acc": 0.2 + 0.1 * i, "val_loss": 2.0 - 0.2 * i} for i in range(4)]
    assert kinds(diagnose(epochs, stopped=None)) == [("underfitting", "epochs")]
    assert diagnose([], stopped=None) == []


def test_a_run_that_did_not_reach_its_last_epoch_gets_no_advice_on_epochs():
    rising = ([2.0, 1.6, 1.3, 1.1, 0.9], [0.2, 0.3, 0.4, 0.48, 0.55], [2.0, 1.7, 1.5, 1.3, 1.2])
    overfit = ([1.0, 0.7, 0.5, 0.3, 0.2], [0.5, 0.7, 0.8, 0.9, 0.95], [1.0, 0.8, 0.9, 1.1, 1.3])
    assert diagnose(run(*rising)) and diagnose(run(*overfit))  # ended by themselves, both get a hint
    for stopped in ("interrupted", "cancelled", "failed"):  # killed at epoch 5 of 30: neither is known
        assert diagnose(run(*rising, stopped=stopped)) == []
        assert diagnose(run(*overfit, stopped=stopped)) == []
