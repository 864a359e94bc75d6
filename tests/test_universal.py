"""The universal model's inputs, network and export: scale-free, step-aware, never the future."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.universal_export import export_universal, parity_batch
from models.universal import UniversalConfig, UniversalForecaster, _lag, season_steps
from stream_app.core.card import ModelCard, ModelContractError
from stream_app.core.contexts import (
    calendar,
    context_stats,
    neighbour_context,
    normalised,
    rolling_stats,
)
from stream_app.core.forecasters import WindowBatch
from stream_app.core.forecasters import season_steps as runtime_season_steps
from stream_app.core.onnx_forecaster import OnnxForecaster

SMALL = UniversalConfig(context=48, horizon=12, patch=12, d_model=16, hidden=16, decoder=16)


@pytest.fixture(scope="module")
def small_model() -> UniversalForecaster:
    torch.manual_seed(0)
    return UniversalForecaster(SMALL).eval()


@pytest.fixture(scope="module")
def exported(small_model: UniversalForecaster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("universal")
    export_universal(small_model, out, training={"note": "untrained, for the tests"})
    return out


def run(model: UniversalForecaster, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = ("context", "step_s", "calendar", "neighbours")
    with torch.no_grad():
        out: np.ndarray = model(*(torch.from_numpy(feeds[n]) for n in names)).numpy()
    return out


def test_rolling_stats_are_the_window_stats() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(50, 9, (400, 3))
    x[rng.random(x.shape) < 0.2] = np.nan
    mean, scale = rolling_stats(x, 48)
    for t in (0, 10, 47, 48, 399):
        m, s = context_stats(x[max(0, t - 47) : t + 1].T)
        np.testing.assert_allclose(mean[t], m, rtol=1e-9)
        np.testing.assert_allclose(scale[t], s, rtol=1e-9)


def test_neighbour_context_weights_the_present_neighbours_and_is_nan_without_any() -> None:
    contexts = np.array([[1.0, 2.0, 3.0, np.nan], [10.0, 30.0, 20.0, 40.0]])
    z = normalised(contexts)
    out = neighbour_context(contexts, np.array([[0, 1], [-1, -1]]), np.array([[0.25, 0.75]] * 2))
    np.testing.assert_allclose(out[0, :3], 0.25 * z[0, :3] + 0.75 * z[1, :3], rtol=1e-6)
    assert out[0, 3] == pytest.approx(z[1, 3])  # the one neighbour with a reading there
    assert np.isnan(out[1]).all()


def test_an_unknown_calendar_is_zeroed() -> None:
    known, nominal = calendar(np.array([1467345600, 1467345600]), np.array([True, False]))
    assert known.tolist() == [pytest.approx(4 / 24), 4.0, 1.0]
    assert nominal.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("step_s", "season"), [(60, 1440), (300, 288), (900, 96), (3600, 24), (86400, 7), (604800, 52)]
)
def test_the_season_fits_the_step_in_the_graph_as_in_the_runtime(step_s: int, season: int) -> None:
    assert runtime_season_steps(step_s) == season
    assert season_steps(torch.tensor([[float(step_s)]])).item() == season


def test_a_seasonal_lag_never_reads_after_the_origin() -> None:
    context, horizon = 48, 12
    z = torch.arange(context, dtype=torch.float32)[None, :]  # z = position in the context
    seen = torch.ones_like(z, dtype=torch.bool)
    steps = torch.arange(1, horizon + 1, dtype=torch.float32)
    for season in (1, 5, 7, 24):
        value, present = _lag(z, seen, torch.tensor([[float(season)]]), steps, context)
        assert (value[present > 0] <= context - 1).all()  # at or before the origin
        h = steps[present[0] > 0]
        want = (context - 1) + h - season * torch.ceil(h / season)
        assert torch.equal(value[0][present[0] > 0], want)


def test_forecasts_scale_with_the_readings_and_quantiles_are_ordered(
    small_model: UniversalForecaster,
) -> None:
    feeds = parity_batch(SMALL.context, 64, seed=3)
    base = run(small_model, feeds)
    scaled = run(small_model, {**feeds, "context": feeds["context"] * 10})
    np.testing.assert_allclose(scaled, 10 * base, rtol=1e-3, atol=1e-3)
    assert (base[:, 0] <= base[:, 1]).all() and (base[:, 1] <= base[:, 2]).all()


def test_a_sensor_warming_up_is_forecast_from_its_few_readings(
    small_model: UniversalForecaster,
) -> None:
    feeds = parity_batch(SMALL.context, 4, seed=1)
    feeds["context"][:, :-12] = np.nan
    feeds["neighbours"][:] = np.nan
    assert np.isfinite(run(small_model, feeds)).all()


def test_the_export_is_a_universal_card_the_runtime_serves_at_any_step(
    small_model: UniversalForecaster, exported: Path
) -> None:
    card = ModelCard.load(exported)
    assert (card.kind, card.step_s, card.window, card.quantiles) == (
        "universal",
        0,
        48,
        (0.1, 0.5, 0.9),
    )
    assert card.to_dict()["step_s"] == "any"
    feeds = parity_batch(SMALL.context, 32, seed=5)
    for step in (300, 86400):
        forecaster = OnnxForecaster(exported, step_s=step)
        last_ts = np.full(32, 1467345600, dtype=np.int64)
        batch = WindowBatch(
            feeds["context"].astype(np.float64), last_ts, ("s",) * 32, feeds["neighbours"]
        )
        got = forecaster.forecast_quantiles(batch)
        want = run(
            small_model,
            {
                **feeds,
                "step_s": np.full((32, 1), step, np.float32),
                "calendar": calendar(last_ts, True),
            },
        )
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(forecaster.forecast(batch), got[:, 1], rtol=1e-12)


def test_a_universal_model_needs_to_be_told_the_step(exported: Path) -> None:
    with pytest.raises(ModelContractError, match="any grid step"):
        OnnxForecaster(exported)
