"""One contract suite, run against every forecaster (river's estimator checks, for forecasters)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stream_app.core.forecasters import Forecaster, Persistence, SeasonalNaive, WindowBatch
from stream_app.core.onnx_forecaster import OnnxForecaster

START = 1_467_331_200  # 2016-07-01T00:00:00Z
STEP_S = 300
# Batched GEMMs may sum in another order than a batch of one: equal up to float32 rounding.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-4}

FACTORIES: dict[str, Callable[[Path], Forecaster]] = {
    "persistence": lambda _: Persistence(horizon=12, window=12),
    "seasonal-naive": lambda _: SeasonalNaive(season_steps=24, horizon=12),
    # a horizon longer than the season repeats it (daily data: a week of 7 steps, horizon 12)
    "seasonal-naive-weekly-daily": lambda _: SeasonalNaive.for_step(86_400, horizon=12),
    "onnx-seed-lstm": lambda model_dir: OnnxForecaster(model_dir, provider="cpu"),
}


@pytest.fixture(params=sorted(FACTORIES), scope="module")
def forecaster(request: pytest.FixtureRequest) -> Forecaster:
    model_dir: Path = request.getfixturevalue("seed_model_dir")
    return FACTORIES[request.param](model_dir)


def windows_for(forecaster: Forecaster, n: int, seed: int = 0) -> WindowBatch:
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 600.0, (n, forecaster.window))
    last_ts = (START + STEP_S * rng.integers(0, 10_000, n)).astype(np.int64)
    sensors = tuple(f"pems08/{i}" for i in rng.integers(0, 180, n))  # a few unknown ones too
    return WindowBatch(values, last_ts, sensors)


def test_satisfies_the_protocol(forecaster: Forecaster) -> None:
    assert isinstance(forecaster, Forecaster)
    for size in (forecaster.window, forecaster.horizon):
        assert isinstance(size, int) and not isinstance(size, bool) and size > 0
    assert re.fullmatch(r"[^@\s]+@[^@\s]+", forecaster.model_id)
    assert isinstance(forecaster.provider, str) and forecaster.provider


def test_forecast_shape_dtype_finite(forecaster: Forecaster) -> None:
    for n in (1, 7, 64):
        out = forecaster.forecast(windows_for(forecaster, n))
        assert out.shape == (n, forecaster.horizon)
        assert out.dtype == np.float64
        assert np.isfinite(out).all()


def test_deterministic(forecaster: Forecaster) -> None:
    batch = windows_for(forecaster, 16)
    np.testing.assert_array_equal(forecaster.forecast(batch), forecaster.forecast(batch))


def test_rows_are_independent(forecaster: Forecaster) -> None:
    batch = windows_for(forecaster, 32, seed=1)
    other = windows_for(forecaster, 32, seed=2)
    keep = np.arange(32) < 5
    mixed = WindowBatch(
        np.where(keep[:, None], batch.values, other.values),
        np.where(keep, batch.last_ts, other.last_ts),
        batch.sensors[:5] + other.sensors[5:],
    )
    np.testing.assert_allclose(
        forecaster.forecast(mixed)[:5], forecaster.forecast(batch)[:5], **TOLERANCE
    )
    alone = WindowBatch(batch.values[3:4], batch.last_ts[3:4], batch.sensors[3:4])
    np.testing.assert_allclose(
        forecaster.forecast(alone)[0], forecaster.forecast(batch)[3], **TOLERANCE
    )


def test_empty_batch(forecaster: Forecaster) -> None:
    empty = WindowBatch(np.empty((0, forecaster.window)), np.empty(0, dtype=np.int64), ())
    out = forecaster.forecast(empty)
    assert out.shape == (0, forecaster.horizon)
