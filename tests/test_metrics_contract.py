"""The exported metrics are exactly DESIGN.md's list, with its labels and no per-sensor label."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stream_app.core.metrics import (
    PREFIX,
    SCORED_HORIZONS,
    Metrics,
    exported_names,
    observe_many,
)

DESIGN = Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md"
HISTOGRAM_LABELS = {"le"}


@pytest.fixture(scope="module")
def documented() -> dict[str, frozenset[str]]:
    """DESIGN.md's metric names (with the prefix) and the labels each declares."""
    if not DESIGN.exists():
        pytest.skip(f"DESIGN.md not found at {DESIGN} (the shared folder beside the repository)")
    text = DESIGN.read_text(encoding="utf-8")
    section = re.search(r"^## Prometheus metrics.*?\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "DESIGN.md has no 'Prometheus metrics' section"
    names = {}
    # "A `network` label is allowed": a name followed by "label" is a label, not a metric
    for name, labels in re.findall(r"`([a-z_]+)(?:\{([a-z_,]*)\})?`(?! label)", section.group(1)):
        names[f"{PREFIX}_{name}"] = frozenset(filter(None, labels.split(",")))
    return names


@pytest.fixture
def metrics() -> Metrics:
    metrics = Metrics(CollectorRegistry())
    # labelled gauges expose nothing until a child exists
    metrics.set_model("seed-lstm@3", "CPUExecutionProvider")
    metrics.set_rolling_mae([1.0], [2.0])
    metrics.set_consumer_lag(0, 5)
    metrics.set_coverage([0.8])
    metrics.model_swap_failures.labels(reason="sha256").inc()
    metrics.reading_faults.labels(check="stuck").inc()
    return metrics


def exported_labels(metrics: Metrics) -> dict[str, frozenset[str]]:
    labels: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        found = labels.setdefault(name, set())
        for sample in family.samples:
            found.update(set(sample.labels) - HISTOGRAM_LABELS)
    return {name: frozenset(found) for name, found in labels.items()}


def test_the_section_was_parsed(documented: dict[str, frozenset[str]]) -> None:
    assert len(documented) == 17
    assert documented["stcast_rejected_ticks_total"] == {"reason"}
    assert "stcast_" not in documented and "stcast__total" not in documented


# Added on purpose, beyond DESIGN.md's list (CHANGELOG.md): name -> (labels, reason). DESIGN.md
# now lists the three that were added this way (swap failures, baseline MAE, consumer lag).
ADDED_WHY: dict[str, tuple[set[str], str]] = {
    "stcast_unreadable_batches_total": (
        {"action"},
        "issue 15: a record batch the worker cannot decode is counted, stopped at or skipped",
    ),
    "stcast_interval_coverage": (
        {"horizon"},
        "issue 18: the live coverage of the 0.1-0.9 interval per horizon step, beside the MAE",
    ),
    "stcast_reading_faults_total": (
        {"check"},
        "issue 19: the readings monitors' findings (stuck, range, noise) are counted",
    ),
    "stcast_canary_verdicts_total": (
        {"decision"},
        "issue 19: canaries after a swap, ended by keep or rollback, are visible as a metric",
    ),
    "stcast_canary_mae_ratio": (
        set(),
        "issue 19: the running comparison of a canary (new over replaced MAE) is visible",
    ),
    "stcast_forecasts_without_neighbours_total": (
        set(),
        "issue 18: a metric counts forecasts made without neighbours",
    ),
    "stcast_reanchored_total": (
        set(),
        "issue 19: detections that moved a sensor's history to a new level it stepped to",
    ),
}
ADDED = {name: frozenset(labels) for name, (labels, _) in ADDED_WHY.items()}


def test_exported_names_are_exactly_the_documented_ones(
    documented: dict[str, frozenset[str]], metrics: Metrics
) -> None:
    assert exported_names(metrics) == set(documented) | set(ADDED)
    assert exported_names(Metrics(CollectorRegistry())) == set(documented) | set(ADDED)


def test_labels_are_the_documented_ones(
    documented: dict[str, frozenset[str]], metrics: Metrics
) -> None:
    assert exported_labels(metrics) == documented | ADDED


def test_labels_named_in_the_brief(metrics: Metrics) -> None:
    labels = exported_labels(metrics)
    assert labels["stcast_rejected_ticks_total"] == {"reason"}
    assert labels["stcast_forecast_abs_error"] == {"horizon"}
    assert labels["stcast_model_info"] == {"model", "version", "provider"}
    assert all("sensor" not in found for found in labels.values())


def test_added_metrics(metrics: Metrics) -> None:
    types = {family.name: family.type for family in metrics.registry.collect()}
    assert types["stcast_baseline_abs_error"] == "gauge"
    assert types["stcast_consumer_lag_messages"] == "gauge"
    assert all(why for _, why in ADDED_WHY.values())


def test_metric_types(metrics: Metrics) -> None:
    types = {family.name: family.type for family in metrics.registry.collect()}
    assert types["stcast_inference_seconds"] == "histogram"
    assert types["stcast_batch_size"] == "histogram"
    assert types["stcast_tick_to_forecast_seconds"] == "histogram"
    assert types["stcast_event_lag_seconds"] == "gauge"
    assert types["stcast_sensors_active"] == "gauge"
    counters = {name for name, kind in types.items() if kind == "counter"}
    assert {name + "_total" for name in counters} == {
        name for name in exported_names(metrics) if name.endswith("_total")
    }


def test_every_reason_is_visible_at_zero() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    reasons = ["malformed", "missing_field", "bad_type", "non_finite", "bad_timestamp"]
    reasons += ["late", "duplicate", "unknown_network", "internal"]
    for reason in reasons:
        assert registry.get_sample_value("stcast_rejected_ticks_total", {"reason": reason}) == 0.0


def test_set_model_replaces_the_previous_one() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_model("a@1", "cpu")
    metrics.set_model("b@2", "cuda")
    info = {"model": "b", "version": "2", "provider": "cuda"}
    assert registry.get_sample_value("stcast_model_info", info) == 1.0
    old = {"model": "a", "version": "1", "provider": "cpu"}
    assert registry.get_sample_value("stcast_model_info", old) is None


def test_rolling_mae_only_at_scored_horizons() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_rolling_mae([float(h) for h in range(1, 13)])
    metrics.set_rolling_mae([float("nan"), 20.0])  # NaN: not scored yet, the old value stays
    values = {
        h: registry.get_sample_value("stcast_forecast_abs_error", {"horizon": str(h)})
        for h in range(1, 13)
    }
    assert {h: v for h, v in values.items() if v is not None} == {1: 1.0, 3: 3.0, 6: 6.0, 12: 12.0}


def test_baseline_mae_at_the_same_horizons() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_rolling_mae([1.0] * 12, [float(h) * 10 for h in range(1, 13)])
    metrics.set_rolling_mae([1.0], [float("nan")])  # not scored yet: the old value stays
    values = {
        h: registry.get_sample_value("stcast_baseline_abs_error", {"horizon": str(h)})
        for h in range(1, 13)
    }
    scored = {h: v for h, v in values.items() if v is not None}
    assert scored == {1: 10.0, 3: 30.0, 6: 60.0, 12: 120.0}
    assert set(scored) == set(SCORED_HORIZONS)


def test_consumer_lag_per_partition_and_forgotten_partitions() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_consumer_lag(0, 12)
    metrics.set_consumer_lag(3, 0)
    metrics.forget_partitions([3, 7])  # 7 was never exported
    lag = "stcast_consumer_lag_messages"
    assert registry.get_sample_value(lag, {"partition": "0"}) == 12.0
    assert registry.get_sample_value(lag, {"partition": "3"}) is None


def test_observe_many_counts_as_observe_does() -> None:
    """``observe_many`` reaches into prometheus_client's Histogram: held to ``observe``."""
    rng = np.random.default_rng(0)
    amounts = np.concatenate(
        [rng.exponential(0.05, 500), [0.0, 0.001, 0.0025, 0.3, 10.0, 11.0, 1e9]]
    )  # on the bounds exactly, and beyond the last
    one_by_one, at_once = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    for amount in amounts:
        one_by_one.tick_to_forecast_seconds.observe(float(amount))
    observe_many(at_once.tick_to_forecast_seconds, amounts[:200])
    observe_many(at_once.tick_to_forecast_seconds, amounts[200:])
    observe_many(at_once.tick_to_forecast_seconds, [])

    def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        (family,) = metrics.tick_to_forecast_seconds.collect()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for s in family.samples
            if not s.name.endswith("_created")
        }

    expected, got = samples(one_by_one), samples(at_once)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert expected[("stcast_tick_to_forecast_seconds_count", ())] == len(amounts)
