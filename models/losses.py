"""Masked losses for training and the protocols' metrics for reporting.

In a masked protocol a target equal to 0 is a missing reading, not a real one: it counts
neither in the loss nor in the metrics.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.nn import functional

from stream_app.offline.protocols import Split

LOSSES = ("mse", "mae", "huber")


def masked_loss(kind: str, pred: Tensor, y: Tensor, mask: Tensor, delta: float = 1.0) -> Tensor:
    """Mean ``kind`` loss over the entries where ``mask`` is True.

    ``delta`` is Huber's threshold between squared and absolute error, in normalised units.
    """
    if kind == "mse":
        err = (pred - y) ** 2
    elif kind == "mae":
        err = (pred - y).abs()
    elif kind == "huber":
        err = functional.huber_loss(pred, y, reduction="none", delta=delta)
    else:
        raise ValueError(f"unknown loss {kind!r}: expected one of {LOSSES}")
    weight = mask.to(err.dtype)
    return (err * weight).sum() / weight.sum().clamp(min=1.0)


def masked_mae(
    pred: npt.NDArray[np.float64], target: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_]
) -> float:
    """Mean absolute error over the masked-in entries, in the arrays' units."""
    count = int(mask.sum())
    return float(np.abs(pred - target)[mask].sum() / count) if count else float("nan")


def report(
    split: Split,
    step_s: int,
    pred: npt.NDArray[np.float64],
    target: npt.NDArray[np.float64],
    mask: npt.NDArray[np.bool_],
) -> dict[str, float]:
    """The protocol's metrics in the readings' units, keyed like ``H3_mae`` or ``15min_rmse``.

    ``mae`` (all steps) always comes first; basicts adds each reported step's masked MAE,
    tgcn the RMSE and MAE pooled over steps 1..k of each reported k.
    """
    out = {"mae": masked_mae(pred, target, mask)}
    labels = split.horizon_labels(step_s)
    for k, label in zip(split.reported, labels, strict=True):
        if split.cumulative:
            err = (pred[:, :k] - target[:, :k])[mask[:, :k]]
            out[f"{label}_rmse"] = float(np.sqrt(np.mean(err**2)))
            out[f"{label}_mae"] = float(np.mean(np.abs(err)))
        else:
            out[f"{label}_mae"] = masked_mae(pred[:, k - 1], target[:, k - 1], mask[:, k - 1])
    return out


def as_tensor(array: npt.NDArray[np.generic]) -> Tensor:
    """A tensor sharing ``array``'s memory."""
    return torch.from_numpy(np.ascontiguousarray(array))
