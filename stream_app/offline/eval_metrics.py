"""Error metrics of the two evaluation protocols, computed on (pairs, horizon) arrays.

``pred`` and ``target`` hold one row per (window, sensor) pair and one column per horizon step,
in the readings' own units. A NaN in either is left out: a NaN target is a missing reading, a
NaN forecast a pair that a method could not forecast.

basicts (``split.masked``): per horizon step, MAE, RMSE and MAPE in percent, ignoring targets
equal to 0, which BasicTS treats as missing. tgcn (``split.cumulative``): for each reported
step k, the steps 1..k pooled, unmasked: MAE, RMSE, and the T-GCN papers' ``accuracy``
(1 - ||Y - Ŷ||_F / ||Y||_F), ``r2`` and explained variance ``var``. tgcn reports no MAPE: its
targets may be 0 (SZ-taxi has many), where a percentage error is undefined.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..core.forecasters import FloatArray
from .protocols import Split

BASICTS_METRICS = ("mae", "rmse", "mape")
TGCN_METRICS = ("mae", "rmse", "accuracy", "r2", "var")
# The table marks each row's best method: the highest of these, the lowest of the others.
HIGHER_IS_BETTER = frozenset({"accuracy", "r2", "var"})

MetricFn = Callable[[FloatArray, FloatArray], dict[str, float]]


def metric_names(split: Split) -> tuple[str, ...]:
    """The metrics that ``split``'s protocol reports, in report order."""
    return BASICTS_METRICS if split.masked else TGCN_METRICS


def score(pred: FloatArray, target: FloatArray, split: Split) -> dict[str, list[float]]:
    """Every metric of ``split``'s protocol, one value per reported horizon step.

    >>> from stream_app.offline.protocols import Split
    >>> s = Split("basicts", 1, 2, range(0), range(0), range(0), (1, 2), False, True, 0)
    >>> score(np.array([[1.0, 2.0]]), np.array([[2.0, 0.0]]), s)["mae"]
    [1.0, nan]
    """
    metrics: MetricFn = basicts_metrics if split.masked else tgcn_metrics
    columns = [slice(0, k) if split.cumulative else slice(k - 1, k) for k in split.reported]
    rows = [metrics(*_kept(pred[:, c], target[:, c], split.masked)) for c in columns]
    return {name: [row[name] for row in rows] for name in metric_names(split)}


def basicts_metrics(y: FloatArray, y_hat: FloatArray) -> dict[str, float]:
    """MAE, RMSE and MAPE (percent) of 1-D targets ``y`` and forecasts ``y_hat``."""
    if not y.size:
        return dict.fromkeys(BASICTS_METRICS, float("nan"))
    error = np.abs(y_hat - y)
    return {
        "mae": float(error.mean()),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mape": float(100.0 * np.mean(error / np.abs(y))),
    }


def tgcn_metrics(y: FloatArray, y_hat: FloatArray) -> dict[str, float]:
    """MAE, RMSE, accuracy, R² and explained variance, as the T-GCN reference code has them."""
    if not y.size:
        return dict.fromkeys(TGCN_METRICS, float("nan"))
    error = y - y_hat
    sse = float(error @ error)
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt(sse / y.size)),
        "accuracy": 1.0 - _ratio(np.sqrt(sse), np.sqrt(float(y @ y))),
        "r2": 1.0 - _ratio(sse, float(np.sum((y - y.mean()) ** 2))),
        "var": 1.0 - _ratio(float(error.var()), float(y.var())),
    }


def _kept(pred: FloatArray, target: FloatArray, masked: bool) -> tuple[FloatArray, FloatArray]:
    """Targets and forecasts, flattened, where both are known (and, masked, the target is not 0)."""
    keep = ~(np.isnan(pred) | np.isnan(target))
    if masked:
        keep &= target != 0
    return target[keep], pred[keep]


def _ratio(num: float, den: float) -> float:
    # A constant target makes R² and explained variance undefined rather than infinite.
    return num / den if den else float("nan")
