"""Pending forecasts scored against later actuals, and the rolling MAE per horizon."""

from __future__ import annotations

import numpy as np

from stream_app.scoring import PendingForecasts, RollingMAE, Scores


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
    pending.add(ints(0), ints(10), np.arange(1.0, 13.0)[None, :])
    assert as_tuples(pending.score(ints(0), ints(13), floats(7.5))) == [(0, 3, 3.0 - 7.5)]


def test_scored_only_after_and_within_the_horizon() -> None:
    pending = PendingForecasts(horizon=12)
    pending.add(ints(0), ints(100), np.arange(1.0, 13.0)[None, :])
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
    pending.add(ints(0), ints(10), floats(1.0, 2.0, 3.0)[None, :])
    # slot 20 shares ring rows with slots 17..19 but nothing was made there
    assert len(pending.score(ints(0), ints(20), floats(5.0))) == 0
    assert len(pending.score(ints(0), ints(14), floats(5.0))) == 0
    # and a forecast overwritten by one made `horizon` slots later is gone
    pending.add(ints(0), ints(13), floats(7.0, 8.0, 9.0)[None, :])
    assert as_tuples(pending.score(ints(0), ints(12), floats(1.0))) == []
    assert as_tuples(pending.score(ints(0), ints(14), floats(1.0))) == [(0, 1, 6.0)]


def test_other_sensors_are_not_scored_against() -> None:
    pending = PendingForecasts(horizon=2)
    pending.add(ints(0), ints(10), floats(1.0, 2.0)[None, :])
    assert len(pending.score(ints(1), ints(11), floats(5.0))) == 0


def test_nothing_pending_at_the_first_slots_of_the_epoch() -> None:
    pending = PendingForecasts(horizon=2)
    assert as_tuples(pending.score(ints(0, 0), ints(0, 1), floats(5.0, 6.0))) == []


def test_growth_past_the_initial_capacity_keeps_what_was_pending() -> None:
    pending = PendingForecasts(horizon=2, capacity=2)
    pending.add(ints(0, 1), ints(10, 10), floats(1.0, 2.0, 3.0, 4.0).reshape(2, 2))
    pending.add(ints(6), ints(10), floats(5.0, 6.0)[None, :])
    scores = pending.score(ints(0, 1, 6, 9), ints(12, 11, 11, 11), floats(0.0, 0.0, 1.0, 1.0))
    assert as_tuples(scores) == [(0, 2, 2.0), (1, 1, 3.0), (6, 1, 4.0)]
    pending.add(ints(40), ints(11), floats(8.0, 9.0)[None, :])  # past the doubled capacity
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


def scores(sensors: np.ndarray, horizons: np.ndarray, errors: np.ndarray) -> Scores:
    return Scores(sensors, horizons, errors, np.arange(len(errors)))
