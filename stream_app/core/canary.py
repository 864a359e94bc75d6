"""The canary: a new model and the one it would replace, scored on the same targets, one of them
forecasting in the shadow; the verdict says whether the new one may serve.

After a swap (``STCAST_CANARY_MODE=after``), the replaced model keeps forecasting in the shadow;
on ``rollback`` the pipeline swaps it back. Before a swap (``before``: a trial), the new model
forecasts in the shadow while the serving one goes on; the pipeline swaps it in only if it did
no worse (``promote``), and otherwise (``reject``) it never serves. The pipeline
(``Pipeline.swap``) starts a ``Canary``, feeds it the shadow model's forecasts of the same
windows (``median_forecast``) and the real readings, and asks for the verdict after each chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .forecasters import FloatArray, Forecaster, IntArray, QuantileForecaster, WindowBatch
from .scoring import PendingForecasts


def hour_ahead_step(step_s: int, horizon: int) -> int:
    """The horizon step (1-based) nearest an hour ahead, the lead operators watch.

    >>> hour_ahead_step(300, 12), hour_ahead_step(900, 12), hour_ahead_step(86_400, 12)
    (12, 4, 1)
    """
    return min(horizon, max(1, round(3600 / step_s)))


def judged_steps(step_s: int, horizon: int) -> tuple[int, ...]:
    """The horizon steps (1-based) a canary judges: the last, and the one nearest an hour
    ahead (the same step at 5 minutes with 12 steps; the first on an hourly or daily grid,
    where the last is 12 hours or days ahead).

    >>> judged_steps(300, 12), judged_steps(900, 12), judged_steps(3600, 12)
    ((12,), (4, 12), (1, 12))
    """
    return tuple(sorted({hour_ahead_step(step_s, horizon), horizon}))


def median_forecast(forecaster: Forecaster, batch: WindowBatch) -> FloatArray:
    """What ``forecaster`` serves for ``batch``: its median when it forecasts quantiles."""
    if isinstance(forecaster, QuantileForecaster) and forecaster.quantiles:
        quantiles = forecaster.forecast_quantiles(batch)
        median: FloatArray = quantiles[:, forecaster.quantiles.index(0.5)].copy()
        return median
    return forecaster.forecast(batch)


@dataclass(frozen=True)
class CanaryVerdict:
    """The canary's comparison: the new model (``served``: serving, or on trial) against the one
    it replaces (``previous``), on the same targets; MAE at horizon ``step``, the judged step
    where the new model did relatively worst (what a retrain must not make worse), and over
    all steps."""

    served: str
    previous: str
    started_s: float
    decided_s: float
    pairs: int
    served_mae: float
    previous_mae: float
    served_mae_all: float
    previous_mae_all: float
    margin: float
    trial: bool = False  # the new model forecast in the shadow, before it served
    step: int = 0  # the horizon step (1-based) of served_mae and previous_mae

    @property
    def rollback(self) -> bool:
        """The new model did worse by more than the margin: it goes (or never comes)."""
        return self.served_mae > self.previous_mae * (1.0 + self.margin)

    @property
    def decision(self) -> str:
        if self.trial:
            return "reject" if self.rollback else "promote"
        return "rollback" if self.rollback else "keep"

    @property
    def ratio(self) -> float:
        return self.served_mae / self.previous_mae if self.previous_mae > 0 else math.inf

    def to_json(self) -> dict[str, object]:
        return {
            "decision": self.decision,
            "trial": self.trial,
            "step": self.step,
            "served": self.served,
            "previous": self.previous,
            "pairs": self.pairs,
            "served_mae": round(self.served_mae, 4),
            "previous_mae": round(self.previous_mae, 4),
            "served_mae_all_steps": round(self.served_mae_all, 4),
            "previous_mae_all_steps": round(self.previous_mae_all, 4),
            "margin": self.margin,
        }


class Canary:
    """Two models forecast the same windows, one of them in the shadow (nothing of it is
    produced), and both are scored on the same targets: after a swap, the replaced model is
    the shadow; on a trial (``trial``), the new one is.

    Both sides' forecasts go into their own ``PendingForecasts`` with the same sensors and
    slots, so the same actuals settle exactly the same (sensor, slot, horizon) pairs of each.
    ``verdict`` is given once ``duration_s`` of event time has passed since the start and the
    last horizon step has ``min_pairs`` pairs; until then it is None. The new model must do no
    worse (``margin``) at each of the ``judged`` horizon steps (default: the last).

    >>> canary = Canary(shadow=None, new="m@2", old="m@1", started_s=0.0, horizon=1,
    ...                 duration_s=10, min_pairs=1)
    >>> one = np.array([0])
    >>> canary.add(one, one, np.array([[12.0]]), np.array([[10.5]]))
    >>> canary.score(one, one + 1, np.array([10.0]))
    >>> canary.verdict(now_s=10.0).to_json()["decision"]
    'rollback'
    """

    def __init__(
        self,
        shadow: Forecaster | None,
        new: str,
        old: str,
        started_s: float,
        horizon: int,
        *,
        trial: bool = False,
        duration_s: float = 21_600.0,
        margin: float = 0.0,
        min_pairs: int = 100,
        judged: tuple[int, ...] = (),
    ) -> None:
        self.shadow = shadow  # the Forecaster in the shadow: the replaced one, or on trial the new
        self.new, self.old = new, old  # model ids
        self.trial = trial
        self.started_s = started_s
        self.horizon = horizon
        self.duration_s = duration_s
        self.margin = margin
        self.min_pairs = min_pairs
        self.judged = judged or (horizon,)
        if not all(1 <= step <= horizon for step in self.judged):
            raise ValueError(f"judged steps {self.judged} outside the horizon 1..{horizon}")
        self._pending = (PendingForecasts(horizon), PendingForecasts(horizon))
        self._sums = np.zeros((2, horizon))
        self._counts = np.zeros(horizon, dtype=np.int64)

    def add(
        self, sensors: IntArray, slots: IntArray, served: FloatArray, shadow: FloatArray
    ) -> None:
        """Both models' forecasts (n, horizon) made at ``slots`` for these sensor rows: the
        served ones and the shadow's."""
        if len(sensors):
            new, old = (shadow, served) if self.trial else (served, shadow)
            last = served[:, 0]  # no baseline here: any value keeps the pending rows aligned
            self._pending[0].add(sensors, slots, new, last)
            self._pending[1].add(sensors, slots, old, last)

    def score(self, sensors: IntArray, slots: IntArray, actuals: FloatArray) -> None:
        """Real readings: add the absolute errors of both sides on the pairs they settle."""
        if not len(sensors):
            return
        served, previous = (pending.score(sensors, slots, actuals) for pending in self._pending)
        keep = np.isfinite(served.errors) & np.isfinite(previous.errors)
        steps = served.horizons[keep] - 1
        np.add.at(self._sums[0], steps, np.abs(served.errors[keep]))
        np.add.at(self._sums[1], steps, np.abs(previous.errors[keep]))
        self._counts += np.bincount(steps, minlength=self.horizon)

    def forget(self, rows: list[int]) -> None:
        for pending in self._pending:
            pending.clear(rows)

    def _ratios(self) -> FloatArray:
        """New-over-old MAE so far at each judged step (inf where only the old one is exact,
        NaN where neither has an error yet)."""
        new, old = self._sums[:, [k - 1 for k in self.judged]]
        worse = np.where(new > 0, np.inf, np.nan)
        ratios: FloatArray = np.where(old > 0, new / np.where(old > 0, old, 1.0), worse)
        return ratios

    def _worst_step(self) -> int:
        """The judged horizon step (1-based) with the highest new-over-old MAE so far."""
        ratios = self._ratios()
        if np.isnan(ratios).all():
            return self.judged[-1]
        return self.judged[int(np.nanargmax(ratios))]

    @property
    def ratio(self) -> float:
        """The new model's MAE over the old one's so far, at the judged step where it is
        highest (NaN before any error)."""
        ratios = self._ratios()
        return math.nan if np.isnan(ratios).all() else float(np.nanmax(ratios))

    def verdict(self, now_s: float) -> CanaryVerdict | None:
        """The comparison, once the canary has run its time with enough pairs."""
        last = int(self._counts[-1])
        if now_s - self.started_s < self.duration_s or last < max(1, self.min_pairs):
            return None
        means = self._sums / np.maximum(self._counts, 1)  # (new, old) x horizon
        step = self._worst_step()  # where the new model did relatively worst: it decides
        total = max(int(self._counts.sum()), 1)
        return CanaryVerdict(
            self.new,
            self.old,
            self.started_s,
            now_s,
            int(self._counts[step - 1]),
            float(means[0, step - 1]),
            float(means[1, step - 1]),
            float(self._sums[0].sum() / total),
            float(self._sums[1].sum() / total),
            self.margin,
            self.trial,
            step,
        )
