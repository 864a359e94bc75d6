"""Error feedback: the fast reaction to a sensor's drift, between a detection and a retrain.

A retrain cannot learn a change it may not validate on (the newest steps are held back), so it
comes hours after a shift. Meanwhile, once a sensor's drift monitor fires, each of its forecasts
is a mix of the model's and of persistence's (the sensor's last reading), per horizon step::

    served = model + w * (last - model),   w = max(0, m**2 - LEAN * p**2) / (m**2 + p**2)

where ``m`` and ``p`` are exponential averages (at ``rate`` a scored actual) of the absolute
errors of the model's own forecasts and of persistence's at that step on that sensor since its
monitor fired. After a level shift the last reading is already at the new level while the model
is still drawn to the old one (its seasonal inputs, a context that is mostly the old level):
persistence's errors are the smaller and the mix leans to it (nearly all the way where they are
much smaller; 3/8 where both do alike); where the model's errors are less than half of
persistence's, as on a false alarm, the model is served unchanged. Measured against the integral
of the served errors this replaced (``docs/adaptation.md``, "Error feedback"): better after a
shift with both model kinds, and less costly where the monitors fire on no real change.

Sensors whose monitor never fired are served the model's forecasts unchanged. The averages end
at the next model swap (the new model answers the drift), with the sensor's row, and
``QUIET_STEPS`` scored steps after the monitor last fired: by then a universal model's context
holds only readings from after the change, and a false alarm no longer costs for good on a
stream no retrain comes to. A restored partition rebuilds them from the replayed scores.

Re-anchoring (``level_shift``, used by the pipeline when ``STCAST_DRIFT_REANCHOR`` is on) is
the other fast reaction. A model reads a sensor's context as one series; after a lasting step
in its level (a detector re-installed or re-calibrated, a lane closed) the newest readings
stand apart from the rest of the context, and a model that has learned how series usually
behave draws its forecasts back toward the old level for as long as old readings fill its
context (a day for the universal model), while the mix above learns how far to lean only as
the new forecasts' actuals arrive, the longest horizon last. So when a sensor's monitor fires,
the pipeline asks ``level_shift`` where a step began and how large it is, from the readings
since and the forecasts made just before each candidate start::

    r(c) = readings at c .. now  -  the forecast made at c - 1 for them
    c    = argmax |mean r(c)| * sqrt(len r(c))   over the last horizon - 1 steps
    jump = mean r(c)

and moves the readings before ``c`` by ``jump``: the context reads as one series at the new
level. A change is taken for a step only when at least two readings follow ``c``, every one of
them misses, on the jump's side, by more than twice the mean absolute one-step-ahead error of
the steps before it (a spike or a burst of noise does not), at least half of the jump lies
between the reading at ``c`` and the one before (a day unlike the usual, such as a holiday
without its rush hour, drifts away from the forecasts step by step), and that change is larger
than any one-step change in the rest of the context (a congestion's daily onset is not). The
monitor often fires on the step's first reading, so the pipeline looks again at the next two. A
move is judged on its first 8 steps: the pipeline also forecasts from the history as it came,
and undoes the move if those forecasts did better on the same actuals. A step that ends later
(the readings come back to where the moved context's forecasts, less the jump, put them, twice
running) is undone too. Only the context moves: actuals, scores and the readings monitors keep
the readings as they came.

It is off by default, because whether a step will last cannot be told from its first readings:
after the injected 3-sigma shifts on the PEMS08 slice (seeds 5-9, error feedback alone) the
error in the 24 steps after a detection went from 0.46-1.03 x the frozen model's to 0.37-1.08 x
(geometric mean 0.78 to 0.70; the Italian air sensors' seed 5: 0.76 to 0.34 x), but on
streams without a lasting step the cost of the feedback at +60 min grew from +2.2 % to +3.5 %
on Los-loop (134 moves in a week: congestion that stays for hours) and from +0.3 % to +0.4 %
on the Italian air sensors (``docs/adaptation.md``, "Re-anchoring after a step").
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from .forecasters import FloatArray, IntArray
from .scoring import Scores

# How far persistence's averaged error may exceed the model's before the last reading gets no
# share: chosen with the replay of docs/adaptation.md ("Error feedback") on PEMS08's shift seeds
# 0-4 and holiday, Los-loop and the Italian air sensors: 0 (a plain m^2 / (m^2 + p^2)) gained most
# after shifts but cost up to 3.4 % at H12 over streams whose monitors fire often on nothing;
# 0.25 kept most of the gain at under half the cost; 0.5 took the LSTM above 0.6 x frozen after
# a shift on one seed.
LEAN = 0.25
# Scored steps (one-step-ahead actuals) after a sensor's monitor last fired before its mix ends:
# the universal model's context, a day at 5 minutes. Measured (docs/adaptation.md, "The mix ends
# after a quiet context"): the cost over the Italian air sensors' stream halved, Los-loop's fell
# by a quarter, and after shifts nothing moved by more than 0.004 x frozen.
QUIET_STEPS = 288


class ErrorFeedback:
    """Per sensor row, per horizon step: how much of the last reading to mix into the forecasts
    of drifting sensors."""

    def __init__(self, horizon: int, rate: float, quiet_steps: int = QUIET_STEPS) -> None:
        if not 0 < rate < 1:  # at 1, the newest error alone would decide
            raise ValueError(f"the feedback rate must be between 0 and 1, not {rate}")
        self.horizon = horizon
        self.rate = rate
        self.quiet_steps = quiet_steps
        self._model = np.zeros((0, horizon))  # averaged absolute errors: the model's own
        self._last = np.zeros((0, horizon))  # and persistence's
        self._active = np.zeros(0, dtype=bool)
        self._quiet = np.zeros(0, dtype=np.int64)  # scored steps since the monitor fired

    @property
    def active(self) -> int:
        """Rows being corrected."""
        return int(self._active.sum())

    def activate(self, row: int) -> None:
        """Start correcting ``row`` (its drift monitor fired), from no evidence either way."""
        self._grow_to(row + 1)
        self._active[row] = True
        self._model[row] = self._last[row] = 0.0
        self._quiet[row] = 0

    def weights(self, rows: IntArray) -> FloatArray:
        """(n, horizon): the last reading's share in the forecasts of ``rows`` (0: inactive)."""
        out = np.zeros((len(rows), self.horizon))
        mine = self._active_of(rows)
        if mine.any():
            model, last = self._model[rows[mine]] ** 2, self._last[rows[mine]] ** 2
            total = model + last
            lean = np.maximum(model - LEAN * last, 0.0)
            out[mine] = np.divide(lean, total, out=np.zeros_like(total), where=total > 0)
        return out

    def correct(self, rows: IntArray, values: FloatArray, last: FloatArray) -> FloatArray:
        """``values`` (one forecast per row of ``rows``) mixed with ``last`` (each forecast's
        last reading) on the active rows."""
        if not self._active.any() or not len(rows):
            return values
        weights = self.weights(rows)
        if not weights.any():
            return values
        return values + weights * (last[:, None] - values)

    def update(self, scores: Scores) -> None:
        """Average the errors of the active rows' forecasts: the model's own (before this
        correction) and persistence's. A row appears at most once per horizon step in
        ``scores`` (one generation: the pipeline's ``_settle``). A row whose one-step-ahead
        actuals have come ``quiet_steps`` times since its monitor fired is corrected no more."""
        if not len(scores) or not self._active.any() or scores.baseline is None:
            return
        mine = self._active_of(scores.sensors)
        stepped = scores.sensors[mine & (scores.horizons == 1)]
        if len(stepped):
            self._quiet[stepped] += 1
            self.forget(stepped[self._quiet[stepped] >= self.quiet_steps].tolist())
            mine &= self._active_of(scores.sensors)
        mine &= scores.horizons <= self.horizon
        mine &= np.isfinite(scores.baseline)
        if not mine.any():
            return
        model_errors = scores.errors if scores.model_errors is None else scores.model_errors
        at = (scores.sensors[mine], scores.horizons[mine] - 1)
        keep = 1.0 - self.rate
        self._model[at] = keep * self._model[at] + self.rate * np.abs(model_errors[mine])
        self._last[at] = keep * self._last[at] + self.rate * np.abs(scores.baseline[mine])

    def _active_of(self, rows: IntArray) -> npt.NDArray[np.bool_]:
        """Whether each of ``rows`` is corrected (rows never seen are not)."""
        known = rows < len(self._active)
        active = np.zeros(len(rows), dtype=bool)
        active[known] = self._active[rows[known]]
        return active

    def forget(self, rows: Iterable[int]) -> None:
        for row in rows:
            if row < len(self._active):
                self._active[row] = False
                self._model[row] = self._last[row] = 0.0
                self._quiet[row] = 0

    def reset(self) -> None:
        self._active[:] = False
        self._model[:] = 0.0
        self._last[:] = 0.0
        self._quiet[:] = 0

    def _grow_to(self, size: int) -> None:
        if size > len(self._active):
            grown = max(size, 2 * len(self._active)) - len(self._active)
            self._model = np.pad(self._model, ((0, grown), (0, 0)))
            self._last = np.pad(self._last, ((0, grown), (0, 0)))
            self._active = np.pad(self._active, (0, grown))
            self._quiet = np.pad(self._quiet, (0, grown))


# Readings since the change that it takes to tell a step from a spike: one new reading cannot.
MIN_READINGS = 2
# How many times the usual one-step-ahead miss (the steps before the change) each reading since
# the change must miss by, on the jump's side.
MARGIN = 2.0
# The share of the jump that must come between two readings: a step is sudden. A day unlike the
# usual (a holiday's missing rush hour) leaves the forecasts made before it further behind with
# every step, a step no larger than usual from one reading to the next.
SUDDEN = 0.5
# One-step changes of the context before that it takes to say what is usual for the sensor;
# the step must be larger than every one of them. On Los-loop's speeds a congestion's onset, a
# drop of 25-60 mph within 5 minutes, comes every day and may last hours: without this rule
# 235 moves in a week (101 undone), +6.5 % at +60 min over the stream with the feedback (+2.2 %
# without moves); with it 136 (55 undone), +5.1 %; with the judgement as well, +3.5 %.
MIN_HISTORY = 12


def level_shift(
    recent: FloatArray, made: FloatArray, history: FloatArray
) -> tuple[int, float] | None:
    """Where a step in level began among ``recent`` readings, and its size; None if no step.

    ``recent`` (n,): the sensor's readings at the newest n slots (NaN where missing);
    ``made`` (n, horizon): the forecast made one slot before each of those slots (NaN rows
    where none is held); ``history``: the readings before them (the rest of the context).
    Returns the index into ``recent`` of the change's first slot and the jump, in the
    readings' units.

    >>> made, before = np.full((4, 12), 10.0), np.tile([9.0, 11.0], 12)
    >>> level_shift(np.array([10.5, 9.5, 40.0, 41.0]), made, before)
    (2, 30.5)
    >>> level_shift(np.array([10.5, 9.5, 40.0, 9.0]), made, before) is None  # a spike
    True
    >>> level_shift(np.array([10.5, 9.5, 10.0, 40.0]), made, before) is None  # one reading
    True
    >>> level_shift(np.array([10.5, 9.5, 40.0, 41.0]), made, np.tile([9, 41], 12)) is None
    True
    """
    n, horizon = made.shape
    best, found = 0.0, None
    for i in range(max(0, n - horizon), n):
        residuals = recent[i:] - made[i, : n - i]
        residuals = residuals[np.isfinite(residuals)]
        if len(residuals) < MIN_READINGS:
            continue
        jump = float(residuals.mean())
        stat = abs(jump) * np.sqrt(len(residuals))
        if stat > best:
            best, found = stat, (i, jump, residuals)
    if found is None:
        return None
    i, jump, residuals = found
    before = recent[:i] - made[:i, 0]  # one step ahead, before the change
    before = before[np.isfinite(before)]
    usual = MARGIN * float(np.abs(before).mean()) if len(before) else 0.0
    if not np.all(residuals * np.sign(jump) > usual):
        return None
    step = (recent[i] - recent[i - 1]) * np.sign(jump) if i else np.nan
    if not step >= SUDDEN * abs(jump):
        return None  # no reading before it, or the series went there gradually
    changes = np.abs(np.diff(history))
    changes = changes[np.isfinite(changes)]
    if len(changes) < MIN_HISTORY or step <= changes.max():
        return None  # a change like those the sensor makes every day (a congestion's onset)
    return i, jump
