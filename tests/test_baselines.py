"""Seasonal naive: a season that fits every step, and never a value after the forecast origin."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from stream_app.core.forecasters import DAY_S, WEEK_S, SeasonalNaive, WindowBatch, season_steps
from stream_app.offline.datasets import GridDataset
from stream_app.offline.eval_baselines import (
    baseline_forecasts,
    evaluation_samples,
    seasonal_naive,
)
from stream_app.offline.eval_metrics import score
from stream_app.offline.evaluation import evaluate
from stream_app.offline.protocols import Split, split

START = datetime(2000, 1, 3, tzinfo=UTC)


def grid(values: np.ndarray, step_s: int) -> GridDataset:
    sensors = tuple(f"toy/{i}" for i in range(values.shape[1]))
    return GridDataset("toy", values[:, :, None].astype(np.float64), START, step_s, sensors, ("v",))


def toy_split(window: int, horizon: int, n_steps: int) -> Split:
    train, test = range(n_steps // 2), range(n_steps // 2, n_steps)
    reported = tuple(range(1, horizon + 1))
    return Split("basicts", window, horizon, train, range(0), test, reported, False, False, 0)


@pytest.mark.parametrize(
    ("step_s", "season"),
    [
        (60, 1440), (300, 288), (420, 206), (900, 96), (3_600, 24), (7 * 3_600, 3),
        (DAY_S, 7), (2 * DAY_S, 4), (3 * DAY_S, 2), (WEEK_S, 52), (2 * WEEK_S, 26),
        (30 * DAY_S, 12), (400 * DAY_S, 1),
    ],
)  # fmt: skip
def test_the_season_fits_the_step(step_s: int, season: int) -> None:
    assert season_steps(step_s) == season


def test_a_daily_series_never_reads_after_the_origin() -> None:
    # a value equal to its own step index shows where each forecast was read
    steps = np.arange(200.0)[:, None]
    data, parts = grid(steps, DAY_S), toy_split(7, 12, 200)
    samples = evaluation_samples(data, parts)
    got = seasonal_naive(data, parts, samples)
    h = np.arange(1, 13)
    expected = samples.ends[:, None] + h - 7 * np.ceil(h / 7)  # a week, then two, back
    np.testing.assert_array_equal(got, expected)
    assert (got <= samples.ends[:, None]).all()


def test_reading_the_future_is_not_rewarded_on_daily_data() -> None:
    # a random walk has no season: the old one-day season read t + h - 1, i.e. the future for
    # every h > 1, and scored far better than persistence; read at or before t it cannot
    rng = np.random.default_rng(3)
    walk = np.cumsum(rng.normal(size=(600, 3)), axis=0) + 100.0
    data, parts = grid(walk, DAY_S), toy_split(12, 12, 600)
    samples = evaluation_samples(data, parts)
    forecasts = baseline_forecasts(data, parts, samples)
    mae = {m: score(f, samples.targets, parts)["mae"] for m, f in forecasts.items()}
    assert all(s >= p for s, p in zip(mae["seasonal_naive"], mae["persistence"], strict=True))


def test_horizons_longer_than_the_season_repeat_it_offline_and_live() -> None:
    rng = np.random.default_rng(5)
    values = rng.uniform(0.0, 50.0, (80, 2))
    step = 6 * 3_600  # a day is 4 steps
    data, parts = grid(values, step), toy_split(4, 10, 80)
    samples = evaluation_samples(data, parts)
    offline = seasonal_naive(data, parts, samples)
    live = SeasonalNaive.for_step(step, horizon=10)
    assert (live.window, live.horizon) == (4, 10)
    windows = np.stack(
        [values[t - 3 : t + 1, s] for t, s in zip(samples.ends, samples.sensors, strict=True)]
    )
    batch = WindowBatch(windows, data.timestamps()[samples.ends], ("x",) * len(windows))
    np.testing.assert_array_equal(live.forecast(batch), offline)
    t, s = int(samples.ends[0]), int(samples.sensors[0])
    assert offline[0, 4] == values[t + 5 - 8, s]  # h = 5: two seasons back


def test_live_seasonal_naive_takes_any_horizon() -> None:
    f = SeasonalNaive(season_steps=3, horizon=7)
    out = f.forecast(WindowBatch(np.array([[1.0, 2.0, 3.0]]), np.array([0]), ("s",)))
    assert out.tolist() == [[1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]]
    with pytest.raises(ValueError, match="must be positive"):
        SeasonalNaive(season_steps=0)


def test_every_step_gets_a_seasonal_naive() -> None:
    data = grid(np.random.default_rng(0).uniform(1.0, 9.0, (400, 2)), 420)  # 7 minutes
    report = evaluate(None, data, "basicts")
    assert list(report.metrics) == ["persistence", "seasonal_naive", "window_mean"]
    daily = evaluate(None, grid(np.arange(1.0, 401.0)[:, None], DAY_S), "basicts")
    assert "seasonal_naive" in daily.metrics and "historical_average" in daily.metrics
    parts = split(grid(np.ones((400, 1)), DAY_S), "basicts")
    assert parts.horizon == 12  # longer than the week's 7 steps: the rule above applies
