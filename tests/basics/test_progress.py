"""Time left and speed, estimated per phase (core.progress)."""

import pytest

from core.progress import ProgressTracker, fit_phase_units


def tracker(cache=20, train=10, batch=8):
    return ProgressTracker({"cache": cache, "train": train}, {"cache": batch, "train": batch})


def test_caching_reports_its_own_time_left_and_no_guess_for_the_epochs_yet():
    t = tracker()
    t.observe(0.0, 0.0, "cache")
    t.observe(10.0, 10 / 30, "cache")  # 10 cache units in 10 s: 1 unit/s, 10 units to go
    estimate = t.estimate(10.0)
    assert estimate.phase == "cache" and estimate.later_phases == ("train",)
    assert estimate.phase_seconds_left == pytest.approx(10.0)
    assert estimate.seconds_left is None  # the epochs' speed is unknown until they run
    assert estimate.images_per_second == pytest.approx(8.0)


def test_a_stall_while_caching_counts_down_instead_of_climbing():
    t = tracker()
    t.observe(0.0, 0.0, "cache")
    t.observe(10.0, 10 / 30, "cache")
    first = t.estimate(10.0).phase_seconds_left
    for now in (12.0, 14.0, 16.0):  # progress sits still
        t.observe(now, 10 / 30, "cache")
        later = t.estimate(now).phase_seconds_left
        assert later < first
        first = later
    assert t.estimate(40.0).phase_seconds_left == 0.0


def test_fast_epochs_after_slow_caching_are_timed_by_their_own_speed():
    t = tracker()
    t.observe(0.0, 0.0, "cache")
    t.observe(20.0, 20 / 30, "cache")  # caching: 1 unit/s
    t.observe(20.1, 20 / 30, "train")
    t.observe(20.5, 25 / 30, "train")  # epochs: 5 units in 0.4 s
    estimate = t.estimate(20.5)
    assert estimate.phase == "train" and estimate.later_phases == ()
    # 5 units left at 12.5 units/s: 0.4 s, not the whole-run average's 10 s
    assert estimate.seconds_left == pytest.approx(0.4)
    assert estimate.images_per_second == pytest.approx(100.0)


def test_speed_is_measured_over_the_phase_so_it_does_not_swing_between_looks():
    t = tracker(cache=0, train=100)
    t.observe(0.0, 0.0, "train")
    speeds = []
    for step in range(1, 6):
        t.observe(float(step), step / 100, "train")
        speeds.append(t.estimate(float(step)).images_per_second)
    assert max(speeds) == pytest.approx(min(speeds))


def test_nothing_is_estimated_before_the_phase_has_moved():
    t = tracker()
    assert t.estimate(0.0) is None
    t.observe(0.0, 0.0, "cache")
    estimate = t.estimate(5.0)
    assert estimate.phase_seconds_left is None and estimate.images_per_second is None


def test_fit_phase_units_counts_cache_batches_per_view_and_the_validation_pass():
    units = fit_phase_units(epochs=3, batches_per_epoch=4, n_train=30, n_val=10, batch_size=8, cached_views=3)
    assert units == {"cache": 4 * 3 + 2, "train": 12}
    assert fit_phase_units(epochs=3, batches_per_epoch=4, n_train=30, n_val=10, batch_size=8)["cache"] == 0


def test_the_run_clock_prices_fine_tuning_epochs_the_warm_up_has_not_run_yet():
    from core.progress import BODY_EPOCH_COST, RunClock

    # Fine-tune all: 64 training and 16 validation images, batches of 16, one cached view a second
    # per batch (4 s a view), a 4-epoch warm-up of the head then 6 body epochs, patience 5
    info = {"epochs": 10, "batches_per_epoch": 4, "n_train": 64, "n_val": 16, "cache": "warmup"}
    config = {"batch_size": 16, "augment": False, "warmup_epochs": 4, "early_stopping": 5}
    clock = RunClock.for_fit(info, config, head_patience=8)
    clock.observe(0.0, 0.0, "cache", [])
    clock.observe(4.0, 4 / 44, "cache", [])  # one view of 4 batches cached in 4 s
    ended = []
    for n in range(1, 5):  # the head's epochs: a tenth of a second each
        ended.append({"epoch": n, "val_loss": 1.0 / n})
        clock.observe(4.0 + 0.1 * n, (4 + 4 * n) / 44, "train", list(ended))
    body = 4.0 * (BODY_EPOCH_COST * 64 + 16) / 64  # the body's epoch, guessed from caching's speed
    # the old estimator said a second or two here: 24 of 44 units done at the head's speed
    assert clock.seconds_left(4.4) == pytest.approx(6 * body, rel=0.01)
    ended.append({"epoch": 5, "val_loss": 0.1})
    clock.observe(4.4 + 20.0, 24 / 44, "train", list(ended))  # the first body epoch really took 20 s
    assert clock.seconds_left(24.4) == pytest.approx(5 * 20.0, rel=0.01)


def test_the_run_clock_expects_early_stopping_to_end_a_run_before_its_planned_epochs():
    from core.progress import RunClock

    info = {"epochs": 60, "batches_per_epoch": 2, "n_train": 64, "n_val": 16, "cache": ""}
    clock = RunClock.for_fit(info, {"batch_size": 32, "early_stopping": 8}, head_patience=8)
    ended = []
    clock.observe(0.0, 0.0, "train", [])
    for n in range(1, 11):  # 1 s an epoch; the best validation loss at epoch 6
        ended.append({"epoch": n, "val_loss": abs(n - 6) + 1.0})
        clock.observe(float(n), n / 60, "train", list(ended))
    # four epochs of patience left, and as many again for one more improvement: 12 s, not 50
    assert clock.seconds_left(10.0) == 12.0
