"""Drift monitors and retrain events: golden detection indices, the rules, the record."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from river.drift import PageHinkley

from stream_app.core.drift import (
    DEFAULT_COOLDOWN,
    DEFAULT_WARMUP,
    DETECTORS,
    DriftDetector,
    DriftMonitor,
    DriftSink,
    ObjectMonitors,
    PageHinkleyTable,
    card_scale,
    describe,
    make_detector,
    monitor_table,
)
from stream_app.core.forecasters import Forecaster, Persistence
from stream_app.core.metrics import Metrics
from stream_app.core.pipeline import Pipeline
from stream_app.core.records import Incoming, format_ts
from stream_app.core.retrain_events import FIELDS, Detection, RetrainEvent, RetrainPolicy
from stream_app.core.scoring import Scores

DESIGN = Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md"
T0 = 1_467_331_200.0  # 2016-07-01T00:00:00Z
STEP_S = 300
HORIZON = 12
SHIFT_AT = 400  # the scored actual at which the seeded level shift starts
# Every configuration passes the same suite (river's estimator checks, for detectors).
CONFIGURATIONS: dict[str, Callable[[], DriftDetector]] = {
    "page-hinkley": lambda: make_detector("page-hinkley"),
    "adwin": lambda: make_detector("adwin"),
    "page-hinkley-sensitive": lambda: make_detector("page-hinkley", threshold=10.0, delta=1.0),
    "adwin-sensitive": lambda: make_detector("adwin", delta=1e-6),
}


class Recorder(list[Detection]):
    """A ``DetectionListener`` that keeps what it hears."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def update(self, detection: Detection) -> None:
        self.append(detection)

    def model_swapped(self) -> None:
        self.swaps = getattr(self, "swaps", 0) + 1

    def advance(self, now: float) -> None:
        self.times.append(now)


class AlwaysDrifting:
    """A detector double that detects drift on every update (no inheritance needed)."""

    def __init__(self) -> None:
        self.updates = 0

    def update(self, x: float) -> None:
        self.updates += 1

    @property
    def drift_detected(self) -> bool:
        return True

    def clone(self) -> AlwaysDrifting:
        return AlwaysDrifting()


def shifted_errors(n: int, sensors: int = 1, seed: int = 7, shift: float = 5.0) -> np.ndarray:
    """(n, sensors, horizon) signed errors whose bias jumps by ``shift`` sd at ``SHIFT_AT``."""
    rng = np.random.default_rng(seed)
    sd = 10.0 * (1 + 0.2 * np.arange(HORIZON))  # errors grow with the horizon, as they do
    errors = rng.normal(size=(n, sensors, HORIZON)) * sd
    errors[SHIFT_AT:] += shift * sd
    return errors


def chunk(errors: np.ndarray) -> Scores:
    """One scored actual per sensor, every horizon settled: (sensors, horizon) errors."""
    sensors, horizons = np.nonzero(np.ones_like(errors, dtype=bool))
    return Scores(sensors, horizons + 1, errors[sensors, horizons], sensors)


def make_sink(
    detector: DriftDetector | None = None, **options: object
) -> tuple[DriftSink, Recorder, list[float]]:
    now = [T0]
    policy = Recorder()
    sink = DriftSink(detector, sensor_of=lambda row: f"s{row}", now=lambda: now[0], policy=policy,
                     **options)  # type: ignore[arg-type]  # fmt: skip
    return sink, policy, now


def feed(sink: DriftSink, now: list[float], errors: np.ndarray) -> None:
    for errors_t in errors:
        sink.update(chunk(errors_t))
        now[0] += STEP_S


def first_index(detections: list[Detection]) -> int:
    return round((detections[0].detected_at - T0) / STEP_S)


# --- golden: these numbers must not move ------------------------------------------------------


@pytest.mark.parametrize("magnitude", [1.0, 1e-12])  # errors in any units: relative to usual
@pytest.mark.parametrize(("name", "index"), [("page-hinkley", 405), ("adwin", 414)])
def test_the_index_at_which_a_seeded_level_shift_is_detected(
    name: str, index: int, magnitude: float
) -> None:
    sink, found, now = make_sink(make_detector(name))
    feed(sink, now, shifted_errors(600) * magnitude)
    assert first_index(found) == index
    assert found[0].error_before == pytest.approx(1.0, abs=0.15)
    assert found[0].error_after > 1.5


def test_the_defaults_are_the_calibrated_ones() -> None:
    assert describe(make_detector()) == {
        "name": "page-hinkley", "min_instances": 30, "delta": 2.0, "threshold": 18.0,
        "alpha": 0.9999, "mode": "up",
    }  # fmt: skip
    assert describe(make_detector("adwin"))["delta"] == 1e-16
    assert (DEFAULT_WARMUP, DEFAULT_COOLDOWN) == (288, 36)


# --- the contract every detector configuration passes -----------------------------------------


@pytest.fixture(params=sorted(CONFIGURATIONS))
def detector(request: pytest.FixtureRequest) -> DriftDetector:
    return CONFIGURATIONS[request.param]()


def test_contract_river_protocol(detector: DriftDetector) -> None:
    assert detector.drift_detected is False
    assert detector.update(1.0) is None  # type: ignore[func-returns-value]
    fresh = detector.clone()
    assert fresh is not detector and describe(fresh) == describe(detector)


def test_contract_quiet_on_stationary_errors(detector: DriftDetector) -> None:
    sink, found, now = make_sink(detector)
    feed(sink, now, shifted_errors(SHIFT_AT, sensors=3))
    assert not found


def test_contract_detects_a_sustained_shift_soon(detector: DriftDetector) -> None:
    sink, found, now = make_sink(detector)
    feed(sink, now, shifted_errors(SHIFT_AT + 36, sensors=3))
    assert {d.sensor for d in found} == {"s0", "s1", "s2"}
    assert all(SHIFT_AT <= round((d.detected_at - T0) / STEP_S) < SHIFT_AT + 36 for d in found)


def test_contract_warmup_prevents_early_firing(detector: DriftDetector) -> None:
    warmed, found, now = make_sink(detector.clone(), warmup=SHIFT_AT - 100)
    feed(warmed, now, shifted_errors(SHIFT_AT + 36))
    assert SHIFT_AT <= first_index(found) < SHIFT_AT + 36
    warming, found, now = make_sink(detector.clone(), warmup=SHIFT_AT + 50)
    feed(warming, now, shifted_errors(SHIFT_AT + 200))
    assert not found  # a change inside the warm-up is the baseline it learns


def test_contract_clone_is_independent(detector: DriftDetector) -> None:
    monitor = DriftMonitor(detector, warmup=0, cooldown=0)
    twin = monitor.clone()
    for x in [1.0] * 100 + [50.0] * 50:
        monitor.update(x)
    assert twin.seen == 0 and twin.detector is not monitor.detector
    assert (twin.warmup, twin.cooldown, twin.recent) == (0, 0, 12)


# --- warm-up, cooldown, reset -----------------------------------------------------------------


def test_warmup_and_cooldown_count_updates() -> None:
    monitor = DriftMonitor(AlwaysDrifting(), warmup=10, cooldown=5)
    fired = []
    for i in range(1, 30):
        monitor.update(1.0)
        if monitor.drift_detected:
            fired.append(i)
    assert fired == [11, 17, 23, 29]  # from update warmup + 1, then every cooldown + 1


def test_reset_on_a_model_swap_starts_every_monitor_afresh() -> None:
    sink, found, now = make_sink(AlwaysDrifting(), warmup=5, cooldown=1000)
    feed(sink, now, shifted_errors(8, sensors=2))
    assert len(found) == 2 and sink.monitored == 2
    sink.reset()
    assert sink.monitored == 0
    feed(sink, now, shifted_errors(5, sensors=2))
    assert len(found) == 2  # warming up again: the cooldown was not what held them
    feed(sink, now, shifted_errors(1, sensors=2))
    assert len(found) == 4


def test_the_default_page_hinkley_tolerates_errors_that_grow_threefold_adwin_does_not() -> None:
    """The price of at most one false alarm per sensor-week on PEMS08 (whose holiday and the
    Tuesday after it raise errors about that much for hours): a bias of 2.5 sd, |error| about
    3.2 times the usual, is tolerated; 3 sd (3.75 times) is not."""
    for name, shift, fires in (
        ("page-hinkley", 2.5, False),
        ("page-hinkley", 3.0, True),
        ("adwin", 2.5, True),
    ):
        sink, found, now = make_sink(make_detector(name))
        feed(sink, now, shifted_errors(600, shift=shift))
        assert bool(found) is fires, (name, shift)


def test_the_scale_is_learned_in_the_warmup_then_frozen() -> None:
    sink, found, now = make_sink(make_detector(threshold=25.0), warmup=50)
    feed(sink, now, shifted_errors(50))
    feed(sink, now, 10 * shifted_errors(100))
    feed(sink, now, 50 * shifted_errors(40))
    # 189: the fifty-fold rise lasts past the cooldown, so it fires again
    assert [first_index([d]) for d in found] == [54, 151, 189]
    assert found[1].error_before == pytest.approx(10.0, rel=0.15)  # still in warm-up units


def test_a_forgotten_row_is_a_new_sensor() -> None:
    sink, found, now = make_sink(make_detector(), warmup=50)
    feed(sink, now, shifted_errors(60, sensors=2))
    sink.forget([1])
    assert sink.monitored == 1
    feed(sink, now, 10 * shifted_errors(40, sensors=2))
    assert {d.sensor for d in found} == {"s0"}  # row 1 warms up again, on the new scale


def test_a_card_scale_is_used_from_the_first_error() -> None:
    lookup = card_scale({"sensor_mae": {"s0": 2.0, "s1": [1.0, 4.0]}})
    sink, found, _ = make_sink(AlwaysDrifting(), warmup=0, horizon=2, scale=lookup)
    sink.update(Scores(np.array([0, 0, 1, 1, 2, 2]), np.array([1, 2] * 3), np.full(6, 8.0),
                       np.array([0, 0, 1, 1, 2, 2])))  # fmt: skip
    assert [d.error_after for d in found] == [4.0, 5.0, 1.0]  # s2: no card scale, its own
    assert card_scale({"val": {}}) is None


def test_horizons_select_the_errors_watched() -> None:
    sink, found, now = make_sink(AlwaysDrifting(), horizons=(1,), warmup=0, cooldown=0)
    scores = Scores(np.array([0, 0]), np.array([2, 3]), np.array([5.0, 6.0]), np.array([0, 0]))
    sink.update(scores)
    assert sink.monitored == 0 and not found
    feed(sink, now, shifted_errors(1))
    assert len(found) == 1


def test_two_actuals_of_one_sensor_in_a_chunk_are_two_updates() -> None:
    sink, found, _ = make_sink(AlwaysDrifting(), warmup=1, cooldown=0)
    sink.update(Scores(np.array([0, 0, 0]), np.array([1, 2, 1]), np.ones(3), np.array([0, 0, 1])))
    assert len(found) == 1  # the second actual fired, after a warm-up of one


def test_detections_are_counted_in_the_metric() -> None:
    metrics = Metrics(CollectorRegistry())
    sink, found, now = make_sink(AlwaysDrifting(), warmup=0, cooldown=0, metrics=metrics)
    feed(sink, now, shifted_errors(3, sensors=2))
    assert metrics.registry.get_sample_value("stcast_drift_detected_total") == 6 == len(found)


def test_an_unknown_detector_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        make_detector("kswin")
    assert set(DETECTORS) == {"page-hinkley", "adwin"}


# --- retrain events ---------------------------------------------------------------------------


def make_policy(**options: object) -> tuple[RetrainPolicy, list[RetrainEvent]]:
    events: list[RetrainEvent] = []
    settings: dict[str, object] = {"gather_s": 0.0, "min_share": 0.0, **options}
    policy = RetrainPolicy("pems08", emit=events.append, model=lambda: "seed-lstm@3",
                           monitored=lambda: 170, **settings)  # type: ignore[arg-type]  # fmt: skip
    return policy, events


def detect(policy: RetrainPolicy, sensors: list[str], at_s: float) -> None:
    for sensor in sensors:
        policy.update(Detection(sensor, T0 + at_s, 1.0, 4.0))


def test_an_event_needs_enough_sensors_within_the_window() -> None:
    policy, events = make_policy(min_sensors=3, window_s=3600.0)
    detect(policy, ["a", "b"], 0)
    detect(policy, ["c"], 3601)  # a and b are too old by then
    assert not events and policy.drifting == {"c"}
    detect(policy, ["d", "e"], 3700)
    assert [e.sensors for e in events] == [("c", "d", "e")]


def test_the_share_of_the_network_sets_the_bar() -> None:
    policy, _ = make_policy(min_sensors=3, min_share=0.02)
    assert policy.required == 4  # ceil(0.02 * 170)
    assert make_policy(min_sensors=3)[0].required == 3


def test_a_network_smaller_than_min_sensors_needs_all_it_monitors() -> None:
    """Two turbines or one meter can still retrain: every monitored sensor must drift."""
    for monitored, sensors in ((2, ["a", "b"]), (1, ["a"])):
        events: list[RetrainEvent] = []
        policy = RetrainPolicy(
            "wind", emit=events.append, model=lambda: "universal@1",
            monitored=lambda n=monitored: n, gather_s=0.0, min_sensors=3,
        )  # fmt: skip
        assert policy.required == monitored
        detect(policy, sensors[:-1], 0)
        assert not events
        detect(policy, sensors[-1:], 60)
        assert [e.sensors for e in events] == [tuple(sensors)]
    unknown = RetrainPolicy("x", emit=lambda e: None, model=lambda: "m@1", min_sensors=3)
    assert unknown.required == 3  # nothing monitored yet: the usual bar


def test_one_event_per_network_per_cooldown() -> None:
    policy, events = make_policy(cooldown_s=21_600.0, min_sensors=4)
    for hour in range(24):
        detect(policy, [f"s{hour}-{i}" for i in range(5)], hour * 3600.0)
    assert [e.detected_at for e in events] == [
        "2016-07-01T00:00:00Z", "2016-07-01T06:00:00Z",
        "2016-07-01T12:00:00Z", "2016-07-01T18:00:00Z",
    ]  # fmt: skip


def test_an_event_waits_for_the_stragglers_of_the_same_change() -> None:
    policy, events = make_policy(gather_s=900.0, min_sensors=4)
    detect(policy, ["a", "b", "c", "d"], 0)
    detect(policy, ["e"], 600)
    assert not events
    policy.advance(T0 + 900)
    assert [e.sensors for e in events] == [("a", "b", "c", "d", "e")]
    assert events[0].detected_at == "2016-07-01T00:00:00Z"


def test_a_persistently_broken_sensor_is_quarantined() -> None:
    policy, events = make_policy(strikes=3, min_sensors=3, cooldown_s=3600.0, quarantine_s=86_400.0)
    for hour in range(8):  # "broken" drifts every time; two others drift with it
        detect(policy, ["broken", f"x{hour}", f"y{hour}"], hour * 3600.0)
        policy.model_swapped()  # a retrain after each event does not lift the quarantine
    assert [("broken" in e.sensors) for e in events] == [True, True, True]
    assert events[2].evidence["quarantined_now"] == ["broken"]
    assert policy.quarantined == {"broken"} and policy.held == 5
    detect(policy, ["p", "q", "r"], 9 * 3600.0)
    assert events[-1].evidence["quarantined"] == ["broken"] and "broken" not in events[-1].sensors


def test_a_sensor_missing_from_an_event_starts_its_strikes_again() -> None:
    policy, events = make_policy(strikes=2, min_sensors=2, cooldown_s=0.0)
    detect(policy, ["a", "b"], 0)
    detect(policy, ["c", "d"], 10)
    detect(policy, ["a", "b"], 20)
    assert len(events) == 3 and not policy.quarantined


def test_a_quarantine_ends_after_a_quiet_day() -> None:
    policy, events = make_policy(strikes=1, min_sensors=1, cooldown_s=0.0, quarantine_s=86_400.0)
    detect(policy, ["a"], 0)
    detect(policy, ["a"], 40_000)  # still broken: the quiet day starts again
    detect(policy, ["b"], 86_400)
    assert policy.quarantined == {"a", "b"}
    detect(policy, ["c"], 40_000 + 86_400)
    assert "a" not in policy.quarantined and len(events) == 3


def test_events_are_counted_in_the_metric() -> None:
    metrics = Metrics(CollectorRegistry())
    policy, events = make_policy(metrics=metrics, min_sensors=1, cooldown_s=0.0)
    detect(policy, ["a"], 0)
    detect(policy, ["b"], 1)
    assert metrics.registry.get_sample_value("stcast_retrain_events_total") == 2 == len(events)


# --- the record -------------------------------------------------------------------------------


@pytest.fixture
def event() -> RetrainEvent:
    policy, events = make_policy(detector=describe(make_detector()), min_share=0.02)
    detect(policy, ["pems08/1", "pems08/2", "pems08/3", "pems08/4"], 3600.0)
    return events[0]


def test_the_record_has_exactly_the_design_keys(event: RetrainEvent) -> None:
    record = json.loads(event.encode())
    assert tuple(record) == FIELDS
    if DESIGN.exists():
        line = re.search(r"\*\*Retrain event\*\*.*?`(\{.*?\})`", DESIGN.read_text(), re.S)
        assert line and set(re.findall(r'"(\w+)"', line.group(1))) == set(FIELDS)
    assert record["reason"] == "drift" and record["model"] == "seed-lstm@3"
    assert record["network"] == "pems08" and event.key == b"pems08"
    assert datetime.fromisoformat(record["detected_at"]).utcoffset() is not None
    assert uuid.UUID(record["id"]).version == 5


def test_the_evidence_says_what_drifted_and_how(event: RetrainEvent) -> None:
    evidence = json.loads(event.encode())["evidence"]
    assert evidence["detector"]["name"] == "page-hinkley"
    assert (evidence["error_before"], evidence["error_after"]) == (1.0, 4.0)
    assert sorted(evidence["per_sensor"]) == list(event.sensors)
    assert evidence["required_sensors"] == 4 and evidence["monitored_sensors"] == 170
    assert evidence["quarantined"] == [] == evidence["quarantined_now"]


def test_the_record_round_trips_and_the_id_is_deterministic(event: RetrainEvent) -> None:
    assert RetrainEvent.decode(event.encode()) == event
    policy, again = make_policy(detector=describe(make_detector()), min_share=0.02)
    detect(policy, ["pems08/1", "pems08/2", "pems08/3", "pems08/4"], 3600.0)
    assert again[0].id == event.id
    with pytest.raises(ValueError, match="exactly the keys"):
        RetrainEvent.decode(b'{"id": "x"}')


def test_an_unknown_error_is_null_not_nan() -> None:
    policy, events = make_policy(min_sensors=1)
    policy.update(Detection("a", T0, math.nan, 3.0))
    assert json.loads(events[0].encode())["evidence"]["error_before"] is None


# --- through the real pipeline ----------------------------------------------------------------


def readings(steps: int = 700, sensors: int = 3, seed: int = 11) -> np.ndarray:
    """A daily cycle plus noise per sensor; +3 sd on sensor 0 from step ``SHIFT_AT + 100``.

    Persistence absorbs the shift within its window: Page-Hinkley catches the transient one
    step after; ADWIN, a detector of lasting changes, does not (as on PEMS08).
    """
    rng = np.random.default_rng(seed)
    day = 200 + 150 * np.sin(2 * np.pi * np.arange(steps) / 288)
    values = day[:, None] + rng.normal(size=(steps, sensors)) * 15
    values[SHIFT_AT + 100 :, 0] += 3 * values[:, 0].std()
    return values


@pytest.mark.parametrize(("name", "step"), [("page-hinkley", 501), ("adwin", None)])
def test_the_step_at_which_the_pipeline_detects_a_seeded_level_shift(
    name: str, step: int | None
) -> None:
    found, now = Recorder(), [T0]
    sink = DriftSink(make_detector(name), sensor_of=lambda row: f"s{row}", now=lambda: now[0],
                     policy=found)  # fmt: skip
    pipeline = Pipeline(Persistence(), step_s=STEP_S, sinks=[sink], clock=lambda: T0 + 1e7)
    for t, row in enumerate(readings()):
        now[0] = T0 + t * STEP_S
        ticks = [{"sensor": f"s{i}", "ts": format_ts(int(now[0] * 1000)), "value": v}
                 for i, v in enumerate(row.tolist())]  # fmt: skip
        for _ in pipeline.step([Incoming("t", 0, t, b"n", json.dumps({"ticks": ticks}).encode())]):
            pass
    firings = [(d.sensor, round((d.detected_at - T0) / STEP_S)) for d in found]
    assert firings == ([] if step is None else [("s0", step)])


# --- the Page-Hinkley table: river's arithmetic on arrays ------------------------------------


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(["up", "down", "both"]),
    warmup=st.integers(0, 40),
    cooldown=st.integers(0, 20),
)
def test_the_page_hinkley_table_fires_exactly_as_river_monitors_do(
    seed: int, mode: str, warmup: int, cooldown: int
) -> None:
    """Updates of up to 30 rows, some repeated within an update, level shifts up and down,
    rows forgotten and started again: the same detections, in the same order, with the same
    evidence to the last bit."""
    rng = np.random.default_rng(seed)
    detector = PageHinkley(threshold=3.0, delta=0.05, min_instances=10, mode=mode)
    table = PageHinkleyTable(detector, warmup, cooldown)
    objects = ObjectMonitors(detector, warmup, cooldown)
    level = np.ones(30)
    fired_total = 0
    for _ in range(300):
        level[rng.integers(0, 30, 2)] = rng.choice([0.2, 1.0, 4.0], 2)
        rows = rng.integers(0, 30, rng.integers(1, 25))
        values = level[rows] * rng.gamma(2.0, 0.5, len(rows))
        assert table.start(rows) == sorted(objects.start(rows))
        expected = objects.update(rows, values)
        assert repr(table.update(rows, values)) == repr(expected)  # NaN equals NaN in repr
        fired_total += len(expected)
        assert table.seen(np.arange(30)[[r in objects.rows() for r in range(30)]]).tolist() == (
            [objects.seen(np.array([r]))[0] for r in sorted(objects.rows())]
        )
        if rng.random() < 0.05:
            gone = rng.integers(0, 30, 3).tolist()
            assert table.forget(gone) == objects.forget(gone)
    assert len(table) == len(objects)
    assert fired_total > 0 or warmup > 35


def test_a_sink_uses_the_table_for_page_hinkley_and_objects_for_the_rest() -> None:
    assert isinstance(monitor_table(make_detector("page-hinkley"), 5, 5), PageHinkleyTable)
    assert isinstance(monitor_table(make_detector("adwin"), 5, 5), ObjectMonitors)


def test_each_model_kind_is_watched_with_its_own_calibration_unless_one_is_set(
    seed_model_dir: Path,
) -> None:
    from stream_app.assembly import build_pipeline
    from stream_app.bundled import model_path
    from stream_app.core.onnx_forecaster import OnnxForecaster
    from stream_app.settings import Settings

    def watched_with(forecaster: Forecaster, settings: Settings) -> tuple[float, float]:
        pipeline = build_pipeline(settings, forecaster, Metrics(CollectorRegistry()))
        sink = next(s for s in pipeline.sinks if isinstance(s, DriftSink))
        found = describe(sink.detector)
        return found["threshold"], found["delta"]

    window = OnnxForecaster(seed_model_dir, provider="cpu")
    universal = OnnxForecaster(model_path("universal"), provider="cpu", step_s=300)
    unset = Settings(step_s=300)
    assert watched_with(window, unset) == (25.0, 3.0)  # a window model trained on the network
    assert watched_with(universal, unset) == (18.0, 2.0)
    assert watched_with(Persistence(12), unset) == (18.0, 2.0)  # the baselines: the defaults
    given = unset.replace(drift_threshold=40.0)
    assert watched_with(window, given) == (40.0, 3.0)  # what is set wins, the rest is the model's
    assert watched_with(universal, given.replace(drift_delta=0.0)) == (40.0, 0.0)
