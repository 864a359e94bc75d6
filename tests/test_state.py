"""Per-sensor state: rebuilt from earlier ticks, dropped with its partition, expired when silent."""

from __future__ import annotations

import json

import numpy as np
from prometheus_client import CollectorRegistry
from test_pipeline import STEP_S, forecasts, make_pipeline, run, single, tick

from stream_app.records import Incoming, TimestampParser
from stream_app.restoring import event_time_ms, history_span_ms, spans
from stream_app.sensors import Sensors
from stream_app.windows import RollingWindow

RNG = np.random.default_rng(5)
SERIES = {f"s{i}": RNG.uniform(0, 100, 40).round(2).tolist() for i in range(6)}


def stream(steps: range) -> list[Incoming]:
    return [
        single(tick(sensor, t, values[t]), offset=t, partition=i % 2)
        for t in steps
        for i, (sensor, values) in enumerate(SERIES.items())
    ]


def scored_errors(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("stcast_forecast_abs_error", {"horizon": "1"}) or 0.0


def test_restored_state_continues_exactly_like_the_uninterrupted_pipeline() -> None:
    whole = make_pipeline()
    want = forecasts(run(whole, stream(range(40))))

    restored_registry = CollectorRegistry()
    restored = make_pipeline(registry=restored_registry)
    restored.restore(stream(range(12, 25)))  # what the previous owner had processed
    got = forecasts(run(restored, stream(range(25, 40))))

    assert got == [f for f in want if f["ts"] >= got[0]["ts"]]
    assert len(got) == 15 * len(SERIES)
    assert restored_registry.get_sample_value("stcast_ticks_total") == 15 * len(SERIES)
    assert restored_registry.get_sample_value("stcast_forecasts_total") == 15 * len(SERIES)


def test_restored_pending_forecasts_are_scored_when_their_actuals_arrive() -> None:
    registry = CollectorRegistry()
    restored = make_pipeline(registry=registry)
    restored.restore(stream(range(0, 10)))
    assert scored_errors(registry) == 0.0  # restoring scores nothing and counts nothing
    run(restored, stream(range(10, 11)))
    # The fake forecasts last value + 1: step 9's forecast for step 10 is scored now.
    want = np.mean([abs(v[9] + 1 - v[10]) for v in SERIES.values()])
    assert scored_errors(registry) == float(want)


def test_forget_drops_the_sensors_of_lost_partitions_only() -> None:
    pipeline = make_pipeline()
    run(pipeline, stream(range(5)))
    assert pipeline.forget({1}) == 3
    assert pipeline.sensor_ids == ["s0", "s2", "s4"]
    outputs = run(pipeline, stream(range(5, 6)))
    # s1, s3, s5 start over (no full window yet); the others go on forecasting.
    assert [f["sensor"] for f in forecasts(outputs)] == ["s0", "s2", "s4"]


def test_silent_sensors_expire_and_their_rows_are_reused() -> None:
    pipeline = make_pipeline(sensor_ttl_s=10 * STEP_S)
    for t in range(30):
        run(pipeline, [single(tick("steady", t, 1.0), offset=t)])
        if t < 3:
            run(pipeline, [single(tick("gone", t, 1.0), offset=t)])
    assert pipeline.sensor_ids == ["steady"]
    run(pipeline, [single(tick("newcomer", 30, 1.0), offset=30)])
    assert pipeline._sensors.rows == 2  # newcomer took the row "gone" left


def test_sensors_recycle_rows() -> None:
    sensors = Sensors(lambda: RollingWindow(3))
    a, b = sensors.get("a", 0), sensors.get("b", 1)
    assert (a.index, b.index) == (0, 1)
    assert sensors.drop(lambda state: state.partition == 0) == [0]
    assert sensors.get("c", 2).index == 0 and sensors.rows == 2
    assert sensors.get("b", 3).partition == 3  # the partition of its latest tick


def test_event_time_of_ticks_and_batches() -> None:
    parse = TimestampParser()
    one = json.dumps(tick("a", 2, 1.0)).encode()
    many = json.dumps({"ticks": [tick("a", 3, 1.0), tick("b", 3, 2.0)]}).encode()
    t0_ms = event_time_ms(json.dumps(tick("a", 0, 1.0)).encode(), parse)
    assert t0_ms is not None
    assert event_time_ms(one, parse) == t0_ms + 2 * STEP_S * 1000
    assert event_time_ms(many, parse) == t0_ms + 3 * STEP_S * 1000
    assert event_time_ms(b"{", parse) is None
    assert event_time_ms(b'{"sensor": "a"}', parse) is None


def test_history_span_and_whether_messages_cover_it() -> None:
    pipeline = make_pipeline()  # window 3, horizon 2, max gap 3
    assert history_span_ms(pipeline) == 2 * (3 + 2 + 3) * STEP_S * 1000
    span_steps = 16
    assert spans(stream(range(0, span_steps + 1)), history_span_ms(pipeline))
    assert not spans(stream(range(0, span_steps)), history_span_ms(pipeline))
    assert not spans([], 1)


def test_a_partition_read_ahead_of_another_expires_nobody() -> None:
    pipeline = make_pipeline(sensor_ttl_s=10 * STEP_S)
    run(pipeline, [single(tick("behind", t, 1.0), offset=t, partition=1) for t in range(3)])
    run(pipeline, [single(tick("ahead", t, 1.0), offset=t, partition=0) for t in range(60)])
    assert pipeline.sensor_ids == ["behind", "ahead"]
