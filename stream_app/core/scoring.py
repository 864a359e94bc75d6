"""Forecasts are scored when their actuals arrive.

The forecasts still waiting for actuals are kept per sensor (``PendingForecasts``). When a real
reading arrives for grid slot ``u``, every pending forecast made at slot ``s`` with
``s < u <= s + horizon`` yields one error at horizon ``u - s``. Sensors are numbered by the
pipeline (index into its sensor list); the errors of a chunk are computed in one vectorised pass
and handed, together, to every ``ScoreSink``: the rolling MAE here, and the drift monitors that
will watch the same errors.

Each pending forecast also keeps its window's last value, the persistence forecast for every
horizon, so that the same actuals score the baseline beside the model: the rolling MAE of both
covers exactly the same forecasts. That value is the reading that triggered the forecast (a
forecast is only made when its sensor's newest slot receives a real reading), so it is never
imputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .forecasters import FloatArray, IntArray

NEVER = np.iinfo(np.int64).min  # made_at of a ring row that holds no forecast


class PendingForecasts:
    """The forecasts of every sensor whose horizon has not yet passed.

    Sensor ``i`` has a (horizon x horizon) ring: the forecast made at slot ``s`` lives in row
    ``s % horizon`` until the forecast made ``horizon`` slots later replaces it, by which time
    all its actuals have been read. ``made_at`` tells a live row from a stale one after a gap.
    """

    def __init__(self, horizon: int, capacity: int = 1024) -> None:
        self.horizon = horizon
        self._values = np.zeros((capacity, horizon, horizon))
        self._last = np.zeros((capacity, horizon))  # the window's last value: persistence
        self._made_at = np.full((capacity, horizon), NEVER, dtype=np.int64)
        self._steps = np.arange(1, horizon + 1, dtype=np.int64)
        # the forecasts' intervals (lowest and highest quantile), made on the first one given:
        # float32 halves their memory and a bound needs no more digits than the model computes
        self._bounds: npt.NDArray[np.float32] | None = None
        # the model's own forecasts, where the error feedback may serve others: made on the
        # first ones given, float32 as the model computes them
        self._model: npt.NDArray[np.float32] | None = None

    def add(
        self,
        sensors: IntArray,
        slots: IntArray,
        values: FloatArray,
        last: FloatArray,
        interval: tuple[FloatArray, FloatArray] | None = None,
        model: FloatArray | None = None,
    ) -> None:
        """Remember forecasts ``values`` (n, horizon) made at ``slots`` for sensor indices.

        ``last`` (n,) is each window's last value, the persistence baseline's forecast;
        ``interval`` the (n, horizon) low and high bounds, when the model gives them; ``model``
        the model's own forecasts where ``values`` may differ (the error feedback's), scored
        beside them (``Scores.model_errors``).
        """
        self._grow_to(int(sensors.max()) + 1)
        rows = slots % self.horizon
        self._values[sensors, rows] = values
        self._last[sensors, rows] = last
        self._made_at[sensors, rows] = slots
        if interval is not None:
            if self._bounds is None:
                shape = (2, len(self._made_at), self.horizon, self.horizon)
                self._bounds = np.full(shape, np.nan, dtype=np.float32)
            self._bounds[0, sensors, rows] = interval[0]
            self._bounds[1, sensors, rows] = interval[1]
        if model is not None and self._model is None:
            self._model = self._values.astype(np.float32)
        if self._model is not None:
            self._model[sensors, rows] = values if model is None else model

    def made(self, sensor: int, slots: IntArray) -> FloatArray:
        """(len(slots), horizon): the model's own forecasts of row ``sensor`` made at
        ``slots``, NaN rows where none is held (the ring keeps the newest ``horizon``)."""
        out = np.full((len(slots), self.horizon), np.nan)
        if sensor >= len(self._made_at):
            return out
        rows = slots % self.horizon
        held = self._made_at[sensor, rows] == slots
        values = self._values if self._model is None else self._model
        out[held] = values[sensor, rows[held]]
        return out

    def clear(self, sensors: list[int]) -> None:
        """Forget the forecasts of these sensor rows (the rows are about to be reused)."""
        known = [row for row in sensors if row < len(self._made_at)]
        self._made_at[known] = NEVER

    def score(self, sensors: IntArray, slots: IntArray, actuals: FloatArray) -> Scores:
        """Errors of every pending forecast that the actuals at ``slots`` settle."""
        if not len(sensors):
            return Scores.empty()
        self._grow_to(int(sensors.max()) + 1)
        horizon = self.horizon
        # flat indices: one gather per array, not one broadcast index per dimension
        made_at = slots[:, None] - self._steps[None, :]  # (n, horizon): made h steps before
        cells = sensors[:, None] * horizon + made_at % horizon  # (sensor, ring row), flat
        live = self._made_at.reshape(-1)[cells] == made_at
        which, step = np.nonzero(live)
        cell = cells[live]  # in the order of which, step
        at = cell * horizon + step  # (sensor, ring row, horizon step), flat
        actual = actuals[which]
        errors = self._values.reshape(-1)[at] - actual
        baseline = self._last.reshape(-1)[cell] - actual
        model_errors = None
        if self._model is not None:
            model_errors = self._model.reshape(-1)[at] - actual
        inside = None
        if self._bounds is not None:
            low, high = self._bounds[0].reshape(-1)[at], self._bounds[1].reshape(-1)[at]
            inside = np.where(np.isnan(low), np.nan, (actual >= low) & (actual <= high))
        return Scores(sensors[which], step + 1, errors, which, baseline, inside, model_errors)

    def _grow_to(self, size: int) -> None:
        capacity = len(self._made_at)
        if size <= capacity:
            return
        extra = max(size, 2 * capacity) - capacity
        self._values = np.concatenate([self._values, np.zeros((extra, *self._values.shape[1:]))])
        self._last = np.concatenate([self._last, np.zeros((extra, self.horizon))])
        self._made_at = np.concatenate(
            [self._made_at, np.full((extra, self.horizon), NEVER, dtype=np.int64)]
        )
        if self._bounds is not None:
            more = np.full((2, extra, self.horizon, self.horizon), np.nan, dtype=np.float32)
            self._bounds = np.concatenate([self._bounds, more], axis=1)
        if self._model is not None:
            zeros = np.zeros((extra, self.horizon, self.horizon), dtype=np.float32)
            self._model = np.concatenate([self._model, zeros])


@dataclass
class Actuals:
    """Real readings of one micro-batch chunk, to be scored together."""

    sensors: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    generations: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def add(self, sensor: int, slot: int, value: float, generation: int = 0) -> None:
        self.sensors.append(sensor)
        self.slots.append(slot)
        self.values.append(value)
        self.generations.append(generation)

    def extend(
        self, sensors: list[int], slot: int, values: list[float], generations: list[int]
    ) -> None:
        """``add`` for the readings of one slot."""
        self.sensors += sensors
        self.slots += [slot] * len(sensors)
        self.values += values
        self.generations += generations

    def arrays(self) -> tuple[IntArray, IntArray, FloatArray, IntArray]:
        return (
            np.array(self.sensors, dtype=np.int64),
            np.array(self.slots, dtype=np.int64),
            np.array(self.values, dtype=np.float64),
            np.array(self.generations, dtype=np.int64),
        )


@dataclass(frozen=True)
class Scores:
    """Signed errors (forecast minus actual) with their sensor index and 1-based horizon.

    ``actuals`` says which of the scored actuals (by position) each error belongs to;
    ``baseline`` holds the persistence forecast's errors against the same actuals (None: unknown);
    ``inside`` 1 where the actual fell inside the forecast's interval, 0 outside, NaN where the
    forecast had none (None: no interval at all); ``model_errors`` the model's own errors where
    the error feedback may have served other values (None: the same as ``errors``).
    """

    sensors: IntArray
    horizons: IntArray
    errors: FloatArray
    actuals: IntArray
    baseline: FloatArray | None = None
    inside: FloatArray | None = None
    model_errors: FloatArray | None = None

    def __len__(self) -> int:
        return len(self.errors)

    @classmethod
    def empty(cls) -> Scores:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, np.zeros(0), none, np.zeros(0))

    def at(self, positions: IntArray) -> Scores:
        """The same errors, their actuals renumbered through ``positions``."""
        return Scores(
            self.sensors,
            self.horizons,
            self.errors,
            positions[self.actuals],
            self.baseline,
            self.inside,
            self.model_errors,
        )

    @classmethod
    def in_arrival_order(cls, parts: list[Scores]) -> Scores:
        """Concatenate, then order the errors as their actuals arrived (stable by horizon)."""
        if not parts:
            return cls.empty()
        actuals = np.concatenate([p.actuals for p in parts])
        order = np.argsort(actuals, kind="stable")
        baselines = [p.baseline for p in parts if p.baseline is not None]
        insides = [p.inside for p in parts if p.inside is not None]
        own = [p.model_errors for p in parts if p.model_errors is not None]
        return cls(
            np.concatenate([p.sensors for p in parts])[order],
            np.concatenate([p.horizons for p in parts])[order],
            np.concatenate([p.errors for p in parts])[order],
            actuals[order],
            np.concatenate(baselines)[order] if len(baselines) == len(parts) else None,
            np.concatenate(insides)[order] if len(insides) == len(parts) else None,
            np.concatenate(own)[order] if len(own) == len(parts) else None,
        )


class IntervalCalibration:
    """The forecasts' interval kept at its promise online: a width factor per horizon step that
    holds the share of actuals outside the interval at ``miss`` (0.2 for 0.1-0.9).

    Adaptive conformal inference (Gibbs and Candes, 2021) for a whole network: each scored
    actual moves the factor's logarithm by ``rate / sensors`` times (outside - ``miss``), so a
    grid step of the whole network moves it by ``rate`` times the excess of its miss rate,
    however many sensors the network has. The interval is scaled about the point forecast and
    moves with it when the error feedback corrects that forecast (``apply``). A pre-trained
    model's interval is right on average over its corpus, not on a given network: too narrow
    where a day is unlike the one before, too wide on a smooth series.

    >>> calibration = IntervalCalibration(horizon=1, rate=0.5)
    >>> outside = Scores(np.zeros(4, dtype=np.int64), np.ones(4, dtype=np.int64), np.zeros(4),
    ...                  np.arange(4), inside=np.array([0.0, 0.0, 1.0, 1.0]))
    >>> calibration.update(outside, sensors=4)  # half outside where a fifth should be
    >>> round(float(calibration.scale[0]), 3)  # exp(0.5 / 4 * (2 * 0.8 - 2 * 0.2))
    1.162
    >>> calibration.apply(np.array([[10.0]]), np.array([[10.0]]), np.array([[8.0]]),
    ...                   np.array([[13.0]]))[1].round(3).tolist()
    [[13.486]]
    """

    def __init__(
        self,
        horizon: int,
        miss: float = 0.2,
        rate: float = 0.05,
        bounds: tuple[float, float] = (0.25, 8.0),
    ) -> None:
        self.horizon = horizon
        self.miss = miss
        self.rate = rate
        self._log_bounds = (float(np.log(bounds[0])), float(np.log(bounds[1])))
        self.log_scale = np.zeros(horizon)

    @classmethod
    def for_levels(cls, horizon: int, levels: Sequence[float], rate: float) -> IntervalCalibration:
        """For an interval between the outermost of quantile ``levels`` (0.1 and 0.9: 20 %
        outside); no levels, no interval to serve: the default."""
        if len(levels) < 2:
            return cls(horizon, rate=rate)
        return cls(horizon, miss=1.0 - (levels[-1] - levels[0]), rate=rate)

    @property
    def scale(self) -> FloatArray:
        """The width factor per horizon step (index 0 = one step ahead)."""
        scale: FloatArray = np.exp(self.log_scale)
        return scale

    def update(self, scores: Scores, sensors: int) -> None:
        """Learn from the scores whose forecasts had an interval (``scores.inside``)."""
        if scores.inside is None or not len(scores) or self.rate <= 0:
            return
        known = ~np.isnan(scores.inside)
        if not known.any():
            return
        excess = (1.0 - scores.inside[known]) - self.miss
        sums = np.bincount(scores.horizons[known] - 1, weights=excess, minlength=self.horizon)
        moved = self.log_scale + self.rate / max(sensors, 1) * sums[: self.horizon]
        self.log_scale = np.clip(moved, *self._log_bounds)

    def apply(
        self, point: FloatArray, model_point: FloatArray, low: FloatArray, high: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """The (n, horizon) bounds to serve around the point forecasts ``point``, from the
        model's bounds and its own point forecasts ``model_point`` (before any correction)."""
        scale = self.scale
        return point + scale * (low - model_point), point + scale * (high - model_point)


class ScoreSink(Protocol):
    """Receives the scores as they settle, a micro-batch's generation by generation, so every
    sensor's in order (drift monitors)."""

    def update(self, scores: Scores) -> None: ...

    def forget(self, rows: list[int]) -> None:
        """The pipeline dropped these sensor rows and will hand them to new sensors."""
        ...

    def reset(self) -> None:
        """A new model serves: start over."""
        ...


class RollingMAE:
    """Mean absolute error per horizon over the newest ``size`` errors at that horizon.

    The persistence baseline's errors on the same scored forecasts are kept beside them
    (``baseline_mae``), so both figures always cover the same forecasts.

    >>> mae = RollingMAE(horizon=2, size=2)
    >>> one = np.array([1, 1, 1])
    >>> errors, baseline = np.array([1.0, -3.0, 5.0]), np.array([2.0, 2.0, -4.0])
    >>> mae.update(Scores(np.array([0, 0, 0]), one, errors, np.arange(3), baseline))
    >>> mae.mae.tolist()[0], mae.baseline_mae.tolist()[0], bool(np.isnan(mae.mae[1]))
    (4.0, 3.0, True)
    """

    def __init__(self, horizon: int, size: int = 2000) -> None:
        self.horizon = horizon
        self.size = size
        # [model, baseline, inside the interval] x horizon x size; slots past a horizon's count
        # stay 0, so sums are taken over whole rows
        self._errors = np.zeros((3, horizon, size))
        self._next = np.zeros(horizon, dtype=np.int64)
        self._count = np.zeros(horizon, dtype=np.int64)
        self._means: FloatArray | None = None

    def update(self, scores: Scores) -> None:
        """Append the scores' absolute errors, every horizon's in one vectorised write."""
        if not len(scores):
            return
        keys = scores.horizons - 1
        small = keys.astype(np.int16) if self.horizon < 2**15 else keys  # radix-sorted: faster
        order = np.argsort(small, kind="stable")  # by horizon, in arrival order
        rows = keys[order]
        added = np.bincount(rows, minlength=self.horizon)
        kept = np.minimum(added, self.size)  # an update longer than the window keeps its newest
        rank = np.arange(len(rows)) - (np.cumsum(added) - kept)[rows]
        if len(rows) > kept.sum():
            new = rank >= 0
            rows, rank, order = rows[new], rank[new], order[new]
        # flat positions, and one one-dimensional write per figure: numpy's fastest scatter
        at = rows * self.size + (self._next[rows] + rank) % self.size
        figures = (scores.errors, scores.baseline, scores.inside)
        for which, figure in enumerate(figures):
            ring = self._errors[which].reshape(-1)
            ring[at] = np.nan if figure is None else np.abs(figure[order])  # unknown: NaN
        self._next = (self._next + kept) % self.size
        self._count = np.minimum(self.size, self._count + kept)
        self._means = None

    def forget(self, rows: list[int]) -> None:
        """Nothing to do: the rolling MAE pools every sensor's errors."""

    def reset(self) -> None:
        """Forget every error: the next figures are the new model's."""
        self._errors[:] = 0.0
        self._next[:] = 0
        self._count[:] = 0
        self._means = None

    @property
    def mae(self) -> FloatArray:
        """MAE per horizon (index 0 = one step ahead); NaN where nothing was scored yet."""
        return self._mean(0)

    @property
    def baseline_mae(self) -> FloatArray:
        """The persistence forecast's MAE per horizon, over the same scored forecasts as ``mae``."""
        return self._mean(1)

    @property
    def coverage(self) -> FloatArray:
        """Share of the scored actuals inside their forecasts' interval, per horizon (NaN:
        no interval, or nothing scored)."""
        return self._mean(2)

    @property
    def counts(self) -> IntArray:
        return self._count.copy()

    def _mean(self, which: int) -> FloatArray:
        means = self._means
        if means is None:  # both at once, once per update
            with np.errstate(invalid="ignore", divide="ignore"):
                means = self._means = self._errors.sum(axis=2) / self._count
        mean: FloatArray = means[which].copy()
        return mean
