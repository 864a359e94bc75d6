"""The synchronous core: exact forecasts, dead letters and metrics, whatever the batching."""

from __future__ import annotations

import base64
import itertools
import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from stream_app.core.chunks import Output
from stream_app.core.forecasters import FloatArray, Forecaster, WindowBatch
from stream_app.core.metrics import Metrics
from stream_app.core.pipeline import Pipeline
from stream_app.core.records import Incoming, forecasts_in, format_ts

T0_S = 1_467_331_200  # 2016-07-01T00:00:00Z, the first PEMS08 step
STEP_S = 300
NOW_S = T0_S + 30 * 86_400  # the injected wall clock
EMITTED_AT = "2016-07-31T00:00:00Z"
TOPIC = "stcast.ticks"
PEMS08 = Path(__file__).resolve().parents[2] / "shared" / "data" / "PEMS08" / "PEMS08.npz"


class FakeForecaster:
    """Last value plus 1, 2, ... per horizon step; NaN in step 1 for the sensors in ``nan_for``."""

    provider = "python"
    model_id = "fake@7"

    def __init__(self, window: int = 3, horizon: int = 2, nan_for: Iterable[str] = ()) -> None:
        self.window = window
        self.horizon = horizon
        self.nan_for = frozenset(nan_for)
        self.batches: list[tuple[str, ...]] = []

    def forecast(self, windows: WindowBatch) -> FloatArray:
        self.batches.append(windows.sensors)
        values = windows.values[:, -1:] + np.arange(1.0, self.horizon + 1)
        for row, sensor in enumerate(windows.sensors):
            if sensor in self.nan_for:
                values[row, 0] = np.nan
        return values


def test_the_fake_is_a_forecaster() -> None:
    assert isinstance(FakeForecaster(), Forecaster)


def make_pipeline(
    forecaster: FakeForecaster | None = None,
    registry: CollectorRegistry | None = None,
    **options: Any,
) -> Pipeline:
    return Pipeline(
        forecaster or FakeForecaster(),
        step_s=STEP_S,
        metrics=None if registry is None else Metrics(registry),
        clock=lambda: NOW_S,
        **options,
    )


def ts(step: int) -> str:
    return format_ts((T0_S + step * STEP_S) * 1000)


def tick(sensor: str, step: int, value: float | None, **extra: Any) -> dict[str, Any]:
    return {"sensor": sensor, "ts": ts(step), "value": value, **extra}


def single(item: dict[str, Any], offset: int = 0, partition: int = 0) -> Incoming:
    return Incoming(TOPIC, partition, offset, item["sensor"].encode(), json.dumps(item).encode())


def batch(items: list[dict[str, Any]], offset: int = 0, key: bytes = b"net") -> Incoming:
    return Incoming(TOPIC, 1, offset, key, json.dumps({"ticks": items}).encode())


def raw_message(value: bytes, offset: int = 99, key: bytes | None = b"k") -> Incoming:
    return Incoming(TOPIC, 2, offset, key, value)


def run(pipeline: Pipeline, messages: Sequence[Incoming]) -> list[Output]:
    return list(pipeline.step(messages))


def forecasts(outputs: Iterable[Output]) -> list[dict[str, Any]]:
    records = []
    for output in outputs:
        for key, value in output.forecasts:
            record = json.loads(value)
            assert key == record["sensor"].encode()
            records.append(record)
    return records


def dead_letters(outputs: Iterable[Output]) -> list[dict[str, Any]]:
    return [json.loads(value) for output in outputs for _, value in output.dead_letters]


def forecast(sensor: str, step: int, values: list[float], imputed: int = 0) -> dict[str, Any]:
    return {
        "sensor": sensor,
        "ts": ts(step),
        "step_s": STEP_S,
        "values": values,
        "model": "fake@7",
        "emitted_at": EMITTED_AT,
        "imputed": imputed,
    }


SERIES = {"a": [10.0, 11.0, 12.0, 13.0], "b": [20.0, 22.0, 24.0, 26.0]}
EXPECTED = [
    forecast("a", 2, [13.0, 14.0]),
    forecast("b", 2, [25.0, 26.0]),
    forecast("a", 3, [14.0, 15.0]),
    forecast("b", 3, [27.0, 28.0]),
]


def test_single_ticks_give_exact_forecasts() -> None:
    messages = [
        single(tick(sensor, step, SERIES[sensor][step]), offset=2 * step + i)
        for step in range(4)
        for i, sensor in enumerate("ab")
    ]
    pipeline = make_pipeline()
    outputs = run(pipeline, messages)
    assert forecasts(outputs) == EXPECTED
    assert dead_letters(outputs) == []
    assert pipeline.sensor_ids == ["a", "b"]


def test_tick_batches_give_the_same_forecasts() -> None:
    messages = [batch([tick(s, step, SERIES[s][step]) for s in "ab"], step) for step in range(4)]
    assert forecasts(run(make_pipeline(), messages)) == EXPECTED


def test_a_tick_batch_can_be_answered_by_one_forecast_batch_record() -> None:
    registry = CollectorRegistry()
    pipeline = make_pipeline(registry=registry, forecast_batch=True)
    messages = [batch([tick(s, step, SERIES[s][step]) for s in "ab"], step) for step in range(4)]
    messages.append(single(tick("c", 0, 1.0), offset=9))  # a single tick is not a batch
    records = [record for output in run(pipeline, messages) for record in output.forecasts]
    assert [key for key, _ in records] == [b"net", b"net"]  # steps 2 and 3: two sensors each
    assert [forecast for _, value in records for forecast in forecasts_in(value)] == EXPECTED
    assert json.loads(records[0][1])["forecasts"] == EXPECTED[:2]
    assert registry.get_sample_value("stcast_forecasts_total") == 4


def test_forecast_batches_and_single_forecasts_keep_the_order_of_their_ticks() -> None:
    pipeline = make_pipeline(forecast_batch=True)
    messages = []
    for step in range(4):
        messages.append(batch([tick(s, step, SERIES[s][step]) for s in "ab"], 2 * step))
        messages.append(single(tick("c", step, float(step)), 2 * step + 1))
    records = [record for output in run(pipeline, messages) for record in output.forecasts]
    assert [key for key, _ in records] == [b"net", b"c", b"net", b"c"]
    sensors = [[f["sensor"] for f in forecasts_in(value)] for _, value in records]
    assert sensors == [["a", "b"], ["c"], ["a", "b"], ["c"]]


def test_values_beyond_float32_are_written_as_they_are() -> None:
    messages = [single(tick("a", step, 1e300 * (step + 1)), offset=step) for step in range(3)]
    (record,) = forecasts(run(make_pipeline(), messages))
    assert record["values"] == [3e300, 3e300]  # not null (+1 and +2 vanish at this magnitude)


def test_one_step_call_per_message_gives_the_same_forecasts() -> None:
    pipeline = make_pipeline()
    outputs = []
    for step in range(4):
        outputs += run(pipeline, [batch([tick(s, step, SERIES[s][step]) for s in "ab"], step)])
    assert forecasts(outputs) == EXPECTED


def test_imputed_window_is_forecast_and_counted() -> None:
    registry = CollectorRegistry()
    pipeline = make_pipeline(registry=registry)
    messages = [single(tick("c", step, value)) for step, value in [(0, 0.0), (1, 10.0), (3, 30.0)]]
    assert forecasts(run(pipeline, messages)) == [forecast("c", 3, [31.0, 32.0], imputed=1)]
    assert registry.get_sample_value("stcast_imputed_values_total") == 1.0


def test_off_grid_timestamps_go_to_the_nearest_slot() -> None:
    pipeline = make_pipeline()
    stamps = [(T0_S + 149) * 1000, T0_S * 1000 + 449_999, T0_S * 1000 + 749_999]  # slots 0 1 2
    messages = [single({"sensor": "s", "ts": ms, "value": float(i)}) for i, ms in enumerate(stamps)]
    assert forecasts(run(pipeline, messages)) == [forecast("s", 2, [3.0, 4.0])]


# -- dead letters --------------------------------------------------------------------------------

GOOD_TS = ts(1)
CASES = [
    (b"{oops", "malformed"),
    (b"[1, 2]", "malformed"),
    (b'{"ts": "%s", "value": 1}' % GOOD_TS.encode(), "missing_field"),
    (b'{"sensor": "a", "value": 1}', "missing_field"),
    (b'{"sensor": "a", "ts": "%s"}' % GOOD_TS.encode(), "missing_field"),
    (b'{"sensor": 17, "ts": "%s", "value": 1}' % GOOD_TS.encode(), "bad_type"),
    (b'{"sensor": "a", "ts": "%s", "value": true}' % GOOD_TS.encode(), "bad_type"),
    (b'{"sensor": "a", "ts": "%s", "value": "1"}' % GOOD_TS.encode(), "bad_type"),
    (b'{"ticks": 5}', "bad_type"),
    (b'{"sensor": "a", "ts": "%s", "value": NaN}' % GOOD_TS.encode(), "non_finite"),
    (b'{"sensor": "a", "ts": "%s", "value": -Infinity}' % GOOD_TS.encode(), "non_finite"),
    (b'{"sensor": "a", "ts": "%s", "value": 1e400}' % GOOD_TS.encode(), "non_finite"),
    (b'{"sensor": "a", "ts": "2016-07-01T00:05:00", "value": 1}', "bad_timestamp"),
    (b'{"sensor": "a", "ts": "soon", "value": 1}', "bad_timestamp"),
    (b'{"sensor": "a", "ts": -5, "value": 1}', "bad_timestamp"),
]


@pytest.mark.parametrize(
    ("raw", "reason"), CASES, ids=[f"{r}-{i}" for i, (_, r) in enumerate(CASES)]
)
def test_dead_letter_for_each_reason(raw: bytes, reason: str) -> None:
    registry = CollectorRegistry()
    pipeline = make_pipeline(registry=registry)
    outputs = run(pipeline, [raw_message(raw, offset=99, key=b"k")])
    assert forecasts(outputs) == []
    [letter] = dead_letters(outputs)
    assert letter["reason"] == reason
    assert (letter["topic"], letter["partition"], letter["offset"], letter["key"]) == (
        TOPIC,
        2,
        99,
        "k",
    )
    assert letter["raw"] == raw.decode()
    assert "raw_encoding" not in letter
    assert registry.get_sample_value("stcast_ticks_total") == 1.0
    assert registry.get_sample_value("stcast_rejected_ticks_total", {"reason": reason}) == 1.0


def test_non_utf8_message_is_dead_lettered_in_base64() -> None:
    raw = b'{"sensor": "\xff", "ts": 0, "value": 1}'
    [letter] = dead_letters(run(make_pipeline(), [raw_message(raw, key=None)]))
    assert (letter["reason"], letter["key"], letter["raw_encoding"]) == (
        "malformed",
        None,
        "base64",
    )
    assert base64.b64decode(letter["raw"]) == raw


def test_empty_message_is_malformed() -> None:
    [letter] = dead_letters(run(make_pipeline(), [raw_message(b"")]))
    assert (letter["reason"], letter["raw"]) == ("malformed", "")


@pytest.mark.parametrize("columnar", [True, False])
def test_a_record_without_a_value_is_malformed_not_a_crash(columnar: bool) -> None:
    """A tombstone (a record whose value is null) is a dead letter; the worker must not die on
    it, or it would die again on every restart."""
    message = Incoming(TOPIC, 0, 7, b"k", None)
    [letter] = dead_letters(run(make_pipeline(columnar=columnar), [message]))
    assert (letter["reason"], letter["detail"], letter["raw"], letter["offset"]) == (
        "malformed",
        "the record has no value (null)",
        "",
        7,
    )


def test_single_ticks_on_the_fast_path_are_placed_as_the_reference_places_them() -> None:
    """Single ticks that can only be placed skip the tick-by-tick path (``_place_single``).
    A stream of them with every kind of exception among them (a gap, a late, a duplicate, a
    null reading, a future time, another network, an integer reading, a new sensor) gives the
    reference decoder's forecasts, dead letters and counts, and most ticks took the fast path."""
    rng = random.Random(3)
    items = [tick(s, step, round(rng.uniform(0, 99), 2)) for step in range(12) for s in "abcd"]
    items[18]["value"] = None  # reported missing
    items[25]["value"] = 7  # an integer
    items[30]["network"] = "other"
    del items[33]  # a gap for b: its next reading fills it
    items += [tick("a", 3, 1.0), tick("c", 11, 2.0), tick("e", 11, 3.0)]  # late, dup, new
    items += [{"sensor": "d", "ts": ts(10**6), "value": 1.0}, tick("a", 12, 4.0)]  # future
    messages = [single(item, offset) for offset, item in enumerate(items)]
    outputs = {}
    for columnar in (True, False):
        registry = CollectorRegistry()
        pipeline = make_pipeline(FakeForecaster(), registry, network="net", columnar=columnar)
        calls = _spy_on_single_ticks(pipeline)
        seen = [
            (kind, record)
            for start in range(0, len(messages), 5)
            for output in pipeline.step(messages[start : start + 5])
            for kind, records in (("forecast", output.forecasts), ("dead", output.dead_letters))
            for record in records
        ]
        counts = {
            sample.name + str(sorted(sample.labels.items())): sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        }
        outputs[columnar] = (seen, counts, calls)
    assert outputs[True][:2] == outputs[False][:2]
    assert outputs[False][2] == []  # the reference path never takes it
    placed = [call for call in outputs[True][2] if call is not None]
    assert len(placed) >= 30 and 1 in placed  # b's gap was filled on the fast path
    assert sum(kind == "dead" for kind, _ in outputs[True][0]) == 4


def _spy_on_single_ticks(pipeline: Pipeline) -> list[int | None]:
    """What each call of the pipeline's ``_place_single`` returns, from now on."""
    calls: list[int | None] = []
    place = pipeline._place_single

    def spied(*args: Any) -> int | None:
        calls.append(place(*args))
        return calls[-1]

    pipeline._place_single = spied  # type: ignore[method-assign, assignment]
    return calls


def test_a_bad_element_of_a_tick_batch_is_dead_lettered_alone() -> None:
    pipeline = make_pipeline()
    run(pipeline, [batch([tick(s, step, 1.0) for s in "ab"], step) for step in range(2)])
    bad = {"sensor": "x", "ts": ts(2), "value": "high"}
    message = batch([tick("a", 2, 5.0), bad, tick("b", 2, 6.0), tick("a", 0, 1.0)], 7, b"gw")
    outputs = run(pipeline, [message])
    assert forecasts(outputs) == [forecast("a", 2, [6.0, 7.0]), forecast("b", 2, [7.0, 8.0])]
    letters = dead_letters(outputs)
    assert [(d["reason"], d["offset"], d["key"], d["topic"]) for d in letters] == [
        ("bad_type", 7, "gw", TOPIC),
        ("duplicate", 7, "gw", TOPIC),
    ]
    assert letters[0]["detail"].startswith("ticks[1]: ")
    assert letters[1]["detail"].startswith("ticks[3]: ")
    assert json.loads(letters[0]["raw"]) == bad
    assert json.loads(letters[1]["raw"]) == tick("a", 0, 1.0)


def test_a_non_object_element_of_a_tick_batch() -> None:
    outputs = run(make_pipeline(), [Incoming(TOPIC, 0, 3, b"gw", b'{"ticks": [7, null]}')])
    assert [(d["reason"], d["detail"][:10], d["raw"]) for d in dead_letters(outputs)] == [
        ("malformed", "ticks[0]: ", "7"),
        ("malformed", "ticks[1]: ", "null"),
    ]


def test_late_and_duplicate() -> None:
    registry = CollectorRegistry()
    pipeline = make_pipeline(registry=registry)
    good = [single(tick("a", step, float(step)), offset=step) for step in (5, 6, 7)]
    late = tick("a", 4, 4.0)
    duplicate = tick("a", 7, 70.0)
    outputs = run(pipeline, [*good, single(late, 8), single(duplicate, 9)])
    assert forecasts(outputs) == [forecast("a", 7, [8.0, 9.0])]
    assert [(d["reason"], d["offset"], json.loads(d["raw"])) for d in dead_letters(outputs)] == [
        ("late", 8, late),
        ("duplicate", 9, duplicate),
    ]
    assert registry.get_sample_value("stcast_rejected_ticks_total", {"reason": "late"}) == 1.0
    assert registry.get_sample_value("stcast_rejected_ticks_total", {"reason": "duplicate"}) == 1.0
    assert registry.get_sample_value("stcast_ticks_total") == 5.0


def test_unknown_network() -> None:
    pipeline = make_pipeline(network="a")
    other = tick("s2", 0, 1.0, network="b")
    messages = [
        single(tick("s1", 0, 1.0, network="a")),
        single(other, 1),
        single(tick("s3", 0, 1.0)),
    ]
    letters = dead_letters(run(pipeline, messages))
    assert [(d["reason"], d["offset"], json.loads(d["raw"])) for d in letters] == [
        ("unknown_network", 1, other)
    ]
    assert pipeline.sensor_ids == ["s1", "s3"]


def test_a_pipeline_without_a_network_serves_any() -> None:
    pipeline = make_pipeline()
    assert dead_letters(run(pipeline, [single(tick("s", 0, 1.0, network="b"))])) == []


def test_future_tolerance_with_an_injected_clock() -> None:
    pipeline = make_pipeline(future_tolerance_s=60.0)
    at_limit = {"sensor": "edge", "ts": (NOW_S + 60) * 1000, "value": 1.0}
    beyond = {"sensor": "far", "ts": (NOW_S + 60) * 1000 + 1, "value": 1.0}
    text = {"sensor": "far2", "ts": format_ts((NOW_S + 3600) * 1000), "value": 1.0}
    outputs = run(pipeline, [single(at_limit, 0), single(beyond, 1), single(text, 2)])
    assert [(d["reason"], d["offset"]) for d in dead_letters(outputs)] == [
        ("bad_timestamp", 1),
        ("bad_timestamp", 2),
    ]
    assert "in the future" in dead_letters(outputs)[0]["detail"]


def test_none_value_leaves_a_hole_and_is_not_dead_lettered() -> None:
    pipeline = make_pipeline(max_gap_steps=0)
    values = [1.0, 2.0, None, 4.0, 5.0, 6.0]
    outputs = run(pipeline, [single(tick("s", i, v), i) for i, v in enumerate(values)])
    assert dead_letters(outputs) == []
    assert forecasts(outputs) == [forecast("s", 5, [7.0, 8.0])]


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_have_exact_values() -> None:
    registry = CollectorRegistry()
    pipeline = make_pipeline(registry=registry)
    a = [10.0, 11.0, 12.0, 13.0, 15.0]
    messages = [single(tick("a", step, value), step) for step, value in enumerate(a)]
    messages += [
        single(tick("b", 0, None), 5),
        raw_message(b"{", offset=6),
        single(tick("a", 4, 99.0), 7),  # duplicate
    ]
    outputs = run(pipeline, messages)
    # forecasts made at 2: [13, 14], at 3: [14, 15], at 4: [16, 17]
    assert [f["values"] for f in forecasts(outputs)] == [[13.0, 14.0], [14.0, 15.0], [16.0, 17.0]]
    # horizon 1: |13-13|, |14-15|; horizon 2: |14-15|
    assert pipeline.rolling_mae.mae.tolist() == [0.5, 1.0]
    assert pipeline.rolling_mae.counts.tolist() == [2, 1]
    # persistence (last values 12, 13, 15): horizon 1 |12-13|, |13-15|; horizon 2 |12-15|
    assert pipeline.rolling_mae.baseline_mae.tolist() == [1.5, 3.0]

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("stcast_ticks_total") == 8.0
    assert value("stcast_rejected_ticks_total", reason="malformed") == 1.0
    assert value("stcast_rejected_ticks_total", reason="duplicate") == 1.0
    assert value("stcast_rejected_ticks_total", reason="late") == 0.0
    assert value("stcast_forecasts_total") == 3.0
    assert value("stcast_imputed_values_total") == 0.0
    assert value("stcast_forecast_abs_error", horizon="1") == 0.5
    assert value("stcast_forecast_abs_error", horizon="2") is None  # not a scored horizon
    assert value("stcast_baseline_abs_error", horizon="1") == 1.5
    assert value("stcast_baseline_abs_error", horizon="2") is None
    assert value("stcast_sensors_active") == 2.0
    assert value("stcast_model_info", model="fake", version="7", provider="python") == 1.0
    assert value("stcast_event_lag_seconds") == NOW_S - T0_S - 4 * STEP_S
    assert value("stcast_batch_size_count") == 1.0  # one inference for three windows
    assert value("stcast_batch_size_sum") == 3.0
    assert value("stcast_inference_seconds_count") == 1.0


def test_persistence_baseline_mae_on_a_hand_made_series() -> None:
    registry = CollectorRegistry()
    pipeline = make_pipeline(registry=registry, max_gap_steps=1)  # window 3, last + 1, last + 2
    # s misses step 2, imputed as 16 when step 3 arrives: the window's last value is always
    # the reading that made the forecast, never an imputed one; t stays at 7
    s = [10.0, 12.0, None, 20.0, 18.0, 25.0]
    t = [7.0, 7.0, 7.0, 7.0, 7.0, None]
    readings = [
        (name, step, values[step]) for step in range(6) for name, values in [("s", s), ("t", t)]
    ]
    outputs = run(
        pipeline, [single(tick(*r), i) for i, r in enumerate(readings) if r[2] is not None]
    )
    assert [(f["sensor"], f["ts"], f["imputed"]) for f in forecasts(outputs)] == [
        ("t", ts(2), 0),
        ("s", ts(3), 1),
        ("t", ts(3), 0),
        ("s", ts(4), 1),
        ("t", ts(4), 0),
        ("s", ts(5), 0),
    ]
    # scored, as (forecast, persistence) errors:
    # s made at 3 (last 20): h1 vs 18 (3, 2), h2 vs 25 (3, 5); made at 4 (last 18): h1 vs 25 (6, 7)
    # t made at 2 and 3 (last 7): h1 vs 7 (1, 0) twice; made at 2: h2 vs 7 (2, 0)
    assert pipeline.rolling_mae.baseline_mae.tolist() == [(2 + 7 + 0 + 0) / 4, (5 + 0) / 2]
    assert pipeline.rolling_mae.mae.tolist() == [(3 + 6 + 1 + 1) / 4, (3 + 2) / 2]
    assert registry.get_sample_value("stcast_baseline_abs_error", {"horizon": "1"}) == 2.25
    assert registry.get_sample_value("stcast_forecast_abs_error", {"horizon": "1"}) == 2.75


def test_batch_size_splits_inference() -> None:
    registry = CollectorRegistry()
    forecaster = FakeForecaster()
    pipeline = make_pipeline(forecaster, registry=registry, batch_size=3)
    messages = [batch([tick(f"s{i}", step, 1.0) for i in range(4)], step) for step in range(4)]
    outputs = run(pipeline, messages)
    assert len(forecasts(outputs)) == 8
    assert [len(b) for b in forecaster.batches] == [3, 3, 2]
    assert [len(o.forecasts) for o in outputs] == [3, 3, 2]
    assert all(len(o.consumed_at) == len(o.forecasts) for o in outputs)
    assert registry.get_sample_value("stcast_batch_size_count") == 3.0
    assert registry.get_sample_value("stcast_forecasts_total") == 8.0


def nan_run() -> tuple[Pipeline, CollectorRegistry, list[Output]]:
    registry = CollectorRegistry()
    pipeline = make_pipeline(FakeForecaster(nan_for={"b"}), registry=registry)
    values = {"a": [1.0, 2.0, 3.0, 4.0], "b": [5.0, 6.0, 7.0, 8.0], "c": [0.0, 0.0, 0.0, 0.0]}
    messages = [batch([tick(s, step, values[s][step]) for s in "abc"], step) for step in range(4)]
    return pipeline, registry, run(pipeline, messages)


def test_a_non_finite_forecast_row_is_an_internal_dead_letter() -> None:
    pipeline, registry, outputs = nan_run()
    assert forecasts(outputs) == [
        forecast("a", 2, [4.0, 5.0]),
        forecast("c", 2, [1.0, 2.0]),
        forecast("a", 3, [5.0, 6.0]),
        forecast("c", 3, [1.0, 2.0]),
    ]
    letters = dead_letters(outputs)
    assert [(d["reason"], d["key"], d["topic"], d["partition"], d["offset"]) for d in letters] == [
        ("internal", "b", "", -1, -1),
        ("internal", "b", "", -1, -1),
    ]
    assert json.loads(letters[0]["raw"]) == {"sensor": "b", "ts": ts(2), "window": [5.0, 6.0, 7.0]}
    assert letters[0]["detail"] == "model fake@7 forecast a non-finite value"
    assert registry.get_sample_value("stcast_rejected_ticks_total", {"reason": "internal"}) == 2.0
    # only a's and c's forecasts made at step 2 were scored at step 3
    assert pipeline.rolling_mae.counts.tolist() == [2, 0]
    assert pipeline.rolling_mae.mae.tolist()[0] == 0.5  # |4 - 4| and |1 - 0|


def test_forecasts_total_counts_only_forecasts_sent() -> None:
    _, registry, outputs = nan_run()
    assert registry.get_sample_value("stcast_forecasts_total") == len(forecasts(outputs)) == 4


# -- batching does not change the result ----------------------------------------------------------


def replay(
    messages: Sequence[Incoming],
    cuts: Sequence[int],
    make: Callable[[], Pipeline],
) -> tuple[list[bytes], list[bytes], list[float | None], list[int]]:
    """Forecasts, dead letters, rolling MAEs (model's, baseline's) and counts, cut at ``cuts``."""
    pipeline = make()
    outputs: list[Output] = []
    bounds = [0, *sorted(cuts), len(messages)]
    for start, end in itertools.pairwise(bounds):
        outputs += run(pipeline, messages[start:end])
    rolling = pipeline.rolling_mae
    mae = [None if np.isnan(m) else float(m) for m in [*rolling.mae, *rolling.baseline_mae]]
    return (
        [v for o in outputs for _, v in o.forecasts],
        [v for o in outputs for _, v in o.dead_letters],
        mae,
        rolling.counts.tolist(),
    )


events = st.lists(
    st.tuples(
        st.sampled_from(["s0", "s1", "s2"]),
        st.integers(min_value=0, max_value=15),
        st.one_of(st.none(), st.integers(min_value=0, max_value=20).map(float)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    events=events,
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
    batch_size=st.sampled_from([1, 2, 3, 7, 1000]),
)
def test_batching_does_not_change_forecasts_or_scores(
    events: list[tuple[str, int, float | None]], cuts: list[int], batch_size: int
) -> None:
    messages = [single(tick(s, step, v), offset=i) for i, (s, step, v) in enumerate(events)]
    cuts = [c for c in cuts if c <= len(messages)]

    def make(size: int) -> Callable[[], Pipeline]:
        return lambda: make_pipeline(batch_size=size, max_gap_steps=1)

    one_by_one = replay(messages, range(len(messages)), make(1))
    assert replay(messages, cuts, make(batch_size)) == one_by_one
    assert replay(messages, [], make(batch_size)) == one_by_one


def test_a_full_rolling_mae_window_does_not_depend_on_the_split() -> None:
    history = [(s, step, 0.0) for s in "AB" for step in range(3)]
    # A's 4th and 5th ticks arrive before B's 4th: one by one, B's error is the newest
    events = [*history, ("A", 3, 0.0), ("A", 4, 10.0), ("B", 3, 5.0)]
    messages = [single(tick(s, step, v), offset=i) for i, (s, step, v) in enumerate(events)]

    def make() -> Pipeline:
        return make_pipeline(batch_size=1000, mae_window=1)

    one_by_one = replay(messages, range(len(messages)), make)
    # h1: B forecast 0 + 1, actual 5; h2: A 0 + 2 vs 10; persistence: 0 vs 5 and 0 vs 10
    assert one_by_one[2] == [4.0, 8.0, 5.0, 10.0]
    assert replay(messages, [len(history)], make) == one_by_one


# -- real data -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flows() -> np.ndarray:
    if not PEMS08.exists():
        pytest.skip(f"PEMS08 not found at {PEMS08}")
    with np.load(PEMS08) as data:
        return np.asarray(data["data"][:, :, 0])


def pems08_messages(flows: np.ndarray, steps: int, sensors: int, batched: bool) -> list[Incoming]:
    messages = []
    for step in range(steps):
        stamp = ts(step)
        row = flows[step, :sensors].tolist()
        ticks = [{"sensor": f"pems08/{i}", "ts": stamp, "value": v} for i, v in enumerate(row)]
        if batched:
            messages.append(batch(ticks, offset=step, key=b"pems08"))
        else:
            messages += [single(t, offset=step * sensors + i) for i, t in enumerate(ticks)]
    return messages


def test_pems08_batching_does_not_change_forecasts_or_scores(flows: np.ndarray) -> None:
    steps, sensors, window, horizon = 200, 20, 12, 12

    def make(size: int) -> Callable[[], Pipeline]:
        forecaster = FakeForecaster(window=window, horizon=horizon)
        return lambda: make_pipeline(forecaster, batch_size=size, mae_window=100_000)

    singles = pems08_messages(flows, steps, sensors, batched=False)
    batched = pems08_messages(flows, steps, sensors, batched=True)
    reference = replay(singles, range(len(singles)), make(1))
    cuts = sorted(random.Random(8).sample(range(1, steps), 30))
    assert replay(singles, [], make(1000)) == reference
    assert replay(singles, [c * sensors for c in cuts], make(7)) == reference
    assert replay(batched, range(steps), make(7)) == reference
    assert replay(batched, cuts, make(1)) == reference
    assert replay(batched, [], make(1000)) == reference

    forecast_values, _, mae, counts = reference
    assert len(forecast_values) == (steps - window + 1) * sensors
    # scoring is exact: the forecast made at t for t + h is flows[t] + h
    x = flows[:steps, :sensors]
    for h in range(1, horizon + 1):
        errors = x[window - 1 : steps - h] + h - x[window - 1 + h : steps]
        assert counts[h - 1] == errors.size
        assert mae[h - 1] == pytest.approx(np.abs(errors).mean(), rel=1e-12)


def test_whole_pems08_replay_gives_one_forecast_per_full_window(flows: np.ndarray) -> None:
    steps, sensors = flows.shape
    registry = CollectorRegistry()
    pipeline = make_pipeline(registry=registry)
    outputs = run(pipeline, pems08_messages(flows, steps, sensors, batched=True))
    count = sum(len(o.forecasts) for o in outputs)
    assert count == (steps - 3 + 1) * sensors == 217_600
    assert sum(len(o.dead_letters) for o in outputs) == 0
    assert registry.get_sample_value("stcast_forecasts_total") == count
    assert registry.get_sample_value("stcast_ticks_total") == steps * sensors
    assert registry.get_sample_value("stcast_sensors_active") == sensors
    last = json.loads(outputs[-1].forecasts[-1][1])
    assert last["sensor"] == f"pems08/{sensors - 1}"
    assert last["ts"] == ts(steps - 1)
    assert last["values"] == [flows[-1, -1] + 1, flows[-1, -1] + 2]


class NarrowInterval:
    """Forecasts 10 with a 0.1-0.9 interval of 10 +- 0.5: for readings of 10 plus standard
    normal noise it should be 10 +- 1.28, so it holds about 38 % of them."""

    provider = "python"
    model_id = "narrow@1"
    window = 3
    horizon = 2
    quantiles = (0.1, 0.5, 0.9)

    def forecast(self, windows: WindowBatch) -> FloatArray:
        return self.forecast_quantiles(windows)[:, 1]

    def forecast_quantiles(self, windows: WindowBatch) -> FloatArray:
        out = np.full((len(windows), 3, self.horizon), 10.0)
        out[:, 0] -= 0.5
        out[:, 2] += 0.5
        return out


@pytest.mark.parametrize(("rate", "low", "high"), [(0.05, 0.76, 0.84), (0.0, 0.33, 0.43)])
def test_the_served_interval_is_calibrated_online_to_its_promise(
    rate: float, low: float, high: float
) -> None:
    """20 sensors, 1,500 steps of noise: the interval served over the last 1,000 steps covers
    about 80 % of the readings (the model's own covers 38 %); rate 0 serves the model's."""
    rng = np.random.default_rng(3)
    pipeline = Pipeline(NarrowInterval(), step_s=STEP_S, network="net", interval_rate=rate)
    served: list[dict[str, Any]] = []
    readings = 10.0 + rng.standard_normal((1500, 20))
    for step, row in enumerate(readings):
        message = batch([tick(f"s{i}", step, float(v)) for i, v in enumerate(row)], step)
        forecasts = [f for out in pipeline.step([message]) for _, v in out.forecasts
                     for f in forecasts_in(v)]  # fmt: skip
        if step >= 500:
            served += forecasts
    at = {(f["sensor"], f["ts"]): f for f in served}
    inside = []
    for step in range(500, 1498):
        for i in range(20):
            f = at.get((f"s{i}", ts(step)))
            if f is not None:
                actual = readings[step + 1, i]
                inside.append(f["quantiles"]["0.1"][0] <= actual <= f["quantiles"]["0.9"][0])
    coverage = float(np.mean(inside))
    assert len(inside) > 15_000
    assert low <= coverage <= high, coverage
    assert pipeline.rolling_mae.coverage[0] == pytest.approx(coverage, abs=0.04)
