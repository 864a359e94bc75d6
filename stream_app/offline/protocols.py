"""Evaluation protocols: how the field splits a dataset, and which horizons it reports.

Both ``stcast train`` and ``stcast evaluate`` read the split from here, so a model is never
selected on the data it is scored on.

A sample is the window ending at step ``t`` (inputs ``t - window + 1 .. t``) with targets
``t + 1 .. t + horizon``. It belongs to the part of the time axis that holds all its targets;
its inputs may reach back into the previous part, as a live stream's would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .datasets import GridDataset

PROTOCOLS = ("basicts", "tgcn")
# The T-GCN papers use 4 input steps on SZ-taxi (15-minute steps) and 12 elsewhere.
_TGCN_WINDOWS = {"sz_taxi": 4}
_TGCN_MINUTES = (15, 30, 45, 60)


@dataclass(frozen=True)
class Split:
    """A protocol applied to one dataset: window, horizon, the parts, what to report."""

    protocol: str
    window: int
    horizon: int
    train: range  # step ranges of the time axis
    val: range
    test: range
    reported: tuple[int, ...]  # horizon steps (1-based) in the report
    cumulative: bool  # tgcn: each reported k is the average over steps 1..k; basicts: step k
    masked: bool  # basicts: targets equal to 0 are ignored
    target_channel: int

    def sample_ends(self, part: range) -> npt.NDArray[np.int64]:
        """Steps ``t`` whose windows are complete and whose targets all lie in ``part``."""
        first = max(part.start - 1, self.window - 1)
        last = part.stop - 1 - self.horizon
        return np.arange(first, last + 1, dtype=np.int64)

    def horizon_labels(self, step_s: int) -> list[str]:
        """``H3``-style labels (basicts) or ``15min``-style labels (tgcn)."""
        if self.cumulative:
            return [f"{k * step_s // 60}min" for k in self.reported]
        return [f"H{k}" for k in self.reported]


def split(dataset: GridDataset, protocol: str) -> Split:
    """The protocol's split of ``dataset``; ``ValueError`` for an unknown protocol."""
    if protocol == "basicts":
        return _basicts(dataset)
    if protocol == "tgcn":
        return _tgcn(dataset)
    raise ValueError(f"unknown protocol {protocol!r}: expected one of {PROTOCOLS}")


def _basicts(dataset: GridDataset) -> Split:
    """Chronological 6:2:2 for PEMS, 7:1:2 otherwise; window 12, horizon 12, masked."""
    pems = dataset.name.startswith("pems")
    fractions = (0.6, 0.2) if pems else (0.7, 0.1)
    train, val, test = _parts(dataset.n_steps, *fractions)
    return Split("basicts", 12, 12, train, val, test, tuple(range(1, 13)), False, True, 0)


def _tgcn(dataset: GridDataset) -> Split:
    """80/20, with the last eighth of the training part held out for early stopping."""
    window = _TGCN_WINDOWS.get(dataset.name, 12)
    steps = tuple(m * 60 // dataset.step_s for m in _TGCN_MINUTES)
    if any(m * 60 % dataset.step_s for m in _TGCN_MINUTES):
        raise ValueError(
            f"the tgcn protocol reports 15-minute multiples; {dataset.name} has a "
            f"{dataset.step_s} s step"
        )
    train, val, test = _parts(dataset.n_steps, 0.7, 0.1)
    return Split("tgcn", window, max(steps), train, val, test, steps, True, False, 0)


def _parts(n_steps: int, train: float, val: float) -> tuple[range, range, range]:
    a = round(n_steps * train)
    b = round(n_steps * (train + val))
    return range(0, a), range(a, b), range(b, n_steps)
