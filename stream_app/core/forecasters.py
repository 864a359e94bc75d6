"""The forecaster protocol and the two baselines that need no model file.

A forecaster turns a batch of full windows into forecasts for the next ``horizon`` grid steps:
``forecast(windows) -> array (batch, horizon)``, in the readings' own units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DAY_S = 86_400
WEEK_S = 7 * DAY_S


@dataclass(frozen=True)
class WindowBatch:
    """Full windows of several sensors, oldest value first.

    ``values`` is (batch, window) in the readings' units; ``last_ts`` holds the epoch seconds of
    each window's newest value; ``sensors`` the sensor ids, in the same order.
    """

    values: FloatArray
    last_ts: IntArray
    sensors: tuple[str, ...]

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
    """Forecast each step with the value one season (a day or a week) earlier.

    The window is exactly one season long, so the value a season before every horizon step is
    inside it as long as the horizon is no longer than the season.

    >>> f = SeasonalNaive(season_steps=4, horizon=2)
    >>> f.forecast(WindowBatch(np.array([[1.0, 2.0, 3.0, 4.0]]), np.array([0]), ("s",))).tolist()
    [[1.0, 2.0]]
    """

    provider = "python"

    def __init__(self, season_steps: int, horizon: int = 12) -> None:
        if horizon > season_steps:
            raise ValueError(f"horizon {horizon} is longer than the season ({season_steps} steps)")
        self.season_steps = season_steps
        self.horizon = horizon

    @classmethod
    def for_period(cls, period_s: int, step_s: int, horizon: int = 12) -> SeasonalNaive:
        if period_s % step_s:
            raise ValueError(f"a grid step of {step_s} s does not divide the season {period_s} s")
        return cls(season_steps=period_s // step_s, horizon=horizon)

    @property
    def window(self) -> int:
        return self.season_steps

    @property
    def model_id(self) -> str:
        return f"seasonal-naive-{self.season_steps}@1"

    def forecast(self, windows: WindowBatch) -> FloatArray:
        # values[:, 0] is season_steps - 1 steps before the newest, i.e. one season before step 1
        return np.array(windows.values[:, : self.horizon], dtype=np.float64)
