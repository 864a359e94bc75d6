"""Offline evaluation: metric values by hand, baselines, the model through OnnxForecaster."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from export.onnx_graphs import build_seed_lstm
from stream_app.core.forecasters import WindowBatch
from stream_app.core.onnx_forecaster import OnnxForecaster
from stream_app.core.records import format_ts
from stream_app.offline.datasets import GridDataset, bundled_dataset_path, load_dataset
from stream_app.offline.eval_baselines import (
    baseline_forecasts,
    evaluation_samples,
    historical_average,
)
from stream_app.offline.eval_metrics import basicts_metrics, score, tgcn_metrics
from stream_app.offline.evaluation import evaluate, format_table, mae_from_forecasts
from stream_app.offline.protocols import Split, split

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # a Thursday: time-of-week slot 0 is step 0
Forecasts = list[tuple[str, int, list[float]]]


def grid(values: np.ndarray, step_s: int, name: str = "toy") -> GridDataset:
    """A one-channel dataset from a (T, N) array."""
    sensors = tuple(f"{name}/{i}" for i in range(values.shape[1]))
    return GridDataset(name, values[:, :, None].astype(np.float64), EPOCH, step_s, sensors, ("v",))


def toy_split(window: int, horizon: int, train: int, test: range, **kw: object) -> Split:
    fields: dict[str, Any] = {
        "reported": tuple(range(1, horizon + 1)),
        "cumulative": False,
        "masked": True,
    }
    fields.update(kw)
    return Split(
        "basicts",
        window,
        horizon,
        range(train),
        range(train, test.start),
        test,
        **fields,
        target_channel=0,
    )


@pytest.fixture(scope="module")
def pems08() -> GridDataset:
    return load_dataset(bundled_dataset_path())


@pytest.fixture(scope="module")
def sz_like() -> GridDataset:
    """SZ-taxi's name and 15-minute grid (so the tgcn protocol's window 4) on 5 random sensors."""
    rng = np.random.default_rng(1)
    return grid(rng.uniform(0.0, 40.0, (200, 5)), 900, name="sz_taxi")


@pytest.fixture(scope="module")
def direct(seed_model_dir: Path, pems08: GridDataset) -> Forecasts:
    """The seed model's forecasts for every PEMS08 basicts test window, one call per window end."""
    model = OnnxForecaster(seed_model_dir, provider="cpu")
    series, times = pems08.values[:, :, 0], pems08.timestamps()
    out: Forecasts = []
    for t in split(pems08, "basicts").sample_ends(range(700, 1282)):  # val and test windows
        batch = WindowBatch(
            series[t - 11 : t + 1].T.copy(),
            np.full(170, times[t], dtype=np.int64),
            pems08.sensors,
        )
        pred = model.forecast(batch)
        out += [(s, int(times[t]), p.tolist()) for s, p in zip(pems08.sensors, pred, strict=True)]
    return out


def test_persistence_on_pems08_matches_the_measured_figures(pems08: GridDataset) -> None:
    report = evaluate(None, pems08, "basicts")
    mae = report.metrics["persistence"]["mae"]
    assert mae[0] == pytest.approx(16.45, abs=0.01)
    assert mae[11] == pytest.approx(40.028, abs=0.01)
    assert list(report.metrics) == [
        "persistence",
        "seasonal_naive",
        "historical_average",
        "window_mean",
    ]
    assert (report.pairs, report.skipped) == (245 * 170, 0)


def test_basicts_metrics_ignore_zero_and_missing_targets() -> None:
    pred = np.array([[5.0], [1.0], [6.0], [9.0]])
    target = np.array([[0.0], [2.0], [4.0], [np.nan]])  # errors 1 and 2 count
    got = score(pred, target, toy_split(1, 1, 0, range(0)))
    assert got == {"mae": [1.5], "rmse": [math.sqrt(2.5)], "mape": [50.0]}


def test_tgcn_metrics_against_hand_computed_values() -> None:
    y, y_hat = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 3.0, 4.0, 5.0])
    got = tgcn_metrics(y, y_hat)  # every error is -1: sse 4, sum((y - 2.5)^2) = 5
    assert got["mae"] == 1.0 and got["rmse"] == 1.0
    assert got["accuracy"] == pytest.approx(1 - 2 / math.sqrt(30))
    assert got["r2"] == pytest.approx(0.2)
    assert got["var"] == pytest.approx(1.0)  # a constant bias explains no variance away
    assert basicts_metrics(y, y_hat)["mape"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_tgcn_pools_steps_one_to_k_and_keeps_zero_targets() -> None:
    target = np.array([[0.0, 10.0], [2.0, 20.0]])
    pred = target + np.array([[1.0, 3.0], [1.0, 3.0]])
    cumulative = toy_split(1, 2, 0, range(0), cumulative=True, masked=False)
    got = score(pred, target, cumulative)
    assert got["mae"] == [1.0, 2.0]
    assert got["rmse"] == pytest.approx([1.0, math.sqrt(5.0)])
    assert set(got) == {"mae", "rmse", "accuracy", "r2", "var"}
    assert score(pred, target, toy_split(1, 2, 0, range(0)))["mae"] == [1.0, 3.0]


def test_baselines_and_holes_in_the_window() -> None:
    values = np.arange(24.0)[:, None] + np.array([0.0, 100.0])  # 6-hour steps: a day is 4
    values[9, 1] = np.nan  # sensor 1's windows that hold step 9 are skipped
    values[4, 0] = np.nan  # sensor 0: no seasonal value for target step 8
    data = grid(values, 21_600)
    parts = toy_split(2, 2, 8, range(8, 24))
    samples = evaluation_samples(data, parts)
    assert samples.skipped == 2  # sensor 1's window ends 9 and 10
    got = baseline_forecasts(data, parts, samples)
    first = (samples.ends == 7) & (samples.sensors == 0)  # window 6..7, targets 8..9
    assert got["persistence"][first].tolist() == [[7.0, 7.0]]
    assert got["window_mean"][first].tolist() == [[6.5, 6.5]]
    np.testing.assert_equal(got["seasonal_naive"][first], [[np.nan, 5.0]])
    mae = score(got["seasonal_naive"], samples.targets, parts)["mae"]
    assert mae == [4.0, 4.0]  # the excluded target leaves no mark: a day back is always 4 less


def test_historical_average_falls_back_to_time_of_day_then_sensor_mean() -> None:
    values = np.arange(20.0)[:, None] * np.array([1.0, 10.0])  # 12-hour steps: 14 slots a week
    values[1:10:2, 1] = np.nan  # sensor 1 has no night readings in train
    data = grid(values, 43_200)
    parts = toy_split(1, 1, 10, range(11, 17))  # train holds week slots 0..9 only
    got = historical_average(data, parts, evaluation_samples(data, parts))
    # targets 11..16: slots 11..13 missing -> time of day (even steps' mean 4, odd 5);
    # slots 0..2 are in train; sensor 1's nights -> its train mean, 40
    assert got[:, 0].reshape(6, 2).T.tolist() == [[5, 4, 5, 0, 1, 2], [40, 40, 40, 0, 40, 20]]


def test_model_metrics_equal_direct_onnx_forecasts(
    seed_model_dir: Path, pems08: GridDataset, direct: Forecasts, capsys: pytest.CaptureFixture[str]
) -> None:
    # 41650 pairs: a ragged last chunk, counted in full by the progress bar
    report = evaluate(seed_model_dir, pems08, "basicts", chunk=1000, progress=True)
    last_bar = capsys.readouterr().err.split("\r")[-1]
    assert "forecasting: 100%" in last_bar and "41650/41650 " in last_bar
    parts = split(pems08, "basicts")
    test_ends = set(parts.sample_ends(parts.test).tolist())
    start, series = int(pems08.start.timestamp()), pems08.values[:, :, 0]
    errors: list[list[float]] = [[] for _ in range(12)]
    for sensor, ts, pred in direct:
        t, n = (ts - start) // 300, int(sensor.split("/")[1])
        if t not in test_ends:
            continue
        for k in range(12):
            if series[t + k + 1, n] != 0:
                errors[k].append(abs(pred[k] - series[t + k + 1, n]))
    expected = [float(np.mean(e)) for e in errors]
    np.testing.assert_allclose(report.metrics["model"]["mae"], expected, rtol=1e-6)
    assert next(iter(report.metrics)) == "model"


def test_mae_from_forecasts_equals_evaluate(
    seed_model_dir: Path, pems08: GridDataset, direct: Forecasts, capsys: pytest.CaptureFixture[str]
) -> None:
    report = evaluate(seed_model_dir, pems08, "basicts")
    assert not capsys.readouterr().err  # no bar unless asked (a retrain worker's comparison)
    live = mae_from_forecasts(pems08, split(pems08, "basicts"), direct)  # val ones are ignored
    np.testing.assert_allclose(live, report.metrics["model"]["mae"], rtol=1e-6)


def test_a_model_of_another_protocol_is_refused(tmp_path: Path, sz_like: GridDataset) -> None:
    model = build_seed_lstm(tmp_path, sensors=sz_like.sensors, step_s=900)  # window 12
    expected = "tgcn protocol on sz_taxi uses window 4, horizon 4; the model has window 12"
    with pytest.raises(ValueError, match=expected):
        evaluate(model, sz_like, "tgcn")


def test_a_model_of_another_step_is_refused(tmp_path: Path, sz_like: GridDataset) -> None:
    model = build_seed_lstm(tmp_path, sensors=sz_like.sensors, window=4, horizon=4)
    with pytest.raises(ValueError, match="900 s step; the model was trained on a 300 s grid"):
        evaluate(model, sz_like, "tgcn")


def test_a_model_of_other_sensors_is_refused(tmp_path: Path, sz_like: GridDataset) -> None:
    others = tuple(f"pems08/{i}" for i in range(5))
    model = build_seed_lstm(tmp_path, sensors=others, window=4, horizon=4, step_s=900)
    with pytest.raises(ValueError, match="knows none of sz_taxi's sensors"):
        evaluate(model, sz_like, "tgcn")


def test_json_shape_for_tgcn_with_a_model(tmp_path: Path, sz_like: GridDataset) -> None:
    model = build_seed_lstm(
        tmp_path, sensors=sz_like.sensors, window=4, horizon=4, step_s=900, mean=20.0, std=10.0
    )
    out = evaluate(model, sz_like, "tgcn").to_json()
    assert list(out) == ["dataset", "protocol", "horizons", "metrics", "pairs", "relative_mae"]
    model_mae = sum(out["metrics"]["model"]["mae"])
    assert out["relative_mae"]["persistence"] == model_mae / sum(
        out["metrics"]["persistence"]["mae"]
    )
    assert (out["dataset"], out["protocol"]) == ("sz_taxi", "tgcn")
    assert out["horizons"] == ["15min", "30min", "45min", "60min"]
    assert list(out["metrics"]) == [
        "model",
        "persistence",
        "seasonal_naive",
        "historical_average",
        "window_mean",
    ]
    for by_metric in out["metrics"].values():
        assert list(by_metric) == ["mae", "rmse", "accuracy", "r2", "var"]
        assert all(len(values) == 4 for values in by_metric.values())
    json.dumps(out, allow_nan=False)


def test_json_and_table_for_basicts(pems08: GridDataset) -> None:
    report = evaluate(None, pems08, "basicts")
    out = report.to_json()
    assert out["horizons"] == [f"H{k}" for k in range(1, 13)]
    assert all(list(m) == ["mae", "rmse", "mape"] for m in out["metrics"].values())
    table = format_table(report)
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "MAPE (%)" in table and "historical_average" in table
    h12 = next(line for line in table.splitlines() if line.startswith("H12"))
    assert h12.split()[1:3] == ["40.03", "*"]  # persistence, the best at H12


def test_a_test_part_with_nothing_to_score_says_why(pems08: GridDataset) -> None:
    """Not a table of dashes: 40 steps leave the test part 8, too few for a window and its
    targets; a test part whose every window has a hole says so."""
    short = GridDataset(
        "short", pems08.values[:40, :, :1], pems08.start, 300, pems08.sensors, ("flow",)
    )
    with pytest.raises(ValueError, match=r"last 8 of 40 steps\) is too short .* at least 120"):
        evaluate(None, short, "basicts")
    holes = pems08.values[:200, :, :1].copy()
    holes[::5] = np.nan  # a missing reading every fifth step: no window of 12 is whole
    gappy = GridDataset("gappy", holes, pems08.start, 300, pems08.sensors, ("flow",))
    with pytest.raises(ValueError, match=r"holds \d+ windows, each with a missing reading"):
        evaluate(None, gappy, "basicts")


def test_a_missing_value_code_given_on_the_command_line(
    tmp_path: Path, pems08: GridDataset, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--missing-value -200`` (the UCI air file's code): the same report as the file with
    those readings left empty, and so without it (the code is found in the data); with
    another code named instead, -200 is scored as a reading."""
    from stream_app.cli import main

    flows = pems08.values[:300, :4, 0]
    coded = flows.astype(object)
    for t, s in ((250, 0), (262, 1), (281, 2), (290, 3), (100, 0)):
        coded[t, s] = -200
    times = [format_ts(int(pems08.start.timestamp() + 300 * t) * 1000) for t in range(300)]

    def write(name: str, code: str) -> str:
        rows = [",".join([times[t], *(code if v == -200 else f"{v:g}" for v in coded[t])])
                for t in range(300)]  # fmt: skip
        (tmp_path / name).write_text("ts,a,b,c,d\n" + "\n".join(rows) + "\n")
        return str(tmp_path / name)

    reports = []
    for path, extra in (
        (write("coded.csv", "-200"), ["--missing-value", "-200"]),
        (write("empty.csv", ""), []),
        (write("found.csv", "-200"), []),
        (write("raw.csv", "-200"), ["--missing-value", "-999"]),
    ):
        assert main(["evaluate", "--dataset", path, "--json", *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    cleaned, empty, found, raw = (r["metrics"] for r in reports)
    assert cleaned == empty == found
    assert raw != empty


def _served_reference(
    quantiles: np.ndarray, samples: Any, parts: Split, rate: float
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The served interval as first written: every target's arrival time sorted at once."""
    from stream_app.core.scoring import IntervalCalibration, Scores

    horizon = quantiles.shape[2]
    median, low, high = quantiles[:, 1], quantiles[:, 0].copy(), quantiles[:, -1].copy()
    targets = samples.targets
    scored = np.isfinite(targets) & (targets != 0)
    calibration = IntervalCalibration.for_levels(horizon, (0.1, 0.5, 0.9), rate)
    sensors = len(np.unique(samples.sensors))
    times = samples.target_steps()
    pair, step = np.nonzero(scored)
    by_arrival = np.argsort(times[pair, step], kind="stable")
    pair, step = pair[by_arrival], step[by_arrival]
    arrivals = times[pair, step]
    order = np.argsort(samples.ends, kind="stable")
    ends = samples.ends[order]
    for now in np.unique(np.concatenate([arrivals, ends])):
        a, b = np.searchsorted(arrivals, [now, now + 1])
        if b > a:
            p, h = pair[a:b], step[a:b]
            inside = ((targets[p, h] >= low[p, h]) & (targets[p, h] <= high[p, h])).astype(float)
            calibration.update(
                Scores(samples.sensors[p], h + 1, np.zeros(b - a), np.arange(b - a), inside=inside),
                sensors,
            )
        c, d = np.searchsorted(ends, [now, now + 1])
        if d > c:
            made = order[c:d]
            low[made], high[made] = calibration.apply(
                median[made], median[made], low[made], high[made]
            )
    return low, high, [float(v) for v in calibration.scale]


def test_the_served_interval_is_calibrated_in_arrival_order_whatever_the_pairs_order() -> None:
    """``served_coverage`` walks the windows by the step they end at instead of sorting every
    target's arrival (a test part of millions of windows held a dozen index arrays per target):
    the same intervals as that reference, step for step, also with the pairs shuffled and with
    missing and zero targets."""
    from stream_app.offline.eval_baselines import Samples
    from stream_app.offline.evaluation import served_coverage

    rng = np.random.default_rng(3)
    values = rng.gamma(4.0, 10.0, size=(400, 7))
    values[rng.random(values.shape) < 0.05] = np.nan
    values[rng.random(values.shape) < 0.02] = 0.0
    data = grid(values, 300)
    parts = toy_split(12, 6, 300, range(300, 400))
    samples = evaluation_samples(data, parts)
    shuffled = rng.permutation(len(samples))
    samples = Samples(
        samples.inputs[shuffled], samples.targets[shuffled], samples.ends[shuffled],
        samples.sensors[shuffled], samples.skipped,
    )  # fmt: skip
    last = samples.inputs[:, -1:]
    spread = rng.gamma(2.0, 5.0, size=(len(samples), 1, 1)) * np.array([-1.0, 0.0, 1.0])[:, None]
    quantiles = last[:, None, :] + spread + np.zeros((1, 3, parts.horizon))
    low, high, scale = _served_reference(quantiles, samples, parts, 0.05)
    served = served_coverage(quantiles, (0.1, 0.5, 0.9), samples, parts, 0.05)
    scored = np.isfinite(samples.targets) & (samples.targets != 0)
    inside = (samples.targets >= low) & (samples.targets <= high) & scored
    assert served["overall"] == inside.sum() / scored.sum()
    assert served["per_step"] == list(inside.sum(axis=0) / scored.sum(axis=0))
    assert served["scale"] == scale
    assert 0.3 < served["overall"] < 0.98


def test_offline_neighbour_context_reads_a_shared_neighbour_once_with_the_same_numbers() -> None:
    """``neighbour_contexts`` normalises each (step, neighbour) window once however many pairs
    share it: the same numbers as each pair's neighbours taken one by one, with a missing
    neighbour (-1), a sensor without any, pairs out of order and NaN in the series."""
    from stream_app.core.contexts import neighbour_context
    from stream_app.offline.model_inputs import neighbour_contexts, padded

    rng = np.random.default_rng(5)
    series = rng.gamma(3.0, 20.0, size=(60, 5))
    series[rng.random(series.shape) < 0.1] = np.nan
    pad = padded(series, 16)
    index = np.array([[1, 2], [0, -1], [0, 1], [-1, -1], [3, 2]], dtype=np.int64)
    weight = rng.random(index.shape).astype(np.float32)
    ends = np.array([30, 30, 30, 30, 30, 12, 59, 12, 40, 30], dtype=np.int64)
    sensors = np.array([0, 1, 2, 3, 4, 2, 0, 4, 1, 0], dtype=np.int64)
    got = neighbour_contexts(pad, ends, sensors, 16, index, weight)
    for i, (end, sensor) in enumerate(zip(ends.tolist(), sensors.tolist(), strict=True)):
        own = index[sensor : sensor + 1]
        windows = pad[end : end + 16].T  # every sensor's window ending at ``end``
        want = neighbour_context(windows, own, weight[sensor : sensor + 1])[0]
        np.testing.assert_array_equal(got[i], want)
    assert np.isnan(got[3]).all() and np.isfinite(got[0]).any()


def test_the_channel_to_forecast_is_named_on_the_command_line(
    tmp_path: Path, pems08: GridDataset, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--forecast-channel speed`` on a long file of flows and speeds scores the speeds: the
    same report as a file of the speeds alone; the first channel is the default."""
    from stream_app.cli import main

    flows, speeds = pems08.values[:300, :4, 0], pems08.values[:300, :4, 2]
    times = [format_ts(int(pems08.start.timestamp() + 300 * t) * 1000) for t in range(300)]
    both = ["station,ts,flow,speed"] + [
        f"s{n},{times[t]},{flows[t, n]:g},{speeds[t, n]:g}" for t in range(300) for n in range(4)
    ]
    alone = ["station,ts,speed"] + [
        f"s{n},{times[t]},{speeds[t, n]:g}" for t in range(300) for n in range(4)
    ]
    (tmp_path / "both.csv").write_text("\n".join(both) + "\n")
    (tmp_path / "alone.csv").write_text("\n".join(alone) + "\n")
    reports = []
    for path, extra in (
        ("both.csv", ["--forecast-channel", "speed"]),
        ("alone.csv", []),
        ("both.csv", []),
    ):
        assert main(["evaluate", "--dataset", str(tmp_path / path), "--json", *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out)["metrics"])
    speed, speed_alone, flow = reports
    assert speed == speed_alone
    assert flow != speed
