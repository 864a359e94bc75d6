"""Re-anchoring: when a sensor's monitor fires on a step in its level, its history is moved to
the new level, so that the model reads one series again."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from stream_app.assembly import build_pipeline
from stream_app.core.drift import DriftSink
from stream_app.core.feedback import level_shift
from stream_app.core.forecasters import FloatArray, WindowBatch
from stream_app.core.metrics import Metrics
from stream_app.core.pipeline import Pipeline
from stream_app.core.records import Incoming, format_ts
from stream_app.core.scoring import PendingForecasts
from stream_app.core.windows import RollingWindow
from stream_app.settings import Settings

T0_S = 1_467_331_200
STEP_S = 300
HORIZON = 4


# a day of readings before: one-step changes of at most 4
USUAL = 50.0 + np.tile([-2.0, 2.0], 144)


def test_a_step_is_found_where_it_began_with_its_size() -> None:
    made = np.full((6, HORIZON), 50.0)  # each forecast: 50 for every step ahead
    recent = np.array([51.0, 49.0, 50.5, 80.0, 81.0, 79.5])
    start, jump = level_shift(recent, made, USUAL) or (None, None)
    assert start == 3
    assert jump is not None and abs(jump - 30.1667) < 1e-3
    # the candidates reach back as far as the forecasts do (horizon 4): the four newest here
    assert level_shift(recent[:5], made[:5], USUAL) == (3, 30.5)


def test_no_step_no_move() -> None:
    made = np.full((5, HORIZON), 50.0)
    assert level_shift(np.array([51.0, 49.0, 50.5, 90.0, 50.0]), made, USUAL) is None  # a spike
    assert level_shift(np.array([60.0, 40.0, 61.0, 39.0, 62.0]), made, USUAL) is None  # noise
    # both up, but not twice the misses before them: no step stands out
    assert level_shift(np.array([58.0, 42.0, 57.0, 59.0, 55.0]), made, USUAL) is None
    # further from the forecasts each step, no faster than the readings moved before: gradual
    ramp = np.array([50.0, 51.0, 49.0, 58.0, 66.0, 75.0, 84.0, 93.0])
    assert level_shift(ramp, np.full((8, 12), 50.0), USUAL) is None
    assert level_shift(np.full(5, np.nan), made, USUAL) is None  # nothing read
    assert (
        level_shift(np.array([51.0, 49.0, 80.0, 81.0, 82.0]), np.full((5, HORIZON), np.nan), USUAL)
        is None
    )  # no forecasts
    assert level_shift(np.array([51.0, 49.0, 50.0, 50.5, 90.0]), made, USUAL) is None  # too soon
    # as large a change as the sensor made in the day before (a congestion's daily onset)
    daily = np.concatenate([USUAL, [50.0, 85.0, 50.0]])
    step = np.array([51.0, 49.0, 50.5, 80.0, 81.0, 79.5])
    assert level_shift(step, np.full((6, HORIZON), 50.0), daily) is None
    assert level_shift(step, np.full((6, HORIZON), 50.0), USUAL[:8]) is None  # too short a past


def test_the_window_moves_its_readings_before_a_slot_and_leaves_holes_alone() -> None:
    window = RollingWindow(length=5, max_gap=0)
    for slot, value in [(0, 1.0), (2, 3.0), (3, 10.0), (4, 11.0)]:
        window.add(slot, value)
    assert window.shift_before(3, 7.0) == 2
    assert window.values[0] == 8.0 and window.values[2] == 10.0
    assert np.isnan(window.values[1]) and window.values[3:] == [10.0, 11.0]
    assert window.shift_before(100, 1.0) == 4 and window.shift_before(-5, 1.0) == 0


def test_pending_forecasts_are_looked_up_by_the_slot_they_were_made_at() -> None:
    pending = PendingForecasts(horizon=2)
    rows = np.array([0], dtype=np.int64)
    pending.add(rows, np.array([6]), np.array([[1.0, 2.0]]), np.array([0.0]))
    pending.add(rows, np.array([7]), np.array([[3.0, 4.0]]), np.array([0.0]),
                model=np.array([[5.0, 6.0]]))  # fmt: skip
    made = pending.made(0, np.array([5, 6, 7, 8]))
    assert np.isnan(made[0]).all() and np.isnan(made[3]).all()
    assert made[1].tolist() == [1.0, 2.0] and made[2].tolist() == [5.0, 6.0]  # the model's own
    assert np.isnan(pending.made(3, np.array([6]))).all()  # a row never seen


class WindowMean:
    """The mean of the window, every step ahead: drawn to the old level after a step."""

    provider = "python"
    model_id = "mean@1"
    horizon = HORIZON

    def __init__(self, window: int = 12) -> None:
        self.window = window

    def forecast(self, windows: WindowBatch) -> FloatArray:
        mean = np.nanmean(windows.values, axis=1, keepdims=True)
        return np.repeat(mean, self.horizon, axis=1)


def built(reanchor: str, window: int = 48) -> Pipeline:
    settings = Settings(drift_warmup=30, drift_reanchor=reanchor, drift_feedback_gain=0.0)
    forecaster = WindowMean(window)
    return build_pipeline(settings.replace(step_s=STEP_S), forecaster, Metrics(CollectorRegistry()))


def ticks(steps: int = 140, onset: int = 100, end: int | None = None) -> list[Incoming]:
    """One sensor at 100 with noise, stepping to 300 from ``onset`` to ``end``."""
    rng = np.random.default_rng(3)
    values = 100.0 + rng.normal(size=steps) * 2.0
    values[onset:end] += 200.0
    messages = []
    for t, value in enumerate(values.tolist()):
        tick: dict[str, Any] = {"sensor": "s1", "value": value}
        tick["ts"] = format_ts((T0_S + t * STEP_S) * 1000)
        messages.append(Incoming("stcast.ticks", 0, t, b"s1", json.dumps(tick).encode()))
    return messages


def stream(
    reanchor: str, steps: int = 140, onset: int = 100, end: int | None = None, window: int = 48
) -> tuple[list[float], Pipeline]:
    """The forecasts of the next step, from the ``window``-th reading on, of ``ticks``."""
    pipeline = built(reanchor, window)
    made = []
    for message in ticks(steps, onset, end):
        for output in pipeline.step([message]):
            for _, raw in output.forecasts:
                made.append(json.loads(raw)["values"][0])
    return made, pipeline


def test_after_a_step_the_model_reads_its_history_at_the_new_level() -> None:
    moved, pipeline = stream("on")
    kept, _ = stream("off")
    sink = next(s for s in pipeline.sinks if isinstance(s, DriftSink))
    assert sink.on_detection == pipeline.drifted
    assert pipeline.metrics is not None
    assert pipeline.metrics.registry.get_sample_value("stcast_reanchored_total") == 1
    onset = 100 - 47  # the forecasts from the 48th reading on: the first made at step 47
    # before the step both read the same; the unmoved mean climbs a 48th of the step a step
    assert moved[:onset] == kept[:onset]
    assert 110 < kept[onset + 3] < 130
    # moved within a few steps of the onset: the forecasts are at the new level at once
    late = np.array(moved[onset + 5 : onset + 12])
    assert np.all(np.abs(late - 300.0) < 5.0)
    assert np.all(np.array(kept[onset + 5 : onset + 12]) < 200.0)


def test_off_leaves_the_history_as_it_came() -> None:
    _, pipeline = stream("off")
    assert pipeline.metrics is not None
    assert pipeline.metrics.registry.get_sample_value("stcast_reanchored_total") == 0


def test_a_step_that_ends_is_undone() -> None:
    # a context long enough to hold readings from before the step when it ends
    moved, pipeline = stream("on", steps=170, onset=100, end=120, window=48)
    kept, _ = stream("off", steps=170, onset=100, end=120, window=48)
    first = 47  # the first forecast, made at the 48th reading
    assert pipeline.metrics is not None
    assert pipeline.metrics.registry.get_sample_value("stcast_reanchored_total") == 1
    during = np.array(moved[110 - first : 120 - first]) - np.array(kept[110 - first : 120 - first])
    assert np.all(during > 50.0)  # moved: the context's old readings at the new level
    # two readings back at the old level undo the move: the same context as never moved
    np.testing.assert_allclose(moved[125 - first :], kept[125 - first :], atol=1e-6)
    assert not np.allclose(moved[121 - first], kept[121 - first], atol=1.0)


def test_a_restore_moves_the_history_again_where_the_replay_fires_the_monitor() -> None:
    messages = ticks(steps=240, onset=200)
    handover = 210  # after the move (within a few steps of the onset)

    def served(pipeline: Pipeline, part: list[Incoming]) -> list[float]:
        return [
            json.loads(raw)["values"][0]
            for message in part
            for output in pipeline.step([message])
            for _, raw in output.forecasts
        ]

    whole = built("on")
    served(whole, messages[:handover])
    expected = served(whole, messages[handover:])
    restored, unmoved = built("on"), built("off")
    span_steps = restored.history_span_s // STEP_S
    for pipeline in (restored, unmoved):
        pipeline.restore(messages[handover - span_steps : handover])
    assert 0 < handover - span_steps < 200 - 48 - 30  # the monitors warm up in the replay
    assert np.allclose(served(restored, messages[handover:]), expected)
    assert np.all(np.abs(np.array(expected) - 300.0) < 5.0)  # from a history moved to 300
    assert np.all(np.array(served(unmoved, messages[handover:])) < 290.0)


class TurnsContrary(WindowMean):
    """The window's mean, until ``turn``: then 400 less it (a model the move misleads)."""

    def __init__(self, turn_ts: int) -> None:
        super().__init__(48)
        self.turn_ts = turn_ts

    def forecast(self, windows: WindowBatch) -> FloatArray:
        mean = super().forecast(windows)
        late = (windows.last_ts >= self.turn_ts)[:, None]
        return np.where(late, 400.0 - mean, mean)


def test_a_move_whose_forecasts_do_worse_than_the_history_as_it_came_is_undone() -> None:
    def run_with(reanchor: str) -> list[float]:
        settings = Settings(drift_warmup=30, drift_reanchor=reanchor, drift_feedback_gain=0.0)
        turn = T0_S + 104 * STEP_S  # after the move, so that the move is found as before
        forecaster = TurnsContrary(turn)
        pipeline = build_pipeline(
            settings.replace(step_s=STEP_S), forecaster, Metrics(CollectorRegistry())
        )
        made = []
        for message in ticks(steps=160, onset=100):  # the step lasts: no reading comes back
            for output in pipeline.step([message]):
                made += [json.loads(raw)["values"][0] for _, raw in output.forecasts]
        assert pipeline.metrics is not None
        moves = pipeline.metrics.registry.get_sample_value("stcast_reanchored_total")
        assert moves == (1 if reanchor == "on" else 0)
        return made

    moved, kept = run_with("on"), run_with("off")
    first = 47
    # while it is judged the moved history's forecasts are the contrary model's worst
    assert np.all(np.abs(np.array(moved[106 - first : 110 - first]) - 100.0) < 10.0)
    # judged after 36 pairs (its first 8 steps), undone: the history as it came from then on
    np.testing.assert_allclose(moved[115 - first :], kept[115 - first :], atol=1e-6)
