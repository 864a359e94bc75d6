"""The worker's core closes the loop: a level shift on several sensors becomes one retrain event."""

from __future__ import annotations

import json

import numpy as np
from prometheus_client import CollectorRegistry

from stream_app.assembly import build_pipeline
from stream_app.core.forecasters import Persistence
from stream_app.core.metrics import Metrics
from stream_app.core.records import Incoming, format_ts
from stream_app.settings import Settings

T0_MS = 1_467_331_200_000
SENSORS = 20
SHIFTED = range(10)  # these sensors jump at SHIFT_AT, far beyond their usual forecast error
SHIFT_AT = 400
STEPS = 520


def series(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = 100.0 + rng.normal(0.0, 2.0, (STEPS, SENSORS))
    values[SHIFT_AT:, list(SHIFTED)] += 40.0
    return values


def test_a_level_shift_on_half_the_sensors_raises_one_retrain_event() -> None:
    registry = CollectorRegistry()
    settings = Settings(network="net", step_s=300, drift_warmup=100, retrain_cooldown_s=86400.0)
    pipeline = build_pipeline(settings, Persistence(), Metrics(registry))
    values = series()
    events = []
    for step in range(STEPS):
        ts = format_ts(T0_MS + step * 300_000)
        messages = [
            Incoming("t", 0, step, f"s{n}".encode(),
                     json.dumps({"sensor": f"s{n}", "ts": ts, "value": values[step, n]}).encode())
            for n in range(SENSORS)
        ]  # fmt: skip
        for output in pipeline.step(messages):
            events += [(key, json.loads(value), step) for key, value in output.retrain_events]

    assert len(events) == 1
    key, event, step = events[0]
    assert key == b"net" and event["network"] == "net" and event["model"] == "persistence@1"
    assert SHIFT_AT <= step <= SHIFT_AT + 12
    assert set(event["sensors"]) <= {f"s{n}" for n in SHIFTED}
    assert len(event["sensors"]) >= settings.retrain_min_sensors
    assert registry.get_sample_value("stcast_retrain_events_total") == 1.0
    assert registry.get_sample_value("stcast_drift_detected_total") >= len(event["sensors"])
