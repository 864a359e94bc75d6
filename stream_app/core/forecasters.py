"""The forecaster protocol and the two baselines that need no model file.

A forecaster turns a batch of full windows into forecasts for the next ``horizon`` grid steps:
``forecast(windows) -> array (batch, horizon)``, in the readings' own units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DAY_S = 86_400
WEEK_S = 7 * DAY_S
YEAR_S = 365 * DAY_S


def season_steps(step_s: int) -> int:
    """The seasonal period that fits a grid step, in grid steps (the nearest whole number).

    A day for steps under a day, a week for steps of a day up to a week, a year (52 weeks for
    weekly data, 365 days otherwise) for longer steps; at least one step.

    >>> season_steps(300), season_steps(3_600), season_steps(86_400), season_steps(WEEK_S)
    (288, 24, 7, 52)
    """
    if step_s <= 0:
        raise ValueError(f"a grid step must be positive, got {step_s}")
    if step_s < DAY_S:
        period = DAY_S
    elif step_s < WEEK_S:
        period = WEEK_S
    else:
        period = 52 * WEEK_S if step_s == WEEK_S else YEAR_S
    return max(1, math.floor(period / step_s + 0.5))


@dataclass(frozen=True)
class WindowBatch:
    """Full windows of several sensors, oldest value first.

    ``values`` is (batch, window) in the readings' units; ``last_ts`` holds the epoch seconds of
    each window's newest value; ``sensors`` the sensor ids, in the same order. A model that
    reads a long context (the universal model) takes NaN where a reading is missing or precedes
    the sensor's first, ``neighbours`` (batch, window) from ``core.contexts.neighbour_context``
    (None: no graph), and ``calendar_known`` False for data whose timestamps are nominal.
    """

    values: FloatArray
    last_ts: IntArray
    sensors: tuple[str, ...]
    neighbours: npt.NDArray[np.float32] | None = None
    calendar_known: bool = True

    def __len__(self) -> int:
        return len(self.sensors)


@runtime_checkable
class Forecaster(Protocol):
    """Anything that forecasts ``horizon`` steps from ``window`` past steps on a grid."""

    @property
    def window(self) -> int: ...

    @property
    def horizon(self) -> int: ...

    @property
    def model_id(self) -> str:
        """``name@version``, stamped on every forecast."""
        ...

    @property
    def provider(self) -> str:
        """Where inference runs: an onnxruntime execution provider, or ``python``."""
        ...

    def forecast(self, windows: WindowBatch) -> FloatArray: ...


@runtime_checkable
class QuantileForecaster(Forecaster, Protocol):
    """A forecaster that also gives quantiles (the universal model): ``quantiles`` names their
    levels (empty: it gives none after all), ``forecast_quantiles`` (batch, levels, horizon)."""

    @property
    def quantiles(self) -> tuple[float, ...]: ...

    def forecast_quantiles(self, windows: WindowBatch) -> FloatArray: ...


class Persistence:
    """Repeat the last value for every horizon step.

    >>> f = Persistence(horizon=3, window=2)
    >>> f.forecast(WindowBatch(np.array([[1.0, 2.0]]), np.array([0]), ("s",))).tolist()
    [[2.0, 2.0, 2.0]]
    """

    provider = "python"

    def __init__(self, horizon: int = 12, window: int = 12) -> None:
        self.horizon = horizon
        self.window = window

    @property
    def model_id(self) -> str:
        return "persistence@1"

    def forecast(self, windows: WindowBatch) -> FloatArray:
        last = windows.values[:, -1:]
        return np.repeat(last, self.horizon, axis=1)


class SeasonalNaive:
    """Forecast each step with the latest value of the same phase of the season.

    Target ``t + h`` gets the value at ``t + h - k * season`` with ``k = ceil(h / season)``:
    one season earlier while the horizon fits in a season, whole seasons earlier beyond, never
    a value after the forecast origin ``t``. The window is exactly one season long, so that value
    is ``window[:, (h - 1) % season]``. ``stream_app.offline.eval_baselines.seasonal_naive``
    applies the same rule offline.

    >>> f = SeasonalNaive(season_steps=4, horizon=6)
    >>> f.forecast(WindowBatch(np.array([[1.0, 2.0, 3.0, 4.0]]), np.array([0]), ("s",))).tolist()
    [[1.0, 2.0, 3.0, 4.0, 1.0, 2.0]]
    """

    provider = "python"

    def __init__(self, season_steps: int, horizon: int = 12) -> None:
        if season_steps < 1 or horizon < 1:
            raise ValueError(f"season {season_steps} and horizon {horizon} must be positive")
        self.season_steps = season_steps
        self.horizon = horizon

    @classmethod
    def for_period(cls, period_s: int, step_s: int, horizon: int = 12) -> SeasonalNaive:
        if period_s % step_s:
            raise ValueError(f"a grid step of {step_s} s does not divide the season {period_s} s")
        return cls(season_steps=period_s // step_s, horizon=horizon)

    @classmethod
    def for_step(cls, step_s: int, horizon: int = 12) -> SeasonalNaive:
        """The season that fits the grid step (``season_steps``)."""
        return cls(season_steps=season_steps(step_s), horizon=horizon)

    @property
    def window(self) -> int:
        return self.season_steps

    @property
    def model_id(self) -> str:
        return f"seasonal-naive-{self.season_steps}@1"

    def forecast(self, windows: WindowBatch) -> FloatArray:
        # values[:, 0] is season_steps - 1 steps before the newest, i.e. one season before step 1
        phase = np.arange(self.horizon) % self.season_steps
        return np.array(windows.values[:, phase], dtype=np.float64)
