"""Readings monitors: stuck, range and noise checks, their reports, and stuck forecasts flagged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stream_app.core.forecasters import Persistence
from stream_app.core.metrics import Metrics
from stream_app.core.pipeline import Pipeline
from stream_app.core.readings import CHECKS, Finding, ReadingMonitors, ReadingSink
from stream_app.core.records import Incoming, format_ts
from stream_app.core.retrain_events import Detection, RetrainPolicy

STEP_S = 300
DAY = 86_400 // STEP_S
T0_S = 1_467_331_200  # 2016-07-01T00:00:00Z


def daily(days: float, seed: int = 0, noise: float = 3.0) -> np.ndarray:
    """A daily cycle with Gaussian noise, rounded to a tenth: ties are rare but happen."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(days * DAY))
    return np.round(100 + 50 * np.sin(2 * np.pi * t / DAY) + rng.normal(0, noise, len(t)), 1)


def stream(monitors: ReadingMonitors, series: np.ndarray) -> list[Finding]:
    """One sensor's readings, one per step, as a pipeline hands them over."""
    found = []
    row = np.zeros(1, dtype=np.int64)
    for t, value in enumerate(series.tolist()):
        found += monitors.observe(row, np.array([t]), np.array([value]))
    return found


def test_a_stuck_sensor_fires_after_min_run_equal_readings_and_stays_stuck_until_it_moves() -> None:
    series = daily(2)
    onset = DAY + 100
    series[onset : onset + 40] = series[onset]
    monitors = ReadingMonitors(STEP_S, checks=["stuck"])
    found = stream(monitors, series)
    assert [(f.check, f.slot, f.value) for f in found] == [("stuck", onset + 5, 6.0)]
    assert not monitors.stuck(np.array([0]))[0]  # it moved again at onset + 40


def test_a_sensor_that_repeats_itself_must_repeat_for_twice_its_longest_run() -> None:
    series = daily(2)
    series[50:54] = series[50]  # a run of 4 in the warm-up: it may repeat 7 times
    series[DAY + 100 : DAY + 107] = series[DAY + 100]  # 7: quiet, and now it may repeat 13
    series[DAY + 200 : DAY + 220] = series[DAY + 200]  # 20: fires at its 14th reading
    monitors = ReadingMonitors(STEP_S, checks=["stuck"])
    assert [(f.slot, f.value) for f in stream(monitors, series)] == [(DAY + 213, 14.0)]


def test_nothing_fires_in_the_warm_up() -> None:
    series = daily(2)
    series[10:200] = 0.0  # stuck from the start: the warm-up learns a long run, that is all
    monitors = ReadingMonitors(STEP_S, warmup=288)
    assert [f for f in stream(monitors, series) if f.slot < 288] == []


def test_a_reading_far_outside_the_range_fires_once_per_cooldown() -> None:
    series = daily(3)
    lo, hi = series[: DAY + 10].min(), series[: DAY + 10].max()
    span = hi - lo
    series[DAY + 10] = hi + 0.5 * span  # inside the margin: the range widens to 1.5 spans
    series[DAY + 20] = hi + 2.5 * span  # 2 spans above the new high: 4/3 new spans outside
    series[DAY + 30] = lo - 3.0 * span  # within the cooldown of the last
    monitors = ReadingMonitors(STEP_S, checks=["range"])
    found = stream(monitors, series)
    assert [(f.slot, round(f.value, 6)) for f in found] == [(DAY + 20, 1.333333)]


@pytest.mark.parametrize("units", [1.0, 1e-12])  # the noise is relative to its usual size
def test_tripled_noise_variance_fires_the_noise_check_and_unchanged_noise_does_not(
    units: float,
) -> None:
    quiet = daily(6, seed=1) * units
    noisy = quiet.copy()
    onset = 3 * DAY
    noisy[onset:] += np.random.default_rng(2).normal(0, 4.5, len(noisy) - onset) * units
    assert stream(ReadingMonitors(STEP_S, checks=["noise"]), quiet) == []
    found = stream(ReadingMonitors(STEP_S, checks=["noise"]), noisy)
    assert found and found[0].check == "noise"
    assert onset < found[0].slot < onset + DAY


def test_forget_makes_a_row_a_new_sensor() -> None:
    monitors = ReadingMonitors(STEP_S, warmup=5, checks=["stuck"])
    row = np.zeros(1, dtype=np.int64)
    for t in range(20):
        monitors.observe(row, np.array([t]), np.array([7.0]))
    assert monitors.stuck(row)[0]
    monitors.forget([0])
    assert not monitors.stuck(row)[0]
    assert monitors.observe(row, np.array([0]), np.array([7.0])) == []


def test_unknown_checks_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown reading checks"):
        ReadingMonitors(STEP_S, checks=["stuck", "flatline"])
    assert CHECKS == ("stuck", "range", "noise")


def policy(events: list[object]) -> RetrainPolicy:
    return RetrainPolicy(
        "net", emit=events.append, model=lambda: "m@1", monitored=lambda: 10, gather_s=0.0
    )


def test_a_stuck_sensor_is_quarantined_at_once_and_never_makes_an_event() -> None:
    events: list[object] = []
    retrain = policy(events)
    for i, sensor in enumerate("abc"):
        retrain.update(Detection(sensor, T0_S + i, float("nan"), 6.0, "stuck"))
    retrain.advance(T0_S + 60)
    assert events == [] and retrain.quarantined == {"a", "b", "c"} and retrain.held == 3


def test_range_and_noise_findings_join_the_drifting_sensors_of_an_event() -> None:
    events: list[object] = []
    retrain = policy(events)
    retrain.update(Detection("a", T0_S, float("nan"), 1.5, "range"))
    retrain.update(Detection("b", T0_S + 1, float("nan"), 61.0, "noise"))
    retrain.update(Detection("c", T0_S + 2, 1.0, 6.0))
    retrain.advance(T0_S + 60)
    assert len(events) == 1
    event = events[0]
    assert event.sensors == ("a", "b", "c")  # type: ignore[attr-defined]
    checks = {s: e["check"] for s, e in event.evidence["per_sensor"].items()}  # type: ignore[attr-defined]
    assert checks == {"a": "range", "b": "noise", "c": "error"}


class Recorder(list[Detection]):
    def update(self, detection: Detection) -> None:
        self.append(detection)

    def advance(self, now: float) -> None:
        pass

    def model_swapped(self) -> None:
        pass


def ticks(step: int, values: dict[str, float]) -> Incoming:
    ts = format_ts((T0_S + step * STEP_S) * 1000)
    items = [{"sensor": s, "ts": ts, "value": v} for s, v in values.items()]
    return Incoming("stcast.ticks", 0, step, b"net", json.dumps({"ticks": items}).encode())


def test_the_pipeline_flags_a_stuck_sensors_forecasts_reports_it_and_counts_it() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    pipeline = Pipeline(Persistence(window=3, horizon=2), step_s=STEP_S, clock=lambda: 2e9)
    heard = Recorder()
    pipeline.watch_readings(
        ReadingSink(
            ReadingMonitors(STEP_S, warmup=20, checks=["stuck"]),
            sensor_of=pipeline.sensor_at,
            now=lambda: pipeline.newest_ts_s,
            policy=heard,
            metrics=metrics,
        )
    )
    flagged = []
    for step in range(40):
        moving = 10.0 + step % 7
        values = {"ok": moving, "stuck": moving if step < 25 else 3.0}
        for output in pipeline.step([ticks(step, values)]):
            for _, raw in output.forecasts:
                record = json.loads(raw)
                if "quarantined" in record:
                    flagged.append((record["sensor"], step, record["quarantined"]))
    # stuck from step 25 (the first 3.0); the 6th equal reading, at step 30, fires
    assert [(d.sensor, d.check, d.detected_at) for d in heard] == [
        ("stuck", "stuck", T0_S + 30 * STEP_S)
    ]
    assert flagged == [("stuck", step, "stuck") for step in range(30, 40)]
    assert registry.get_sample_value("stcast_reading_faults_total", {"check": "stuck"}) == 1.0
    assert registry.get_sample_value("stcast_reading_faults_total", {"check": "noise"}) is None


def test_a_restore_rebuilds_the_monitors_without_reporting() -> None:
    pipeline = Pipeline(Persistence(window=3, horizon=2), step_s=STEP_S, clock=lambda: 2e9)
    heard = Recorder()
    monitors = ReadingMonitors(STEP_S, warmup=5, checks=["stuck"])
    pipeline.watch_readings(
        ReadingSink(monitors, sensor_of=pipeline.sensor_at, now=lambda: 0.0, policy=heard)
    )
    pipeline.restore([ticks(step, {"s": 4.0 if step > 6 else float(step)}) for step in range(20)])
    assert heard == [] and monitors.stuck(np.array([0]))[0]


def test_a_retrain_learns_nothing_from_quarantined_sensors() -> None:
    from datetime import UTC, datetime

    from stream_app.loop.history import without
    from stream_app.offline.datasets import GridDataset

    values = np.arange(12, dtype=np.float64).reshape(4, 3, 1)
    recent = GridDataset(
        "net", values, datetime(2016, 7, 1, tzinfo=UTC), STEP_S, ("a", "b", "c"), ("v",)
    )
    cleaned = without(recent, {"b", "not-here"})
    assert np.isnan(cleaned.values[:, 1]).all()
    assert np.array_equal(cleaned.values[:, [0, 2]], values[:, [0, 2]])
    assert without(recent, set()) is recent and not np.isnan(values).any()
