"""The canary: after a swap the replaced model forecasts in the shadow, before one (a trial) the
new model does; both are scored on the same targets, and a worse new model goes (or never
serves) with a ``rollback`` event."""

from __future__ import annotations

import json

import numpy as np
from prometheus_client import CollectorRegistry

from stream_app.core.canary import Canary, judged_steps
from stream_app.core.forecasters import FloatArray, Persistence, WindowBatch
from stream_app.core.metrics import Metrics
from stream_app.core.pipeline import Pipeline
from stream_app.core.records import Incoming, format_ts
from stream_app.core.retrain_events import ROLLBACK, RetrainEvent

STEP_S = 300
T0_S = 1_467_331_200  # 2016-07-01T00:00:00Z


class Offset(Persistence):
    """Persistence plus a constant: as good as persistence at 0, worse the larger it is."""

    def __init__(self, offset: float, version: int) -> None:
        super().__init__(horizon=2, window=3)
        self.offset = offset
        self.version = version

    @property
    def model_id(self) -> str:
        return f"offset@{self.version}"

    def forecast(self, windows: WindowBatch) -> FloatArray:
        return super().forecast(windows) + self.offset


def test_both_sides_are_scored_on_exactly_the_same_targets() -> None:
    canary = Canary(Persistence(2, 3), "m@2", "m@1", 0.0, horizon=2, duration_s=0, min_pairs=1)
    sensors = np.array([0, 1])
    canary.add(sensors, np.array([5, 5]), np.array([[11.0, 12.0], [20.0, 20.0]]),
               np.array([[10.0, 10.0], [21.0, 23.0]]))  # fmt: skip
    canary.score(np.array([0]), np.array([6]), np.array([10.0]))  # sensor 0, step 1
    assert canary.verdict(1.0) is None  # nothing at the last step yet
    canary.score(sensors, np.array([7, 7]), np.array([10.0, 20.0]))  # both, step 2
    verdict = canary.verdict(1.0)
    assert verdict is not None and verdict.pairs == 2
    assert (verdict.served_mae, verdict.previous_mae) == (1.0, 1.5)  # (2 + 0) / 2, (0 + 3) / 2
    assert (verdict.served_mae_all, verdict.previous_mae_all) == (1.0, 1.0)  # step 1: 1 and 0
    assert not verdict.rollback and verdict.to_json()["decision"] == "keep"


def test_the_verdict_waits_for_its_time_and_pairs_and_respects_the_margin() -> None:
    canary = Canary(Persistence(1, 3), "m@2", "m@1", 100.0, horizon=1, duration_s=50,
                    min_pairs=2, margin=0.1)  # fmt: skip
    canary.add(np.array([0, 1]), np.array([1, 1]), np.array([[10.5], [10.5]]),
               np.array([[10.0], [10.0]]))  # fmt: skip
    canary.score(np.array([0]), np.array([2]), np.array([9.5]))  # 1.0 against 0.5
    assert canary.verdict(200.0) is None  # one pair of two
    canary.score(np.array([1]), np.array([2]), np.array([10.0]))  # 0.5 against 0.0
    assert canary.verdict(149.0) is None  # 49 s of 50
    verdict = canary.verdict(150.0)
    assert verdict is not None and verdict.rollback  # 0.75 > 0.25 x 1.1
    assert canary.ratio == 3.0


def test_a_new_model_better_at_the_last_step_but_worse_an_hour_ahead_goes() -> None:
    # hourly steps, horizon 2: the hour ahead is step 1, the last step 2; both are judged
    judged = judged_steps(3600, 2)
    assert judged == (1, 2)
    canary = Canary(Persistence(2, 3), "m@2", "m@1", 0.0, horizon=2, duration_s=0, min_pairs=1,
                    judged=judged)  # fmt: skip
    canary.add(np.array([0]), np.array([5]), np.array([[13.0, 10.0]]), np.array([[10.0, 12.0]]))
    canary.score(np.array([0]), np.array([6]), np.array([10.0]))  # step 1: new 3, old 0
    canary.score(np.array([0]), np.array([7]), np.array([10.0]))  # step 2: new 0, old 2
    verdict = canary.verdict(1.0)
    assert verdict is not None and verdict.rollback and verdict.step == 1
    assert (verdict.served_mae, verdict.previous_mae) == (3.0, 0.0)
    assert verdict.to_json()["step"] == 1 and canary.ratio == float("inf")
    # judged at the last step alone (as on a 5-minute grid with 12 steps), it would stay
    alone = Canary(Persistence(2, 3), "m@2", "m@1", 0.0, horizon=2, duration_s=0, min_pairs=1)
    alone.add(np.array([0]), np.array([5]), np.array([[13.0, 10.0]]), np.array([[10.0, 12.0]]))
    for slot in (6, 7):
        alone.score(np.array([0]), np.array([slot]), np.array([10.0]))
    kept = alone.verdict(1.0)
    assert kept is not None and not kept.rollback and kept.step == 2
    assert judged_steps(300, 12) == (12,) and judged_steps(86_400, 12) == (1, 12)


def ticks(step: int, values: dict[str, float]) -> Incoming:
    ts = format_ts((T0_S + step * STEP_S) * 1000)
    items = [{"sensor": s, "ts": ts, "value": v} for s, v in values.items()]
    return Incoming("stcast.ticks", 0, step, b"net", json.dumps({"ticks": items}).encode())


def series(step: int) -> dict[str, float]:
    return {f"s{i}": 100.0 + 10 * i + (step % 5) for i in range(4)}


def stream(pipeline: Pipeline, steps: range) -> tuple[list[str], list[RetrainEvent]]:
    """The model of every forecast, and the retrain events, over ``steps``."""
    models, events = [], []
    for step in steps:
        for output in pipeline.step([ticks(step, series(step))]):
            models += [json.loads(raw)["model"] for _, raw in output.forecasts]
            events += [RetrainEvent.decode(raw) for _, raw in output.retrain_events]
    return models, events


def canary_pipeline(
    registry: CollectorRegistry, offset: float = 0.0, mode: str = "after"
) -> Pipeline:
    return Pipeline(
        Offset(offset, 1),
        step_s=STEP_S,
        network="net",
        clock=lambda: 2e9,
        metrics=Metrics(registry),
        canary_s=3600.0,  # 12 steps
        canary_min_pairs=8,
        canary_mode=mode,
    )


def test_a_worse_model_is_rolled_back_after_its_canary_with_an_event() -> None:
    registry = CollectorRegistry()
    pipeline = canary_pipeline(registry)
    stream(pipeline, range(10))
    pipeline.swap(Offset(5.0, 2))
    models, events = stream(pipeline, range(10, 40))
    # the canary starts at step 9's time and decides at step 21's: 12 steps later
    assert models[: 12 * 4] == ["offset@2"] * 48 and set(models[13 * 4 :]) == {"offset@1"}
    assert pipeline.forecaster.model_id == "offset@1" and pipeline.canary is None
    [event] = events
    assert (event.reason, event.model, event.network, event.sensors) == (
        ROLLBACK, "offset@2", "net", ()
    )  # fmt: skip
    evidence = event.evidence
    assert evidence["decision"] == "rollback" and evidence["previous"] == "offset@1"
    assert evidence["previous_mae"] < evidence["served_mae"]
    assert evidence["pairs"] >= 8
    verdicts = "stcast_canary_verdicts_total"
    assert registry.get_sample_value(verdicts, {"decision": "rollback"}) == 1.0
    assert registry.get_sample_value(verdicts, {"decision": "keep"}) == 0.0
    assert registry.get_sample_value("stcast_model_swaps_total") == 2.0


def test_a_better_model_is_kept_and_a_rollback_swap_has_no_canary() -> None:
    registry = CollectorRegistry()
    pipeline = Pipeline(
        Offset(5.0, 1), step_s=STEP_S, clock=lambda: 2e9, metrics=Metrics(registry),
        canary_s=3600.0, canary_min_pairs=8, canary_mode="after",
    )  # fmt: skip
    stream(pipeline, range(10))
    pipeline.swap(Offset(0.0, 2))
    models, events = stream(pipeline, range(10, 40))
    assert set(models) == {"offset@2"} and events == []
    assert [v.to_json()["decision"] for v in pipeline.verdicts] == ["keep"]
    assert registry.get_sample_value("stcast_canary_verdicts_total", {"decision": "keep"}) == 1
    pipeline.swap(Offset(5.0, 1), canary=False)  # an announced rollback
    assert pipeline.canary is None
    pipeline.swap(Offset(5.0, 1))  # already served: nothing happens
    assert registry.get_sample_value("stcast_model_swaps_total") == 2.0


def test_no_canary_when_it_is_off() -> None:
    pipeline = Pipeline(Offset(0.0, 1), step_s=STEP_S, clock=lambda: 2e9)
    stream(pipeline, range(10))
    pipeline.swap(Offset(50.0, 2))
    models, events = stream(pipeline, range(10, 60))
    assert set(models) == {"offset@2"} and events == [] and pipeline.canary is None


def test_on_trial_the_shadow_side_is_the_new_model() -> None:
    canary = Canary(Persistence(1, 3), "m@2", "m@1", 0.0, horizon=1, duration_s=0, min_pairs=1,
                    trial=True)  # fmt: skip
    one = np.array([0])
    canary.add(one, one, np.array([[11.0]]), np.array([[13.0]]))  # served m@1, shadow m@2
    canary.score(one, one + 1, np.array([10.0]))
    verdict = canary.verdict(0.0)
    assert verdict is not None and (verdict.served_mae, verdict.previous_mae) == (3.0, 1.0)
    assert verdict.rollback and verdict.to_json()["decision"] == "reject"
    assert verdict.to_json()["trial"] is True and canary.ratio == 3.0  # new over old


def test_on_trial_a_worse_model_never_serves_and_the_registry_is_told() -> None:
    registry = CollectorRegistry()
    pipeline = canary_pipeline(registry, mode="before")
    stream(pipeline, range(10))
    pipeline.swap(Offset(5.0, 2))
    assert pipeline.forecaster.model_id == "offset@1" and pipeline.canary is not None
    models, events = stream(pipeline, range(10, 40))
    assert set(models) == {"offset@1"} and pipeline.canary is None  # it never served
    [event] = events
    assert (event.reason, event.model) == (ROLLBACK, "offset@2")
    evidence = event.evidence
    assert evidence["decision"] == "reject" and evidence["trial"] is True
    assert evidence["previous"] == "offset@1" and evidence["served"] == "offset@2"
    assert evidence["previous_mae"] < evidence["served_mae"] and evidence["pairs"] >= 8
    verdicts = "stcast_canary_verdicts_total"
    assert registry.get_sample_value(verdicts, {"decision": "reject"}) == 1.0
    assert registry.get_sample_value("stcast_model_swaps_total") == 0.0


def test_on_trial_a_better_model_serves_once_its_trial_ends() -> None:
    registry = CollectorRegistry()
    pipeline = canary_pipeline(registry, offset=5.0, mode="before")
    stream(pipeline, range(10))
    swaps = registry.get_sample_value("stcast_model_swaps_total")
    pipeline.swap(Offset(0.0, 2))
    models, events = stream(pipeline, range(10, 40))
    # the trial starts at step 9's time and decides at step 21's; offset@2 serves from then
    assert models[: 12 * 4] == ["offset@1"] * 48 and set(models[13 * 4 :]) == {"offset@2"}
    assert events == [] and pipeline.canary is None
    assert [v.to_json()["decision"] for v in pipeline.verdicts] == ["promote"]
    assert registry.get_sample_value("stcast_canary_verdicts_total", {"decision": "promote"}) == 1
    assert registry.get_sample_value("stcast_model_swaps_total") == (swaps or 0) + 1


def test_a_trial_ends_when_the_registry_goes_back_to_the_serving_model() -> None:
    pipeline = canary_pipeline(CollectorRegistry(), mode="before")
    stream(pipeline, range(10))
    pipeline.swap(Offset(5.0, 2))
    assert pipeline.canary is not None and pipeline.canary.trial
    pipeline.swap(Offset(0.0, 1), canary=False, replacing="offset@3")  # another trial's
    assert pipeline.canary is not None and pipeline.canary.new == "offset@2"
    pipeline.swap(Offset(0.0, 1), canary=False, replacing="offset@2")  # another worker's reject
    assert pipeline.canary is None and pipeline.forecaster.model_id == "offset@1"
    models, events = stream(pipeline, range(10, 40))
    assert set(models) == {"offset@1"} and events == []


class Turning(Offset):
    """As good as persistence until ``turn_s``, then ``offset`` off: a model that wins its
    trial and then does worse."""

    def __init__(self, offset: float, version: int, turn_s: int) -> None:
        super().__init__(offset, version)
        self.turn_s = turn_s

    def forecast(self, windows: WindowBatch) -> FloatArray:
        late = np.asarray(windows.last_ts) >= self.turn_s
        return Persistence.forecast(self, windows) + np.where(late, self.offset, 0.0)[:, None]


def test_with_both_a_model_that_won_its_trial_is_watched_and_rolled_back() -> None:
    registry = CollectorRegistry()
    pipeline = canary_pipeline(registry, offset=5.0, mode="both")
    stream(pipeline, range(10))
    pipeline.swap(Turning(50.0, 2, T0_S + 25 * STEP_S))
    models, events = stream(pipeline, range(10, 60))
    # on trial from step 9's time to step 21's; serves, watched, from then to step 33's; back
    assert models[: 12 * 4] == ["offset@1"] * 48
    assert set(models[13 * 4 : 24 * 4]) == {"offset@2"} and set(models[26 * 4 :]) == {"offset@1"}
    assert [v.to_json()["decision"] for v in pipeline.verdicts] == ["promote", "rollback"]
    [event] = events
    assert (event.reason, event.model) == (ROLLBACK, "offset@2")
    assert event.evidence["trial"] is False and event.evidence["previous"] == "offset@1"
    assert pipeline.forecaster.model_id == "offset@1" and pipeline.canary is None


def test_with_both_a_model_that_stays_good_is_kept_after_its_watch() -> None:
    pipeline = canary_pipeline(CollectorRegistry(), offset=5.0, mode="both")
    stream(pipeline, range(10))
    pipeline.swap(Offset(0.0, 2))
    models, events = stream(pipeline, range(10, 60))
    assert set(models[13 * 4 :]) == {"offset@2"} and events == []
    assert [v.to_json()["decision"] for v in pipeline.verdicts] == ["promote", "keep"]
