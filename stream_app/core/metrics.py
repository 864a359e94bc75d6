"""The Prometheus metrics of DESIGN.md, declared together on an injected registry.

Units are seconds, counters end in ``_total``, and no label carries a sensor id (sensor counts
are unbounded). ``ticks_total`` counts every tick read, good or bad; ``rejected_ticks_total``
is the part of it that went to the dead-letter topic.

Beyond DESIGN.md's list, on purpose: ``model_swap_failures_total{reason}`` (why an update was
refused), ``baseline_abs_error{horizon}`` (the persistence forecast's rolling MAE over the same
scored forecasts as ``forecast_abs_error``) and ``consumer_lag_messages{partition}`` (per owned
partition of the ticks topic: its high watermark minus this worker's position; a partition
number is bounded by the topic's partition count), ``unreadable_batches_total{action}``
(record batches of the ticks topic the worker could not decode, stopped at or skipped),
``interval_coverage{horizon}`` (the live share of actuals inside the 0.1-0.9 interval) and
``forecasts_without_neighbours_total`` (a universal model's forecasts made without neighbours).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from contextlib import suppress

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .records import Reason

PREFIX = "stcast"
SCORED_HORIZONS = (1, 3, 6, 12)
_LATENCY_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3),
    *(0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0),
)
_INFERENCE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    """Every stcast metric, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, per_network: bool = False) -> None:
        # a worker serving several networks labels each network's model and accuracy figures
        self.registry = registry
        self.per_network = per_network
        net = ["network"] if per_network else []
        self._serving: dict[str, tuple[str, ...]] = {}  # network -> model_info's label values
        self.ticks = Counter(
            "ticks", "Ticks read, good or bad", namespace=PREFIX, registry=registry
        )
        self.rejected = Counter(
            "rejected_ticks",
            "Ticks sent to the dead-letter topic",
            ["reason"],
            namespace=PREFIX,
            registry=registry,
        )
        for reason in Reason:  # every reason visible at 0 before it first happens
            self.rejected.labels(reason=str(reason))
        self.imputed = Counter(
            "imputed_values",
            "Window values filled in by imputation",
            namespace=PREFIX,
            registry=registry,
        )
        self.forecasts = Counter(
            "forecasts", "Forecasts produced", namespace=PREFIX, registry=registry
        )
        self.inference_seconds = Histogram(
            "inference_seconds",
            "Time of one inference call (one chunk of windows; an ONNX model's run alone)",
            namespace=PREFIX,
            registry=registry,
            buckets=_INFERENCE_BUCKETS,
        )
        self.batch_size = Histogram(
            "batch_size",
            "Windows per inference call",
            namespace=PREFIX,
            registry=registry,
            buckets=_BATCH_BUCKETS,
        )
        self.tick_to_forecast_seconds = Histogram(
            "tick_to_forecast_seconds",
            "From consuming a tick to its forecast being produced",
            namespace=PREFIX,
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.event_lag_seconds = Gauge(
            "event_lag_seconds",
            "Wall clock minus the newest tick time",
            namespace=PREFIX,
            registry=registry,
        )
        self.forecast_abs_error = Gauge(
            "forecast_abs_error",
            "Rolling mean absolute error of scored forecasts",
            ["horizon", *net],
            namespace=PREFIX,
            registry=registry,
        )
        self.baseline_abs_error = Gauge(
            "baseline_abs_error",
            "Rolling mean absolute error of the persistence forecast (the window's last value) "
            "over the same scored forecasts as forecast_abs_error",
            ["horizon", *net],
            namespace=PREFIX,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_messages",
            "Ticks-topic messages not yet read, per owned partition: high watermark minus position",
            ["partition"],
            namespace=PREFIX,
            registry=registry,
        )
        self.drift_detected = Counter(
            "drift_detected", "Drift detections", namespace=PREFIX, registry=registry
        )
        self.reanchored = Counter(
            "reanchored",
            "Drift detections that found a step in a sensor's level and moved its history to "
            "the new level",
            namespace=PREFIX,
            registry=registry,
        )
        self.reading_faults = Counter(
            "reading_faults",
            "Faults the readings monitors found (stuck: the same value repeated, range: far "
            "outside the sensor's range, noise: the noise level rose), by check",
            ["check"],
            namespace=PREFIX,
            registry=registry,
        )
        self.canary_verdicts = Counter(
            "canary_verdicts",
            "Canaries ended: after a swap, keep (the new model was no worse than the one it "
            "replaced on the same targets) or rollback; on a trial before a swap, promote or "
            "reject",
            ["decision"],
            namespace=PREFIX,
            registry=registry,
        )
        for decision in ("keep", "rollback", "promote", "reject"):
            self.canary_verdicts.labels(decision=decision)
        self.canary_ratio = Gauge(
            "canary_mae_ratio",
            "While a canary runs: the new model's MAE over the one it replaces on the same "
            "targets, at the judged horizon step where it is highest (above 1: worse)",
            net,
            namespace=PREFIX,
            registry=registry,
        )
        self.retrain_events = Counter(
            "retrain_events", "Retrain events emitted", namespace=PREFIX, registry=registry
        )
        self.model_swaps = Counter(
            "model_swaps", "Models swapped in while serving", namespace=PREFIX, registry=registry
        )
        self.model_swap_failures = Counter(
            "model_swap_failures",
            "Model updates refused (the current model kept serving), by reason",
            ["reason"],
            namespace=PREFIX,
            registry=registry,
        )
        for failure in SWAP_FAILURE_REASONS:  # known label values are exported from the start
            self.model_swap_failures.labels(reason=failure)
        self.model_info = Gauge(
            "model_info",
            "The serving model (value 1)",
            ["model", "version", "provider", *net],
            namespace=PREFIX,
            registry=registry,
        )
        self.unreadable_batches = Counter(
            "unreadable_batches",
            "Fetched record batches that could not be decoded, by what was done (stop, skip)",
            ["action"],
            namespace=PREFIX,
            registry=registry,
        )
        for action in ("stop", "skip"):
            self.unreadable_batches.labels(action=action)
        self.interval_coverage = Gauge(
            "interval_coverage",
            "Share of recent actuals inside their forecasts' 0.1-0.9 interval, per horizon step",
            ["horizon", *net],
            namespace=PREFIX,
            registry=registry,
        )
        self.forecasts_without_neighbours = Counter(
            "forecasts_without_neighbours",
            "Forecasts of a universal model made with its neighbour input masked",
            namespace=PREFIX,
            registry=registry,
        )
        self.sensors_active = Gauge(
            "sensors_active",
            "Sensors with a window in this worker",
            namespace=PREFIX,
            registry=registry,
        )

    def set_model(self, model_id: str, provider: str, network: str = "") -> None:
        """Mark ``name@version`` on ``provider`` as the (network's) one serving model."""
        name, _, version = model_id.partition("@")
        labels = (name, version, provider, *self._net(network))
        old = self._serving.get(network)
        if old is not None and old != labels:
            self.model_info.remove(*old)
        self._serving[network] = labels
        self.model_info.labels(*labels).set(1)

    def set_rolling_mae(
        self,
        mae_by_horizon: Iterable[float],
        baseline_by_horizon: Iterable[float] = (),
        network: str = "",
    ) -> None:
        """The model's and the persistence baseline's rolling MAE (index 0 = one step ahead)."""
        _set_scored(self.forecast_abs_error, mae_by_horizon, self._net(network))
        _set_scored(self.baseline_abs_error, baseline_by_horizon, self._net(network))

    def set_coverage(self, coverage_by_horizon: Iterable[float], network: str = "") -> None:
        """The live coverage of the forecasts' interval (index 0 = one step ahead)."""
        _set_scored(self.interval_coverage, coverage_by_horizon, self._net(network))

    def set_canary_ratio(self, ratio: float, network: str = "") -> None:
        labels = self._net(network)
        (self.canary_ratio.labels(*labels) if labels else self.canary_ratio).set(ratio)

    def _net(self, network: str) -> tuple[str, ...]:
        return (network or "default",) if self.per_network else ()

    def set_consumer_lag(self, partition: int, messages: int) -> None:
        self.consumer_lag.labels(partition=str(partition)).set(messages)

    def forget_partitions(self, partitions: Collection[int]) -> None:
        """Stop exporting the lag of partitions this worker no longer owns."""
        for partition in partitions:
            with suppress(KeyError):  # never exported (prometheus-client < 0.21 raises)
                self.consumer_lag.remove(str(partition))


def _set_scored(gauge: Gauge, by_horizon: Iterable[float], extra: tuple[str, ...] = ()) -> None:
    for horizon, mae in enumerate(by_horizon, start=1):
        if horizon in SCORED_HORIZONS and mae == mae:  # NaN until the horizon is scored
            gauge.labels(str(horizon), *extra).set(mae)


SWAP_FAILURE_REASONS = ("malformed", "contract", "sha256", "identity", "non_finite", "shape")


def observe_many(histogram: Histogram, amounts: npt.ArrayLike) -> None:
    """``histogram.observe(a)`` for every ``a`` of ``amounts``, as a few increments.

    A worker observes one latency per forecast, in the event loop's thread: at 1-2 us an
    ``observe``, that was a tenth of its Python time on tick batches. This counts them per
    bucket with numpy and adds each count at once. It relies on ``prometheus_client``'s
    unlabelled ``Histogram`` keeping its upper bounds, per-bucket (not cumulative) counts and
    sum in ``_upper_bounds``, ``_buckets`` and ``_sum``; ``tests/test_metrics_contract.py``
    holds it to ``observe``, value for value, so an upgrade that changes them fails there.
    """
    values = np.asarray(amounts, dtype=np.float64).ravel()
    if not values.size:
        return
    bounds = np.asarray(histogram._upper_bounds, dtype=np.float64)
    # observe adds to the first bucket whose upper bound is at least the amount
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts[: len(bounds)].tolist(), strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))


def exported_names(metrics: Metrics) -> set[str]:
    """Names as Prometheus exposes them (counters with ``_total``), for contract tests."""
    names: set[str] = set()
    for family in metrics.registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
    return names
