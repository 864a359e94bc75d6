"""Per-sensor state: rebuilt from earlier ticks, dropped with its partition, expired when silent."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from test_pipeline import STEP_S, T0_S, forecasts, make_pipeline, run, single, tick

from stream_app.core.drift import DriftSink, make_detector
from stream_app.core.feedback import ErrorFeedback
from stream_app.core.pipeline import Pipeline
from stream_app.core.records import Incoming, TimestampParser
from stream_app.core.windows import RollingWindow, Sensors
from stream_app.kafka.restoring import event_time_ms, history_span_ms, spans

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


class _Detections(list[tuple[str, float]]):
    """A retrain policy stand-in that keeps (sensor, event time) of every detection."""

    def update(self, detection: Any) -> None:
        self.append((detection.sensor, detection.detected_at))

    def advance(self, now: float) -> None:
        pass

    def model_swapped(self) -> None:
        pass


def _watched(warmup: int, feedback_gain: float = 0.0) -> tuple[Pipeline, _Detections]:
    pipeline = make_pipeline()
    found = _Detections()
    sink = DriftSink(
        make_detector("page-hinkley", threshold=18.0, delta=2.0),
        sensor_of=pipeline.sensor_at,
        now=lambda: pipeline.newest_ts_s,
        policy=found,
        horizon=2,
        warmup=warmup,
    )
    pipeline.watch(sink)
    if feedback_gain:
        feedback = ErrorFeedback(horizon=2, rate=feedback_gain)
        pipeline.correct_with(feedback)
        sink.on_detection = feedback.activate
    return pipeline, found


def _shifted(steps: range, onset: int) -> list[Incoming]:
    rng = np.random.default_rng(11)
    noise = {s: rng.normal(100, 5, 200) for s in ("a", "b", "c")}
    return [
        single(tick(s, t, float(v[t] + (300 if t >= onset else 0))), offset=t)
        for t in steps
        for s, v in noise.items()
    ]


def test_drift_monitors_come_back_warm_after_a_restore_and_catch_a_shift_at_once() -> None:
    onset, handover, warmup = 150, 145, 40
    whole, found_whole = _watched(warmup)
    run(whole, _shifted(range(0, 160), onset))
    restored, found_restored = _watched(warmup)
    span_steps = history_span_ms(restored) // (STEP_S * 1000)
    assert span_steps == 2 * (3 + 2 + 3) + warmup + 2  # the monitors' warm-up is read too
    restored.restore(_shifted(range(handover - span_steps, handover), onset))
    assert found_restored == []  # what the previous owner detected is not reported again
    run(restored, _shifted(range(handover, 160), onset))
    cold, found_cold = _watched(warmup)  # as before: only the windows restored
    cold.restore(_shifted(range(handover - 16, handover), onset))
    run(cold, _shifted(range(handover, 160), onset))

    def first_steps(found: list[tuple[str, float]]) -> dict[str, int]:
        steps: dict[str, int] = {}
        for sensor, at in found:
            steps.setdefault(sensor, int(at - T0_S) // STEP_S)
        return steps

    assert set(first_steps(found_whole)) == {"a", "b", "c"}
    assert all(onset <= s <= onset + 12 for s in first_steps(found_whole).values())
    assert first_steps(found_restored) == first_steps(found_whole)
    assert found_cold == []  # still warming up: the shift goes unnoticed


def test_error_feedback_comes_back_with_the_monitors_after_a_restore() -> None:
    onset, handover, warmup, end = 150, 158, 40, 190
    whole, found = _watched(warmup, feedback_gain=0.5)
    live(whole, _shifted(range(0, end), onset))
    assert {sensor for sensor, _ in found} == {"a", "b", "c"}
    assert all(at < T0_S + handover * STEP_S for _, at in found)  # before the handover
    restored, _ = _watched(warmup, feedback_gain=0.5)
    span_steps = history_span_ms(restored) // (STEP_S * 1000)
    restored.restore(_shifted(range(handover - span_steps, handover), onset))
    assert restored.feedback is not None and whole.feedback is not None
    assert restored.feedback.active == 3  # the replayed detections started it again
    live(restored, _shifted(range(handover, end), onset))
    rows = [restored.sensor_ids.index(s) for s in "abc"]
    weights = restored.feedback.weights(np.array(rows))
    expected = whole.feedback.weights(np.array([whole.sensor_ids.index(s) for s in "abc"]))
    assert expected.min() > 0.1  # after a shift of 300 the last reading has a real share
    assert np.allclose(weights, expected, atol=0.01)


def test_a_detection_corrects_the_same_forecasts_however_the_stream_is_batched() -> None:
    messages = _shifted(range(0, 190), onset=150)
    one_by_one, found = _watched(warmup=40, feedback_gain=0.5)
    served = [forecasts(run(one_by_one, [m])) for m in messages]
    assert {sensor for sensor, _ in found} == {"a", "b", "c"}
    in_sevens, _ = _watched(warmup=40, feedback_gain=0.5)  # 7 steps, 21 ticks a micro-batch
    batched = [forecasts(run(in_sevens, messages[i : i + 21])) for i in range(0, len(messages), 21)]
    values = [f["values"] for f in itertools.chain(*served)]
    assert [f["values"] for f in itertools.chain(*batched)] == values
    corrected = one_by_one.feedback
    assert corrected is not None and corrected.active == 3


def live(pipeline: Pipeline, messages: list[Incoming]) -> None:
    """One micro-batch per step, as a worker keeping up with the stream gets them."""
    for _, batch in itertools.groupby(messages, key=lambda message: message.offset):
        run(pipeline, list(batch))


def test_the_feedback_learns_from_the_models_own_forecasts_not_the_served_ones() -> None:
    pipeline, found = _watched(warmup=40, feedback_gain=0.5)
    messages = _shifted(range(0, 171), onset=150)
    live(pipeline, messages[:-3])  # all but step 170
    assert {sensor for sensor, _ in found} == {"a", "b", "c"}
    rows = np.array([pipeline.sensor_ids.index(s) for s in "abc"])
    actuals = np.array([json.loads(m.value)["value"] for m in messages[-3:]])
    slot = (T0_S + 170 * STEP_S) // STEP_S
    settled = pipeline.pending.score(rows, np.full(3, slot), actuals)
    assert settled.model_errors is not None and settled.baseline is not None
    # the fake forecasts the last reading plus h: its own errors are persistence's plus h
    np.testing.assert_allclose(settled.model_errors - settled.baseline, settled.horizons, atol=1e-3)
    assert np.abs(settled.errors - settled.model_errors).min() > 0.1  # what was served differs
