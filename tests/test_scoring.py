"""Pending forecasts scored against later actuals, and the rolling MAE per horizon."""

from __future__ import annotations

import numpy as np

from stream_app.core.scoring import PendingForecasts, RollingMAE, Scores


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def floats(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def as_tuples(scores: Scores) -> list[tuple[int, int, float]]:
    return list(
        zip(scores.sensors.tolist(), scores.horizons.tolist(), scores.errors.tolist(), strict=True)
    )


def test_actual_three_steps_later_scores_horizon_3() -> None:
    pending = PendingForecasts(horizon=12)
    pending.add(ints(0), ints(10), np.arange(1.0, 13.0)[None, :], floats(0.0))
    assert as_tuples(pending.score(ints(0), ints(13), floats(7.5))) == [(0, 3, 3.0 - 7.5)]


def baseline(scores: Scores) -> list[float]:
    assert scores.baseline is not None
    return scores.baseline.tolist()


def test_the_persistence_baseline_is_scored_against_the_same_actuals() -> None:
    pending = PendingForecasts(horizon=3)
    # sensor 0's windows ended in 10 (slot 5) and 12 (slot 6); sensor 1's in 3 (slot 6)
    pending.add(ints(0), ints(5), floats(11.0, 12.0, 13.0)[None, :], floats(10.0))
    values = floats(12.5, 13.0, 14.0, 4.0, 5.0, 6.0).reshape(2, 3)
    pending.add(ints(0, 1), ints(6, 6), values, floats(12.0, 3.0))
    scores = pending.score(ints(0, 1), ints(7, 8), floats(15.0, 1.0))
    # sensor 0 at slot 7: made at 6 (h1: 12.5, last 12) and at 5 (h2: 12.0, last 10);
    # sensor 1 at slot 8: made at 6 (h2: 5.0, last 3)
    assert as_tuples(scores) == [(0, 1, -2.5), (0, 2, -3.0), (1, 2, 4.0)]
    assert baseline(scores) == [12.0 - 15.0, 10.0 - 15.0, 3.0 - 1.0]


def test_scored_only_after_and_within_the_horizon() -> None:
    pending = PendingForecasts(horizon=12)
    pending.add(ints(0), ints(100), np.arange(1.0, 13.0)[None, :], floats(0.0))
    assert as_tuples(pending.score(ints(0), ints(101), floats(0.5))) == [(0, 1, 0.5)]
    assert as_tuples(pending.score(ints(0), ints(112), floats(2.0))) == [(0, 12, 12.0 - 2.0)]
    assert as_tuples(pending.score(ints(0), ints(100), floats(2.0))) == []  # not its own slot
    assert as_tuples(pending.score(ints(0), ints(113), floats(2.0))) == []  # past the horizon


def test_every_pending_forecast_that_an_actual_settles() -> None:
    pending = PendingForecasts(horizon=3)
    for slot in (10, 11, 12):
        pending.add(
            ints(0, 1),
            ints(slot, slot),
            floats(slot, slot + 0.5, slot + 0.25)[None, :] * [[1], [2]],
            floats(0.0, 0.0),
        )
    scores = pending.score(ints(1, 0), ints(13, 13), floats(100.0, 10.0))
    # sensor 1: made at 12 (h1), 11 (h2), 10 (h3); values doubled
    assert sorted(as_tuples(scores)) == [
        (0, 1, 12.0 - 10.0),
        (0, 2, 11.5 - 10.0),
        (0, 3, 10.25 - 10.0),
        (1, 1, 24.0 - 100.0),
        (1, 2, 23.0 - 100.0),
        (1, 3, 20.5 - 100.0),
    ]


def test_stale_rows_after_a_gap_are_not_scored() -> None:
    pending = PendingForecasts(horizon=3)
    pending.add(ints(0), ints(10), floats(1.0, 2.0, 3.0)[None, :], floats(0.0))
    # slot 20 shares ring rows with slots 17..19 but nothing was made there
    assert len(pending.score(ints(0), ints(20), floats(5.0))) == 0
    assert len(pending.score(ints(0), ints(14), floats(5.0))) == 0
    # and a forecast overwritten by one made `horizon` slots later is gone
    pending.add(ints(0), ints(13), floats(7.0, 8.0, 9.0)[None, :], floats(0.0))
    assert as_tuples(pending.score(ints(0), ints(12), floats(1.0))) == []
    assert as_tuples(pending.score(ints(0), ints(14), floats(1.0))) == [(0, 1, 6.0)]


def test_other_sensors_are_not_scored_against() -> None:
    pending = PendingForecasts(horizon=2)
    pending.add(ints(0), ints(10), floats(1.0, 2.0)[None, :], floats(0.0))
    assert len(pending.score(ints(1), ints(11), floats(5.0))) == 0


def test_nothing_pending_at_the_first_slots_of_the_epoch() -> None:
    pending = PendingForecasts(horizon=2)
    assert as_tuples(pending.score(ints(0, 0), ints(0, 1), floats(5.0, 6.0))) == []


def test_growth_past_the_initial_capacity_keeps_what_was_pending() -> None:
    pending = PendingForecasts(horizon=2, capacity=2)
    pending.add(
        ints(0, 1), ints(10, 10), floats(1.0, 2.0, 3.0, 4.0).reshape(2, 2), floats(0.5, 1.5)
    )
    pending.add(ints(6), ints(10), floats(5.0, 6.0)[None, :], floats(2.5))
    scores = pending.score(ints(0, 1, 6, 9), ints(12, 11, 11, 11), floats(0.0, 0.0, 1.0, 1.0))
    assert as_tuples(scores) == [(0, 2, 2.0), (1, 1, 3.0), (6, 1, 4.0)]
    assert baseline(scores) == [0.5, 1.5, 1.5]  # the last values survived the growth
    pending.add(ints(40), ints(11), floats(8.0, 9.0)[None, :], floats(0.0))  # past the doubling
    assert as_tuples(pending.score(ints(40, 0), ints(12, 12), floats(1.0, 1.0))) == [
        (40, 1, 7.0),
        (0, 2, 1.0),
    ]


def test_empty_actuals() -> None:
    scores = PendingForecasts(horizon=2).score(ints(), ints(), floats())
    assert len(scores) == 0
    assert scores.errors.shape == (0,)


def test_rolling_mae_exact_means_per_horizon() -> None:
    mae = RollingMAE(horizon=3, size=10)
    assert np.isnan(mae.mae).all()
    mae.update(scores(ints(0, 1, 0, 2), ints(1, 1, 3, 1), floats(1.0, -2.0, 4.0, 3.0)))
    assert mae.mae[0] == 2.0
    assert np.isnan(mae.mae[1])
    assert mae.mae[2] == 4.0
    assert mae.counts.tolist() == [3, 0, 1]


def test_rolling_mae_evicts_the_oldest() -> None:
    mae = RollingMAE(horizon=1, size=3)
    one = ints(1)
    history = []
    for error in (1.0, -2.0, 3.0, -10.0, 5.0):
        mae.update(scores(ints(0), one, floats(error)))
        history.append(float(mae.mae[0]))
    assert history == [1.0, 1.5, 2.0, 5.0, 6.0]
    assert mae.counts.tolist() == [3]
    # one update longer than the window keeps its newest `size` errors
    mae.update(scores(ints(0, 0, 0, 0, 0), ints(1, 1, 1, 1, 1), floats(100, 100, 1, 2, -3)))
    assert mae.mae.tolist() == [2.0]


def test_rolling_mae_does_not_share_state_between_horizons() -> None:
    mae = RollingMAE(horizon=2, size=2)
    mae.update(scores(ints(0, 0), ints(2, 2), floats(8.0, 6.0)))
    mae.update(scores(ints(0, 0, 0), ints(1, 2, 1), floats(1.0, 2.0, 3.0)))
    assert mae.mae.tolist() == [2.0, 4.0]


def test_baseline_mae_of_a_hand_made_series() -> None:
    # one sensor, horizon 2, persistence from the window's last value; the model is last + 1
    series = [10.0, 14.0, 11.0, 11.0, 17.0]
    pending, mae = PendingForecasts(horizon=2), RollingMAE(horizon=2, size=10)
    for slot, value in enumerate(series):
        mae.update(pending.score(ints(0), ints(slot), floats(value)))
        pending.add(ints(0), ints(slot), floats(value + 1, value + 1)[None, :], floats(value))
    # persistence errors, h1: |10-14| |14-11| |11-11| |11-17| = 4 3 0 6, mean 13/4
    #                     h2: |10-11| |14-11| |11-17| = 1 3 6, mean 10/3
    assert mae.baseline_mae.tolist() == [13 / 4, 10 / 3]
    # the model's, h1: |11-14| |15-11| |12-11| |12-17| = 3 4 1 5; h2: |11-11| |15-11| |12-17|
    assert mae.mae.tolist() == [13 / 4, 9 / 3]
    assert mae.counts.tolist() == [4, 3]


def test_baseline_mae_rolls_over_the_same_errors_as_the_model_mae() -> None:
    mae = RollingMAE(horizon=1, size=2)
    one = ints(1)
    for error, base in [(1.0, -10.0), (2.0, 20.0), (3.0, -30.0)]:
        mae.update(scores(ints(0), one, floats(error), floats(base)))
    assert (mae.mae.tolist(), mae.baseline_mae.tolist()) == ([2.5], [25.0])
    mae.reset()
    assert np.isnan(mae.mae).all() and np.isnan(mae.baseline_mae).all()
    mae.update(scores(ints(0), one, floats(-4.0), floats(8.0)))
    assert (mae.mae.tolist(), mae.baseline_mae.tolist()) == ([4.0], [8.0])


def test_scores_keep_their_baseline_through_renumbering_and_reordering() -> None:
    first = Scores(ints(0, 1), ints(1, 1), floats(1.0, 2.0), ints(0, 1), floats(10.0, 20.0))
    second = Scores(ints(2), ints(2), floats(3.0), ints(0), floats(30.0))
    merged = Scores.in_arrival_order([first.at(ints(1, 3)), second.at(ints(2))])
    assert merged.errors.tolist() == [1.0, 3.0, 2.0]
    assert baseline(merged) == [10.0, 30.0, 20.0]
    assert (
        Scores.in_arrival_order([first, Scores(ints(2), ints(1), floats(3.0), ints(0))]).baseline
        is None
    )


def test_without_a_baseline_its_mae_is_unknown() -> None:
    mae = RollingMAE(horizon=1, size=4)
    mae.update(scores(ints(0), ints(1), floats(2.0)))
    assert mae.mae.tolist() == [2.0] and np.isnan(mae.baseline_mae).all()


def scores(
    sensors: np.ndarray, horizons: np.ndarray, errors: np.ndarray, base: np.ndarray | None = None
) -> Scores:
    return Scores(sensors, horizons, errors, np.arange(len(errors)), base)
