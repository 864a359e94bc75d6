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

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from river.drift import ADWIN, PageHinkley

from .forecasters import FloatArray, Forecaster, IntArray
from .metrics import Metrics
from .retrain_events import Detection, DetectionListener
from .scoring import Scores

DETECTORS = ("page-hinkley", "adwin")
# Calibrated on the PEMS08 slice with a trained model (benchmarks/calibrate_drift.py): at most
# one false alarm per sensor-week, which means tolerating errors up to about four times the
# usual (the 4 July holiday raises them that much for hours). Page-Hinkley watches rises only:
# a falling error is no reason to retrain. ADWIN, two-sided, is for lasting changes.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "page-hinkley": {"threshold": 25.0, "delta": 3.0, "min_instances": 30, "mode": "up"},
    "adwin": {"delta": 1e-16, "clock": 1},
}
DEFAULT_WARMUP = 288  # a day of 5-minute steps: the usual error of every hour of the day
DEFAULT_COOLDOWN = 36
MAX_Z = 100.0  # 100 times the usual error is as sure a change as any larger number
_TINY = 1e-9  # a sensor whose warm-up error was 0 (a dead one) fires on its first real error

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
    60 1.0 5.0
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
        self._monitors: dict[int, DriftMonitor] = {}
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
        for row, value in zip(rows.tolist(), values.tolist(), strict=True):
            monitor = self._monitors[row]
            monitor.update(value)
            if monitor.drift_detected:
                self._detected(row, monitor)
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
        for row in rows:
            if self._monitors.pop(row, None) is not None:
                self._sums[row] = self._counts[row] = 0.0
                self._frozen[row] = False

    def reset(self) -> None:
        """Start every monitor afresh (``clone()`` of the prototype): a new model serves."""
        self.forget(list(self._monitors))
        if self.policy is not None:
            self.policy.model_swapped()

    def _selected(self, scores: Scores) -> tuple[IntArray, IntArray, FloatArray, IntArray]:
        """The wanted errors grouped by actual, and where each actual's group starts."""
        wanted = scores.horizons <= self.horizon
        if self.horizons:
            wanted &= np.isin(scores.horizons, self.horizons)
        order = np.flatnonzero(wanted)[np.argsort(scores.actuals[wanted], kind="stable")]
        actuals = scores.actuals[order]
        starts = np.flatnonzero(np.r_[True, actuals[1:] != actuals[:-1]]) if len(order) else order
        return scores.sensors[order], scores.horizons[order], np.abs(scores.errors[order]), starts

    def _start_monitors(self, rows: IntArray) -> None:
        self._grow_to(int(rows.max()) + 1)
        for row in rows.tolist():
            if row not in self._monitors:
                self._monitors[row] = DriftMonitor(
                    self.detector.clone(), self.warmup, self.cooldown
                )
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
        scale = self._sums[sensors, steps] / np.maximum(self._counts[sensors, steps], 1)
        z = np.minimum(absolute / np.maximum(scale, _TINY), MAX_Z)
        totals: FloatArray = np.add.reduceat(z, starts)
        return totals / np.diff(starts, append=len(z))

    def _learn_scale(self, sensors: IntArray, steps: IntArray, absolute: FloatArray) -> None:
        learning = ~self._frozen[sensors]
        np.add.at(self._sums, (sensors[learning], steps[learning]), absolute[learning])
        np.add.at(self._counts, (sensors[learning], steps[learning]), 1.0)

    def _freeze(self, rows: IntArray) -> None:
        for row in np.unique(rows[~self._frozen[rows]]).tolist():
            self._frozen[row] = self._monitors[row].seen >= self.warmup

    def _detected(self, row: int, monitor: DriftMonitor) -> None:
        if self.metrics is not None:
            self.metrics.drift_detected.inc()
        if self.on_detection is not None:
            self.on_detection(row)
        if self.policy is not None:
            sensor, now = self.sensor_of(row), self.now()
            self.policy.update(Detection(sensor, now, monitor.error_before, monitor.error_after))

    def _grow_to(self, size: int) -> None:
        if size > len(self._frozen):
            extra = ((0, max(size, 2 * len(self._frozen)) - len(self._frozen)), (0, 0))
            self._sums, self._counts = np.pad(self._sums, extra), np.pad(self._counts, extra)
            self._frozen = np.pad(self._frozen, extra[:1])
