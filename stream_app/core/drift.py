"""Drift monitors on the scored forecast errors, one per sensor (river detectors underneath).

A sensor's monitor sees one number per scored actual: the mean, over the horizon steps that the
actual settles, of ``|error| / scale``, where ``scale`` is the sensor's mean absolute error at
that step: from the model card when it carries one (``card_scale``), else learned during the
warm-up and then frozen. So 1.0 is "as wrong as usual", 4.0 "four times the usual error".

Why all horizons and not horizon 1: a window-based forecaster absorbs a level shift within its
window, so its one-step forecasts are wrong once (persistence) while those made before the
shift stay wrong for ``horizon`` steps. On the PEMS08 slice the one-step signal caught 32 % of
the injected 3-sigma shifts, all the horizons 93 % (``benchmarks/calibrate_drift.py``, which
also chose the defaults). ``horizons=(1,)`` still watches one step.

``sensor_of`` names a row when its monitor fires; ``forget`` must get the rows the pipeline
drops, because it hands them out again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, cast

import numpy as np
from river.drift import ADWIN, PageHinkley

from .card import UNIVERSAL
from .forecasters import FloatArray, Forecaster, IntArray
from .metrics import Metrics
from .retrain_events import Detection, DetectionListener
from .scoring import Scores

DETECTORS = ("page-hinkley", "adwin")
# Calibrated on the PEMS08 slice with the default model, universal (benchmarks/calibrate_drift.py
# --model stream_app/data/universal, 2026-12-07): the most shifts within one false alarm per
# sensor-week. Page-Hinkley watches rises only: a falling error is no reason to retrain.
# ADWIN, two-sided, is for lasting changes.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "page-hinkley": {"threshold": 18.0, "delta": 2.0, "min_instances": 30, "mode": "up"},
    "adwin": {"delta": 1e-16, "clock": 1},
}
# A window model trained on the network (stcast train) has sharper error peaks on the 4 July
# holiday; its calibration (the same script with its --model, 2026-12-06): threshold 25, delta 3.
WINDOW_MODEL_PARAMS = {"threshold": 25.0, "delta": 3.0}
DEFAULT_WARMUP = 288  # a day of 5-minute steps: the usual error of every hour of the day
DEFAULT_COOLDOWN = 36
MAX_Z = 100.0  # 100 times the usual error is as sure a change as any larger number
# the scale of a sensor whose warm-up error was 0 (a dead one): it fires on its first real error;
# any other's is its own, however small its readings' units
_TINY = 1e-9

ScaleLookup = Callable[[str], Sequence[float] | None]


class DriftDetector(Protocol):
    """River's detectors: ``update(x)``, a read-only ``drift_detected``, and ``clone()``."""

    def update(self, x: float) -> None: ...

    @property
    def drift_detected(self) -> bool: ...

    def clone(self) -> DriftDetector: ...


_CLASSES: dict[str, Callable[..., DriftDetector]] = {"page-hinkley": PageHinkley, "adwin": ADWIN}


def make_detector(name: str = "page-hinkley", **params: Any) -> DriftDetector:
    """A river detector by its settings name, with stcast's defaults for what ``params`` omit.

    >>> make_detector("adwin", delta=0.01).delta
    0.01
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown drift detector {name!r}: expected one of {DETECTORS}")
    return _CLASSES[name](**{**DEFAULT_PARAMS[name], **params})


def page_hinkley(forecaster: Forecaster, threshold: float, delta: float) -> dict[str, float]:
    """Page-Hinkley's threshold and delta for monitoring ``forecaster``: those given, and for
    each left unset (NaN) the calibration of the model's kind (a window model's, else the
    defaults: ``universal``'s, also for the baselines)."""
    card = getattr(forecaster, "card", None)
    window_model = card is not None and card.kind != UNIVERSAL
    own = WINDOW_MODEL_PARAMS if window_model else DEFAULT_PARAMS["page-hinkley"]
    return {
        "threshold": float(own["threshold"]) if math.isnan(threshold) else threshold,
        "delta": float(own["delta"]) if math.isnan(delta) else delta,
    }


def describe(detector: DriftDetector) -> dict[str, Any]:
    """The detector's name and parameters, for the evidence of a retrain event."""
    names = {cls: name for name, cls in _CLASSES.items()}
    get_params = getattr(detector, "_get_params", dict)  # river's, on every river estimator
    return {"name": names.get(type(detector), type(detector).__name__), **get_params()}


def card_scale(metrics: Mapping[str, Any]) -> ScaleLookup | None:
    """Per-sensor training errors from a card's ``metrics``, if it carries them.

    The proposed key is ``metrics["sensor_mae"]``: sensor id to a list of mean absolute errors
    per horizon step (readings' units), or one number for every step. None: no such key.

    >>> card_scale({"sensor_mae": {"s": 2.0}})("s"), card_scale({})
    ([2.0], None)
    """
    table = metrics.get("sensor_mae")
    if not isinstance(table, Mapping):
        return None

    def lookup(sensor: str) -> list[float] | None:
        found = table.get(sensor)
        if isinstance(found, int | float):
            return [float(found)]
        return [float(v) for v in found] if isinstance(found, list) and found else None

    return lookup


def forecaster_scale(forecaster: Forecaster) -> ScaleLookup | None:
    """``card_scale`` of the forecaster's model card; None for one without a card (persistence)."""
    card = getattr(forecaster, "card", None)
    return card_scale(card.metrics) if card is not None else None


class DriftMonitor:
    """One sensor's drift detector behind a warm-up and a cooldown, counted in updates.

    It may fire from update ``warmup + 1`` on, and not again within ``cooldown`` updates.

    >>> monitor = DriftMonitor(make_detector(), warmup=50, cooldown=10)
    >>> for i in range(70):
    ...     monitor.update(1.0 if i < 55 else 9.0)
    ...     if monitor.drift_detected:
    ...         print(i, monitor.error_before, round(monitor.error_after, 2))
    58 1.0 3.67
    """

    def __init__(
        self,
        detector: DriftDetector,
        warmup: int = DEFAULT_WARMUP,
        cooldown: int = DEFAULT_COOLDOWN,
        recent: int = 12,
    ) -> None:
        self.detector = detector
        self.warmup = warmup
        self.cooldown = cooldown
        self.recent = recent
        self._seen = 0
        self._fired_at = -cooldown - 1
        self._drift_detected = False
        self._recent: deque[float] = deque(maxlen=recent)
        self._before = [0.0, 0]  # sum and count of the values that left ``_recent``
        self._evidence = (float("nan"), float("nan"))

    @property
    def drift_detected(self) -> bool:
        """Whether the last update fired (a detection in warm-up or cooldown does not)."""
        return self._drift_detected

    @property
    def seen(self) -> int:
        return self._seen

    @property
    def error_before(self) -> float:
        """At the last firing: the mean since the previous one (or the start), newest excluded."""
        return self._evidence[0]

    @property
    def error_after(self) -> float:
        """At the last firing: the mean of the newest ``recent`` values."""
        return self._evidence[1]

    def update(self, x: float) -> None:
        self._seen += 1
        self.detector.update(x)
        self._remember(x)
        ready = self._seen > self.warmup and self._seen - self._fired_at > self.cooldown
        self._drift_detected = ready and self.detector.drift_detected
        if self._drift_detected:
            self._fire()

    def clone(self) -> DriftMonitor:
        """A fresh monitor with the same configuration (for a model swap)."""
        return DriftMonitor(self.detector.clone(), self.warmup, self.cooldown, self.recent)

    def _remember(self, x: float) -> None:
        if len(self._recent) == self.recent:
            self._before[0] += self._recent[0]
            self._before[1] += 1
        self._recent.append(x)

    def _fire(self) -> None:
        total, count = self._before
        before = total / count if count else float("nan")
        self._evidence = (before, sum(self._recent) / len(self._recent))
        self._fired_at = self._seen
        self._before = [0.0, 0]


Fired = tuple[int, float, float]  # a row whose monitor fired, its error before and after


class ObjectMonitors:
    """A ``DriftMonitor`` per row, any river detector underneath, updated value by value."""

    def __init__(self, detector: DriftDetector, warmup: int, cooldown: int) -> None:
        self.detector, self.warmup, self.cooldown = detector, warmup, cooldown
        self._by_row: dict[int, DriftMonitor] = {}

    def __len__(self) -> int:
        return len(self._by_row)

    def rows(self) -> list[int]:
        return list(self._by_row)

    def start(self, rows: IntArray) -> list[int]:
        """Give the rows without a monitor a fresh one; return them."""
        new = [row for row in dict.fromkeys(rows.tolist()) if row not in self._by_row]
        for row in new:
            self._by_row[row] = DriftMonitor(self.detector.clone(), self.warmup, self.cooldown)
        return new

    def update(self, rows: IntArray, values: FloatArray) -> list[Fired]:
        fired = []
        for row, value in zip(rows.tolist(), values.tolist(), strict=True):
            monitor = self._by_row[row]
            monitor.update(value)
            if monitor.drift_detected:
                fired.append((row, monitor.error_before, monitor.error_after))
        return fired

    def seen(self, rows: IntArray) -> IntArray:
        return np.array([self._by_row[row].seen for row in rows.tolist()], dtype=np.int64)

    def forget(self, rows: Iterable[int]) -> list[int]:
        return [row for row in rows if self._by_row.pop(row, None) is not None]


class PageHinkleyTable:
    """River's Page-Hinkley test behind ``DriftMonitor``'s warm-up, cooldown and evidence, for
    every row at once: an update is a few array operations for all the rows it touches, not a
    Python call per value. The arithmetic is river's, operation for operation, so detections
    and evidence are exactly those of ``ObjectMonitors`` (``tests/test_drift.py`` compares
    them); a row that comes several times in one update takes its values in order.
    """

    def __init__(self, detector: PageHinkley, warmup: int, cooldown: int, recent: int = 12) -> None:
        self.min_instances, self.delta = detector.min_instances, detector.delta
        self.threshold, self.alpha, self.mode = detector.threshold, detector.alpha, detector.mode
        self.warmup, self.cooldown, self.recent = warmup, cooldown, recent
        self._on = np.zeros(0, dtype=bool)
        self._seen = np.zeros(0, dtype=np.int64)
        self._fired_at = np.zeros(0, dtype=np.int64)
        self._n, self._mean = np.zeros(0), np.zeros(0)
        self._increase, self._decrease = np.zeros(0), np.zeros(0)
        self._min_increase, self._max_decrease = np.zeros(0), np.zeros(0)
        self._detected = np.zeros(0, dtype=bool)  # the test's own flag, reset by the next value
        self._ring = np.zeros((0, recent))  # the newest ``recent`` values, oldest at ``_next``
        self._kept = np.zeros(0, dtype=np.int64)
        self._next = np.zeros(0, dtype=np.int64)
        self._before = np.zeros(0)  # sum of the values that left the ring since the last firing
        self._before_n = np.zeros(0, dtype=np.int64)
        self._mark = np.zeros(0, dtype=np.int64)  # scratch: tells rows that come twice

    def __len__(self) -> int:
        return int(self._on.sum())

    def rows(self) -> list[int]:
        rows: list[int] = np.flatnonzero(self._on).tolist()
        return rows

    def start(self, rows: IntArray) -> list[int]:
        self._grow_to(int(rows.max()) + 1)
        new = rows[~self._on[rows]]
        if not len(new):  # every row has its monitor: the usual case
            return []
        new = np.unique(new)
        self._on[new] = True
        self._seen[new], self._fired_at[new] = 0, -self.cooldown - 1
        self._clear_test(new)
        self._kept[new] = self._next[new] = self._before_n[new] = 0
        self._before[new] = 0.0
        return cast(list[int], new.tolist())

    def update(self, rows: IntArray, values: FloatArray) -> list[Fired]:
        positions = np.arange(len(rows))
        self._mark[rows] = positions  # a row that comes again keeps its last position
        if (self._mark[rows] == positions).all():  # every row once: the usual case
            fired = self._update_once(positions, rows, values)
        else:  # the k-th value of each row in round k
            order = np.argsort(rows, kind="stable")
            first = run_starts(rows[order])
            occurrence = np.empty(len(rows), dtype=np.int64)
            counts = np.diff(first, append=len(rows))
            occurrence[order] = np.arange(len(rows)) - np.repeat(first, counts)
            fired = []
            for k in range(int(occurrence.max()) + 1):
                at = np.flatnonzero(occurrence == k)
                fired += self._update_once(at, rows[at], values[at])
            fired.sort()
        return [(row, before, after) for _, row, before, after in fired]

    def seen(self, rows: IntArray) -> IntArray:
        return self._seen[rows]

    def forget(self, rows: Iterable[int]) -> list[int]:
        gone = [row for row in dict.fromkeys(rows) if row < len(self._on) and self._on[row]]
        self._on[gone] = False
        return gone

    def _update_once(
        self, at: IntArray, rows: IntArray, x: FloatArray
    ) -> list[tuple[int, int, float, float]]:
        """Each of ``rows`` (distinct) takes its value: river's ``PageHinkley.update``, then
        ``DriftMonitor.update``; (position, row, before, after) for each that fires."""
        self._seen[rows] += 1
        self._clear_test(rows[self._detected[rows]])  # river starts over after a detection
        n = self._n[rows] + 1.0
        mean = self._mean[rows]
        mean = mean + (1.0 / n) * (x - mean)
        deviation = x - mean
        increase = self.alpha * self._increase[rows] + deviation - self.delta
        decrease = self.alpha * self._decrease[rows] + deviation + self.delta
        lowest = np.minimum(self._min_increase[rows], increase)
        highest = np.maximum(self._max_decrease[rows], decrease)
        self._n[rows], self._mean[rows] = n, mean
        self._increase[rows], self._decrease[rows] = increase, decrease
        self._min_increase[rows], self._max_decrease[rows] = lowest, highest
        rises, falls = increase - lowest > self.threshold, highest - decrease > self.threshold
        hit = rises if self.mode == "up" else falls if self.mode == "down" else rises | falls
        self._detected[rows] = detected = (n >= self.min_instances) & hit
        self._remember(rows, x)
        seen = self._seen[rows]
        fire = detected & (seen > self.warmup) & (seen - self._fired_at[rows] > self.cooldown)
        return [
            (int(position), row, *self._fire(row))
            for position, row in zip(at[fire].tolist(), rows[fire].tolist(), strict=True)
        ]

    def _remember(self, rows: IntArray, x: FloatArray) -> None:
        full = self._kept[rows] == self.recent
        following = self._next[rows]
        at = rows * self.recent + following  # flat positions in the ring
        ring = self._ring.reshape(-1)
        self._before[rows[full]] += ring[at[full]]
        self._before_n[rows[full]] += 1
        ring[at] = x
        self._next[rows] = (following + 1) % self.recent
        self._kept[rows] = np.minimum(self._kept[rows] + 1, self.recent)

    def _fire(self, row: int) -> tuple[float, float]:
        count = int(self._before_n[row])
        before = float(self._before[row]) / count if count else float("nan")
        kept, start = int(self._kept[row]), int(self._next[row])
        ring: list[float] = self._ring[row].tolist()
        recent = ring[start:] + ring[:start] if kept == self.recent else ring[:kept]
        self._fired_at[row] = self._seen[row]
        self._before[row], self._before_n[row] = 0.0, 0
        return before, sum(recent) / len(recent)

    def _clear_test(self, rows: IntArray) -> None:
        self._n[rows] = self._mean[rows] = self._increase[rows] = self._decrease[rows] = 0.0
        self._min_increase[rows], self._max_decrease[rows] = np.inf, -1.0
        self._detected[rows] = False

    def _grow_to(self, size: int) -> None:
        if size <= len(self._on):
            return
        extra = max(size, 2 * len(self._on)) - len(self._on)
        for name, value in list(vars(self).items()):
            if isinstance(value, np.ndarray):
                pad = ((0, extra),) + ((0, 0),) * (value.ndim - 1)
                setattr(self, name, np.pad(value, pad))


def monitor_table(
    detector: DriftDetector, warmup: int, cooldown: int
) -> ObjectMonitors | PageHinkleyTable:
    """Page-Hinkley as arrays; any other detector as objects."""
    if type(detector) is PageHinkley:
        return PageHinkleyTable(detector, warmup, cooldown)
    return ObjectMonitors(detector, warmup, cooldown)


class DriftSink:
    """A ``ScoreSink`` with a ``DriftMonitor`` per sensor row, made on the row's first score.

    ``detector`` is the prototype every monitor clones; ``sensor_of`` names a row; ``now`` is the
    event time (epoch seconds) of the scores; ``policy`` (a ``RetrainPolicy``) hears of every
    ``Detection`` and, after each update, of the time. ``scale`` gives a sensor's usual errors
    per horizon step (``card_scale``); where it gives none, the warm-up's are used.
    """

    def __init__(
        self,
        detector: DriftDetector | None = None,
        *,
        sensor_of: Callable[[int], str],
        now: Callable[[], float],
        policy: DetectionListener | None = None,
        horizon: int = 12,
        horizons: Sequence[int] = (),
        warmup: int = DEFAULT_WARMUP,
        cooldown: int = DEFAULT_COOLDOWN,
        scale: ScaleLookup | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.detector = detector if detector is not None else make_detector()
        self.sensor_of = sensor_of
        self.now = now
        self.policy = policy
        self.horizon = horizon
        self.horizons = tuple(horizons)  # empty: every horizon step
        self.warmup = warmup
        self.cooldown = cooldown
        self.scale = scale
        self.metrics = metrics
        self.on_detection: Callable[[int], None] | None = None  # e.g. ErrorFeedback.activate
        self._monitors = monitor_table(self.detector, warmup, cooldown)
        self._sums = np.zeros((0, horizon))  # per row and horizon: sum of |error|, then frozen
        self._counts = np.zeros((0, horizon))
        self._frozen = np.zeros(0, dtype=bool)

    @property
    def monitored(self) -> int:
        """Sensor rows with a monitor."""
        return len(self._monitors)

    def update(self, scores: Scores) -> None:
        sensors, horizons, absolute, starts = self._selected(scores)
        if not len(starts):
            return
        rows = sensors[starts]
        self._start_monitors(rows)
        self._learn_scale(sensors, horizons - 1, absolute)
        values = self._standardised(sensors, horizons - 1, absolute, starts)
        for row, before, after in self._monitors.update(rows, values):
            self._detected(row, before, after)
        self._freeze(rows)
        if self.policy is not None:
            self.policy.advance(self.now())

    @property
    def memory_steps(self) -> int:
        """Grid steps of scored actuals a monitor needs before it may fire (its warm-up),
        plus the horizon it waits for them: what a restore must replay to arm it again."""
        return self.warmup + self.horizon

    def replay(self, scores: Scores) -> None:
        """Scores re-derived while a partition's state is rebuilt (``Pipeline.restore``).

        The monitors learn from them as they did at the previous owner, so they come back
        warmed up; detections among them were reported by that owner and are not again, but
        still reach ``on_detection``: the error feedback they started comes back with them.
        """
        policy, metrics = self.policy, self.metrics
        self.policy, self.metrics = None, None
        try:
            self.update(scores)
        finally:
            self.policy, self.metrics = policy, metrics

    def forget(self, rows: Iterable[int]) -> None:
        """Drop the monitors of rows the pipeline let go: they will name other sensors."""
        for row in self._monitors.forget(rows):
            self._sums[row] = self._counts[row] = 0.0
            self._frozen[row] = False

    def reset(self) -> None:
        """Start every monitor afresh (``clone()`` of the prototype): a new model serves."""
        self.forget(self._monitors.rows())
        if self.policy is not None:
            self.policy.model_swapped()

    def _selected(self, scores: Scores) -> tuple[IntArray, IntArray, FloatArray, IntArray]:
        """The wanted errors grouped by actual, and where each actual's group starts."""
        wanted = scores.horizons <= self.horizon
        if self.horizons:
            wanted &= np.isin(scores.horizons, self.horizons)
        actuals = scores.actuals
        if (actuals[1:] >= actuals[:-1]).all() and wanted.all():  # grouped, all wanted: usual
            return scores.sensors, scores.horizons, np.abs(scores.errors), run_starts(actuals)
        order = np.flatnonzero(wanted)
        actuals = actuals[order]
        if (actuals[1:] < actuals[:-1]).any():  # not grouped already (a stable sort groups)
            order = order[np.argsort(actuals, kind="stable")]
            actuals = scores.actuals[order]
        starts = run_starts(actuals)
        return scores.sensors[order], scores.horizons[order], np.abs(scores.errors[order]), starts

    def _start_monitors(self, rows: IntArray) -> None:
        self._grow_to(int(rows.max()) + 1)
        for row in self._monitors.start(rows):
            self._use_known_scale(row)

    def _use_known_scale(self, row: int) -> None:
        known = self.scale(self.sensor_of(row)) if self.scale is not None else None
        if known:
            self._sums[row] = np.resize(np.asarray(known, dtype=np.float64), self.horizon)
            self._counts[row] = 1.0
            self._frozen[row] = True

    def _standardised(
        self, sensors: IntArray, steps: IntArray, absolute: FloatArray, starts: IntArray
    ) -> FloatArray:
        """Per actual: the mean over its horizons of |error| / scale."""
        at = sensors * self.horizon + steps  # flat: one gather, not one index per dimension
        scale = self._sums.reshape(-1)[at] / np.maximum(self._counts.reshape(-1)[at], 1)
        z = np.minimum(absolute / np.where(scale > 0, scale, _TINY), MAX_Z)
        totals: FloatArray = np.add.reduceat(z, starts)
        counts = np.empty_like(starts)
        counts[:-1] = starts[1:] - starts[:-1]
        counts[-1] = len(z) - starts[-1]
        return totals / counts

    def _learn_scale(self, sensors: IntArray, steps: IntArray, absolute: FloatArray) -> None:
        learning = ~self._frozen[sensors]
        if not learning.any():  # every scale known: the usual case after the warm-up
            return
        np.add.at(self._sums, (sensors[learning], steps[learning]), absolute[learning])
        np.add.at(self._counts, (sensors[learning], steps[learning]), 1.0)

    def _freeze(self, rows: IntArray) -> None:
        learning = rows[~self._frozen[rows]]
        if not len(learning):
            return
        learning = np.unique(learning)
        self._frozen[learning] = self._monitors.seen(learning) >= self.warmup

    def _detected(self, row: int, before: float, after: float) -> None:
        if self.metrics is not None:
            self.metrics.drift_detected.inc()
        if self.on_detection is not None:
            self.on_detection(row)
        if self.policy is not None:
            sensor, now = self.sensor_of(row), self.now()
            self.policy.update(Detection(sensor, now, before, after))

    def _grow_to(self, size: int) -> None:
        if size > len(self._frozen):
            extra = ((0, max(size, 2 * len(self._frozen)) - len(self._frozen)), (0, 0))
            self._sums, self._counts = np.pad(self._sums, extra), np.pad(self._counts, extra)
            self._frozen = np.pad(self._frozen, extra[:1])


def run_starts(ordered: IntArray) -> IntArray:
    """Where each run of equal values starts in ``ordered``.

    >>> run_starts(np.array([3, 3, 5, 7, 7, 7])).tolist()
    [0, 2, 3]
    """
    change = np.empty(len(ordered), dtype=bool)
    change[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=change[1:])
    return np.flatnonzero(change)
