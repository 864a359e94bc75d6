"""The universal model's inputs, network and export: scale-free, step-aware, never the future."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.universal_export import export_universal, parity_batch
from models.universal import UniversalConfig, UniversalForecaster
from models.universal_features import lag, season_steps
from stream_app.core.card import ModelCard, ModelContractError
from stream_app.core.contexts import (
    SCALE_FLOOR,
    calendar,
    context_stats,
    neighbour_context,
    normalised,
    rolling_stats,
)
from stream_app.core.forecasters import WindowBatch
from stream_app.core.forecasters import season_steps as runtime_season_steps
from stream_app.core.onnx_forecaster import OnnxForecaster
from stream_app.core.records import Incoming, format_ts

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
        value, present = lag(z, seen, torch.tensor([[float(season)]]), steps, context)
        assert (value[present > 0] <= context - 1).all()  # at or before the origin
        h = steps[present[0] > 0]
        want = (context - 1) + h - season * torch.ceil(h / season)
        assert torch.equal(value[0][present[0] > 0], want)


def test_forecasts_scale_with_the_readings_at_any_magnitude_and_quantiles_are_ordered(
    small_model: UniversalForecaster,
) -> None:
    """At any magnitude (concentrations in kg/m3 as well as power in W): only a context of
    zeros has no scale of its own, and is forecast as zeros."""
    feeds = parity_batch(SMALL.context, 64, seed=3)
    base = run(small_model, feeds)
    for factor in (1e-9, 10.0, 1e9):
        scaled = run(small_model, {**feeds, "context": feeds["context"] * np.float32(factor)})
        np.testing.assert_allclose(scaled / factor, base, rtol=1e-3, atol=1e-3, err_msg=factor)
    assert (base[:, 0] <= base[:, 1]).all() and (base[:, 1] <= base[:, 2]).all()
    zeros = run(small_model, {**feeds, "context": np.zeros_like(feeds["context"])})
    assert np.abs(zeros).max() < 1e-4


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
    batch = WindowBatch(np.ones((1, SMALL.context)), np.zeros(1, np.int64), ("s",))
    with pytest.raises(ModelContractError, match="any grid step"):
        OnnxForecaster(exported).forecast(batch)
    with pytest.raises(ModelContractError, match="any grid step"):  # on the pipeline's thread
        OnnxForecaster(exported).prepare(batch)
    served = OnnxForecaster(exported).at_step(900)
    assert served.grid_step == 900 and served.forecast(batch).shape == (1, 12)
    quantiles = served.prepare(batch)()  # what the pipeline's inference thread runs
    np.testing.assert_array_equal(quantiles, served.forecast_quantiles(batch))
    assert quantiles.shape == (1, 3, 12)


def test_a_model_that_learned_another_scale_floor_is_refused(exported: Path) -> None:
    raw = json.loads((exported / "card.json").read_text())
    assert raw["normalization"] == {"method": "context", "scale_floor": SCALE_FLOOR}
    assert ModelCard.from_dict(raw).normalization.scale_floor == SCALE_FLOOR
    older = {**raw, "normalization": {"method": "context"}}  # before the key: 0.01
    with pytest.raises(ModelContractError, match=r"scale floor of 0\.01 .*stcast train --init"):
        ModelCard.from_dict(older)
    for bad in (-0.1, 1.0, "0.01", True):
        with pytest.raises(ModelContractError, match="scale_floor"):
            ModelCard.from_dict({**raw, "normalization": {"method": "context", "scale_floor": bad}})


def batch_message(step: int, values: dict[str, float], offset: int) -> Incoming:
    ts = format_ts((1_467_331_200 + 300 * step) * 1000)
    ticks = [{"sensor": s, "ts": ts, "value": v} for s, v in values.items()]
    return Incoming("t", 0, offset, b"net", json.dumps({"ticks": ticks}).encode())


def test_live_a_new_sensor_is_forecast_after_12_readings_with_intervals_and_coverage(
    exported: Path,
) -> None:
    from prometheus_client import CollectorRegistry

    from stream_app.core.metrics import Metrics
    from stream_app.core.pipeline import Pipeline

    metrics = Metrics(CollectorRegistry())
    forecaster = OnnxForecaster(exported, step_s=300)
    pipeline = Pipeline(forecaster, step_s=300, metrics=metrics, clock=lambda: 2e9)
    made = []
    for step in range(30):
        message = batch_message(step, {"a": 100.0 + step % 5, "b": 50.0}, step)
        for output in pipeline.step([message]):
            made += [json.loads(value) for _, value in output.forecasts]
    first = {sensor: min(f["ts"] for f in made if f["sensor"] == sensor) for sensor in "ab"}
    assert first == {"a": "2016-07-01T00:55:00Z", "b": "2016-07-01T00:55:00Z"}  # 12th reading
    assert len(made) == 2 * (30 - 11)
    for f in made:
        low, high = f["quantiles"]["0.1"], f["quantiles"]["0.9"]
        assert all(lo <= v <= hi for lo, v, hi in zip(low, f["values"], high, strict=True))
    coverage = metrics.registry.get_sample_value("stcast_interval_coverage", {"horizon": "1"})
    assert coverage is not None and 0.0 <= coverage <= 1.0
    without = metrics.registry.get_sample_value("stcast_forecasts_without_neighbours_total")
    assert without == len(made)  # no graph: every forecast has its neighbour input masked


def test_live_neighbours_are_the_ones_the_graph_names_whatever_their_order_in_the_batch(
    exported: Path,
) -> None:
    from stream_app.core.contexts import NeighbourTable
    from stream_app.core.pipeline import Pipeline

    def run(order: list[str], table: NeighbourTable | None) -> dict[str, list[float]]:
        pipeline = Pipeline(
            OnnxForecaster(exported, step_s=300), step_s=300, neighbours=table, clock=lambda: 2e9
        )
        last: dict[str, list[float]] = {}
        for step in range(20):
            readings = {"a": 10.0 + step, "b": 80.0 - 2 * step, "c": 30.0 + (step % 3)}
            message = batch_message(step, {s: readings[s] for s in order}, step)
            for output in pipeline.step([message]):
                for _, value in output.forecasts:
                    f = json.loads(value)
                    last[f["sensor"]] = f["values"]
        return last

    table = NeighbourTable({"a": [("b", 1.0)], "b": [("a", 0.5), ("c", 0.5)]}, 2)
    forward, backward = run(["a", "b", "c"], table), run(["c", "b", "a"], table)
    alone = run(["a", "b", "c"], None)
    for sensor in "abc":
        np.testing.assert_allclose(forward[sensor], backward[sensor], rtol=1e-12)
    assert forward["c"] == alone["c"]  # c has no neighbours in the graph
    assert forward["a"] != alone["a"] and forward["b"] != alone["b"]


def test_the_interval_is_calibrated_to_cover_80_percent_of_held_out_targets() -> None:
    from models.universal import interval_scale_for, with_interval_scale

    rng = np.random.default_rng(0)
    target = rng.normal(0.0, 2.0, 20_000)
    median = np.zeros_like(target)
    half = np.full_like(target, 1.2816)  # a 0.1-0.9 interval for unit spread: too narrow here
    scale = interval_scale_for(median, median - half, median + half, target)
    assert scale == pytest.approx(2.0, rel=0.03)  # the targets spread twice as wide
    inside = np.mean(np.abs(target) <= scale * half)
    assert inside == pytest.approx(0.8, abs=0.005)
    torch.manual_seed(1)
    model = UniversalForecaster(SMALL).eval()
    feeds = parity_batch(SMALL.context, 8, 1)
    base, wide = run(model, feeds), run(with_interval_scale(model, 2.0), feeds)
    np.testing.assert_allclose(wide[:, 1], base[:, 1], rtol=1e-6)  # the median stays
    np.testing.assert_allclose(wide[:, 2] - wide[:, 1], 2 * (base[:, 2] - base[:, 1]), rtol=1e-4)
    np.testing.assert_allclose(wide[:, 1] - wide[:, 0], 2 * (base[:, 1] - base[:, 0]), rtol=1e-4)


def test_a_network_of_one_sensor_has_no_neighbours_and_is_still_forecast() -> None:
    out = neighbour_context(np.empty((0, 5)), np.full((3, 2), -1), np.zeros((3, 2)))
    assert out.shape == (3, 5) and np.isnan(out).all()


def test_a_network_version_adds_sensor_rows_that_change_nothing_until_trained(
    small_model: UniversalForecaster, tmp_path: Path
) -> None:
    from models.universal import for_sensors

    feeds = parity_batch(SMALL.context, 16, seed=2)
    own = for_sensors(small_model, 3).eval()
    sensor = torch.tensor([0, 1, 2, 3] * 4)  # 3: the row of a sensor it does not know
    names = ("context", "step_s", "calendar", "neighbours")
    with torch.no_grad():
        got = own(*(torch.from_numpy(feeds[n]) for n in names), sensor).numpy()
    np.testing.assert_allclose(got, run(small_model, feeds), rtol=1e-6, atol=1e-5)
    card = export_universal(own, tmp_path, name="net-universal", sensors=("n/a", "n/b", "n/c"))
    assert card.sensor_input == "sensor" and card.unknown_sensor_index == 3
    forecaster = OnnxForecaster(tmp_path, step_s=300)
    batch = WindowBatch(
        feeds["context"].astype(np.float64),
        np.full(16, 1467345600, dtype=np.int64),
        ("n/a", "n/b", "n/c", "elsewhere") * 4,
        feeds["neighbours"],
    )
    assert forecaster.forecast_quantiles(batch).shape == (16, 3, 12)


def test_a_second_holdout_is_never_a_fine_tuning_target() -> None:
    from models.finetune_universal import _Pairs, _targets_outside

    ends = np.arange(21, dtype=np.int64)
    pairs = _Pairs(ends, ends % 3, np.zeros((21, 3), dtype=np.float32))
    kept = _targets_outside(pairs, range(10, 12), horizon=3)
    # a window ending at t has its targets at t+1..t+3: those ending at 7 to 10 reach 10 or 11
    assert kept.ends.tolist() == [*range(7), *range(11, 21)]
    assert kept.sensors.tolist() == [e % 3 for e in kept.ends.tolist()]


def test_exporting_again_writes_the_checkpoints_graph_and_keeps_the_card(
    small_model: UniversalForecaster, tmp_path: Path
) -> None:
    import hashlib

    from export.torch_export import ParityError
    from export.universal_export import export_again
    from models.universal import save_universal

    torch.manual_seed(1)
    other = UniversalForecaster(SMALL).eval()  # its graph, beside the small model's checkpoint
    export_universal(other, tmp_path, training={"note": "for the tests"})
    save_universal(small_model, tmp_path / "checkpoint.pt", {})
    before = json.loads((tmp_path / "card.json").read_text())
    feeds = parity_batch(SMALL.context, 8, seed=3)
    batch = WindowBatch(
        feeds["context"].astype(np.float64),
        np.full(8, 1467345600, dtype=np.int64),
        ("s",) * 8,
        feeds["neighbours"],
    )
    wrong = OnnxForecaster(tmp_path, step_s=300).forecast_quantiles(batch)
    with pytest.raises(ParityError):  # a failed check changes nothing
        export_again(tmp_path, tolerance=-1.0)
    assert json.loads((tmp_path / "card.json").read_text()) == before

    digest = export_again(tmp_path)

    after = json.loads((tmp_path / "card.json").read_text())
    assert digest == hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest()
    assert after == {**before, "onnx_sha256": digest} and digest != before["onnx_sha256"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["card.json", "checkpoint.pt", "model.onnx"]
    got = OnnxForecaster(tmp_path, step_s=300).forecast_quantiles(batch)
    want = run(
        small_model,
        {
            **feeds,
            "step_s": np.full((8, 1), 300, np.float32),
            "calendar": calendar(np.full(8, 1467345600, dtype=np.int64), True),
        },
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert not np.allclose(wrong, want, rtol=1e-4, atol=1e-3)


def test_a_shared_neighbour_is_read_once_per_slot_for_every_sensor_that_has_it() -> None:
    from stream_app.core.contexts import NeighbourTable
    from stream_app.core.windows import RollingWindow

    windows = {}
    for name, level in (("n", 10.0), ("m", 50.0)):
        windows[name] = RollingWindow(length=4)
        for slot in range(4):
            windows[name].add(slot, level + slot * slot)
    asked: list[str] = []

    def window_of(sensor: str) -> RollingWindow | None:
        asked.append(sensor)
        return windows.get(sensor)

    table = NeighbourTable(
        {"a": [("n", 1.0)], "b": [("n", 1.0), ("m", 3.0)], "c": [("gone", 1.0), ("n", 2.0)]}, k=2
    )
    got = table.context(["a", "b", "c", "a"], [3, 3, 3, 2], window_of, 4)
    assert sorted(asked) == ["gone", "m", "n", "n"]  # n at slots 3 and 2, the others once
    n, m = (normalised(np.array([windows[s].values]))[0] for s in ("n", "m"))
    np.testing.assert_array_equal(got[0], n)
    np.testing.assert_allclose(got[1], (n + 3 * m) / 4, rtol=1e-6)
    np.testing.assert_array_equal(got[2], n)  # the neighbour it lacks does not count
    np.testing.assert_array_equal(got[3], normalised(np.array([[np.nan, 10, 11, 14]]))[0])


def test_the_networks_clock_is_what_the_model_reads_live_and_offline() -> None:
    """A network on Pacific standard time (``Etc/GMT+8``), its ticks stamped in UTC: with
    ``STCAST_TIMEZONE`` the bundled model forecasts them as it forecasts the same readings
    stamped on the local clock, live (the pipeline) and offline (``evaluate``); without it,
    otherwise (its time of day is eight hours off)."""
    from dataclasses import replace
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from stream_app.bundled import model_path
    from stream_app.core.pipeline import Pipeline
    from stream_app.offline.datasets import bundled_dataset_path, load_dataset
    from stream_app.offline.evaluation import evaluate

    pacific, eight_h = ZoneInfo("Etc/GMT+8"), 8 * 3600
    local = load_dataset(bundled_dataset_path())
    utc = replace(local, start=local.start + timedelta(seconds=eight_h))

    def live(dataset: object, zone: ZoneInfo | None) -> list[list[float]]:
        pipeline = Pipeline(
            OnnxForecaster(model_path("universal"), step_s=300), step_s=300, zone=zone,
            clock=lambda: 2e9,
        )  # fmt: skip
        made = []
        start = int(dataset.start.timestamp())  # type: ignore[attr-defined]
        for step in range(40):
            ts = format_ts((start + 300 * step) * 1000)
            ticks = [{"sensor": f"s{n}", "ts": ts, "value": float(local.values[step, n, 0])}
                     for n in range(3)]  # fmt: skip
            message = Incoming("t", 0, step, b"net", json.dumps({"ticks": ticks}).encode())
            for output in pipeline.step([message]):
                made += [json.loads(value)["values"] for _, value in output.forecasts]
        return made

    at_local = live(local, None)
    assert len(at_local) == 3 * (40 - 11)
    assert live(utc, pacific) == at_local
    assert live(utc, None) != at_local
    offline_local = evaluate(model_path("universal"), local, "basicts").metrics["model"]
    assert evaluate(model_path("universal"), utc, "basicts", zone=pacific).metrics["model"] == (
        offline_local
    )
