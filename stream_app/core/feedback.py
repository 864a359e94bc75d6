"""Error feedback: the fast reaction to a sensor's drift, between a detection and a retrain.

A retrain cannot learn a change it may not validate on (the newest steps are held back), so it
comes hours after a shift. Meanwhile, once a sensor's drift monitor fires, its forecasts are
corrected per horizon step by an integral of its own signed errors: each scored error ``e``
(served forecast minus actual) at horizon step ``h`` moves that step's offset by
``-gain / h * e``. A step-``h`` error is known ``h`` steps after its forecast, and an integral
fed that late oscillates and diverges unless its gain shrinks with the delay (``x[t+1] =
x[t] - g x[t-h]`` is stable only for ``g`` below about ``pi / (2h + 1)``); with ``gain / h`` a
steady bias is cancelled within a few multiples of ``h / gain`` scored actuals. Sensors whose
monitor never fired are served the model's forecasts unchanged. Offsets and activations end
at the next model swap (the new model answers the drift) and with the sensor's row; a restored
partition rebuilds them from the replayed scores.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .forecasters import FloatArray, IntArray
from .scoring import Scores


class ErrorFeedback:
    """Per sensor row, per horizon step: an offset added to the forecasts of drifting sensors."""

    def __init__(self, horizon: int, gain: float) -> None:
        if not 0 < gain < 1:  # at 1, a step-1 error's correction would oscillate undamped
            raise ValueError(f"the feedback gain must be between 0 and 1, not {gain}")
        self.horizon = horizon
        self.gain = gain
        self._offsets = np.zeros((0, horizon))
        self._active = np.zeros(0, dtype=bool)

    @property
    def active(self) -> int:
        """Rows being corrected."""
        return int(self._active.sum())

    def activate(self, row: int) -> None:
        """Start correcting ``row`` (its drift monitor fired)."""
        self._grow_to(row + 1)
        self._active[row] = True

    def correct(self, rows: IntArray, values: FloatArray) -> FloatArray:
        """``values`` (one forecast per row of ``rows``) with the active rows' offsets added."""
        if not self._active.any() or not len(rows):
            return values
        known = rows < len(self._active)
        active = np.zeros(len(rows), dtype=bool)
        active[known] = self._active[rows[known]]
        if not active.any():
            return values
        out = values.copy()
        out[active] += self._offsets[rows[active]]
        return out

    def update(self, scores: Scores) -> None:
        if not len(scores) or not self._active.any():
            return
        known = scores.sensors < len(self._active)
        mine = np.zeros(len(scores), dtype=bool)
        mine[known] = self._active[scores.sensors[known]]
        mine &= scores.horizons <= self.horizon
        horizons = scores.horizons[mine]
        step = (scores.sensors[mine], horizons - 1)
        np.add.at(self._offsets, step, -self.gain / horizons * scores.errors[mine])

    def forget(self, rows: Iterable[int]) -> None:
        for row in rows:
            if row < len(self._active):
                self._active[row] = False
                self._offsets[row] = 0.0

    def reset(self) -> None:
        self._active[:] = False
        self._offsets[:] = 0.0

    def _grow_to(self, size: int) -> None:
        if size > len(self._active):
            grown = max(size, 2 * len(self._active))
            self._offsets = np.pad(self._offsets, ((0, grown - len(self._active)), (0, 0)))
            self._active = np.pad(self._active, (0, grown - len(self._active)))
