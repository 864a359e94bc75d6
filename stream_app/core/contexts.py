"""The inputs of the universal model, computed the same way offline and live.

The universal model reads a sensor's context (its last ``context`` readings on the grid, NaN
where missing or before the sensor's first reading), the grid step, the calendar of the
forecast origin, and, when the network's graph is known, its neighbours' context. The model
normalises its own context inside the graph; the neighbours' context is normalised here, each
neighbour by its own context statistics, and averaged with the graph's weights. Training
(``models.pretraining``) and serving (``core.onnx_forecaster``) both call these functions, so
live and offline inputs are the same numbers.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, tzinfo

import numpy as np
import numpy.typing as npt

from .forecasters import DAY_S
from .windows import RollingWindow

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# Of the mean absolute reading: a flat context is not divided by ~0. A share of 1 % (the floor
# until 2026-12-07) flattened series far from zero, pressure in hPa, temperature in kelvin: the
# UCI bikes' counts plus 100,000 were forecast at 0.99 x persistence's MAE against 0.17 x for
# the counts; at 0.01 % both are forecast alike (docs/universal.md, "The scale's floor"). The
# model learns with it, so a universal card names the floor it learned with and a different one
# is refused (core.card).
SCALE_FLOOR = 1e-4
# The scale of a context of zeros (or none): its forecasts stay at zero. Any other context's
# scale is its own, however small its readings (1e-9 as well as 1e9: scale-free).
SCALE_EPS = 1e-6
Z_CLIP = 20.0  # normalised readings beyond this many scales are clipped
CALENDAR_WIDTH = 3  # time of day (fraction), day of week (0 = Monday), calendar known (0/1)


def context_stats(values: npt.NDArray[np.floating]) -> tuple[FloatArray, FloatArray]:
    """Mean and scale of each row's readings (NaN ignored); (0, ``SCALE_EPS``) for an empty row
    or one of zeros.

    The scale is the standard deviation plus a small share of the mean absolute reading, so a
    flat context gets a scale that fits its level rather than zero.

    >>> mean, scale = context_stats(np.array([[1.0, 3.0, np.nan], [5.0, 5.0, 5.0]]))
    >>> mean.tolist(), np.round(scale, 4).tolist()
    ([2.0, 5.0], [1.0002, 0.0005])
    """
    x = np.asarray(values, dtype=np.float64)
    seen = ~np.isnan(x)
    count = np.maximum(seen.sum(axis=1), 1)
    filled = np.where(seen, x, 0.0)
    mean = filled.sum(axis=1) / count
    centred = np.where(seen, x - mean[:, None], 0.0)
    var = np.einsum("ij,ij->i", centred, centred) / count
    level = np.abs(filled).sum(axis=1) / count
    return mean, _scale(np.sqrt(var), level)


def _scale(std: FloatArray, level: FloatArray) -> FloatArray:
    """The spread plus a share of the level; ``SCALE_EPS`` where both are zero."""
    scale = std + SCALE_FLOOR * level
    out: FloatArray = np.where(scale > 0, scale, SCALE_EPS)
    return out


def normalised(values: npt.NDArray[np.floating]) -> Float32Array:
    """Each row in units of its own scale around its own mean, clipped; NaN stays NaN."""
    mean, scale = context_stats(values)
    z = (np.asarray(values, dtype=np.float64) - mean[:, None]) / scale[:, None]
    return np.clip(z, -Z_CLIP, Z_CLIP, out=z).astype(np.float32)


def neighbour_context(
    contexts: npt.NDArray[np.floating], index: IntArray, weight: npt.NDArray[np.floating]
) -> Float32Array:
    """The graph-weighted mean of the neighbours' normalised contexts, per row of ``index``.

    ``contexts`` (M, C) are the contexts of every sensor that may be a neighbour; ``index``
    (B, k) names each row's neighbours in it (-1: none) and ``weight`` (B, k) their weights. At
    each step the weights of the neighbours with a reading are renormalised; a step where no
    neighbour has one, and a row without neighbours, is NaN (the model's mask).
    """
    real = index >= 0
    if not real.any():  # no row has a neighbour (one series, or no graph)
        return np.full((index.shape[0], contexts.shape[1]), np.nan, dtype=np.float32)
    z = normalised(contexts)
    picked = z[np.where(real, index, 0)]  # (B, k, C)
    known = ~np.isnan(picked)
    w = np.where(real, weight, 0.0).astype(np.float32)[:, :, None] * known
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # z is clipped: NaN is all to zero
        out: Float32Array = ((np.where(known, picked, 0.0) * w).sum(axis=1) / total).astype(
            np.float32
        )
    out[total <= 0] = np.nan
    return out


def calendar(last_ts: IntArray, known: bool | npt.NDArray[np.bool_] = True) -> Float32Array:
    """(B, 3): time of day of each origin as a fraction, its weekday (Monday 0), and whether
    the calendar is real (a dataset with nominal dates says False; the model then ignores it).

    >>> calendar(np.array([1467331500]), True).tolist()  # Fri 1 Jul 2016 00:05 UTC
    [[0.0034722222480922937, 4.0, 1.0]]
    """
    ts = np.asarray(last_ts, dtype=np.int64)
    out = np.empty((len(ts), CALENDAR_WIDTH), dtype=np.float32)
    out[:, 0] = (ts % DAY_S) / DAY_S
    out[:, 1] = (ts // DAY_S + 3) % 7  # the epoch began on a Thursday; +3 makes Monday 0
    out[:, 2] = np.asarray(known, dtype=np.float32)
    out[out[:, 2] == 0, :2] = 0.0
    return out


def local_seconds(ts: IntArray, zone: tzinfo | None) -> IntArray:
    """Epoch seconds ``ts`` as ``zone``'s wall clock reads them (seconds since 1970-01-01 00:00
    local time): what a model's time of day and weekday come from. ``ts`` itself where ``zone``
    is None (the ticks' own clock: a dataset's naive times are its local clock already). One
    offset for a batch of a week or less whose ends agree (no change of summer time between
    them), else each quarter-hour's own.

    >>> from zoneinfo import ZoneInfo
    >>> la = ZoneInfo("America/Los_Angeles")  # 2016-03-13 02:00 PST became 03:00 PDT
    >>> (local_seconds(np.array([1457859600, 1457863200]), la) % 86400 // 3600).tolist()
    [1, 3]
    """
    if zone is None or len(ts) == 0:
        return ts
    ts = np.asarray(ts, dtype=np.int64)
    low, high = int(ts.min()), int(ts.max())
    first = _offset_s(zone, low)
    if high - low <= 7 * DAY_S and first == _offset_s(zone, high):
        return ts + first
    quarters, where = np.unique(ts // 900, return_inverse=True)  # offsets change on a 15 min
    offsets = np.array([_offset_s(zone, int(q) * 900) for q in quarters], dtype=np.int64)
    out: IntArray = ts + offsets[where.reshape(ts.shape)]
    return out


def _offset_s(zone: tzinfo, epoch_s: int) -> int:
    offset = datetime.fromtimestamp(epoch_s, tz=zone).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def rolling_stats(values: npt.NDArray[np.floating], context: int) -> tuple[FloatArray, FloatArray]:
    """``context_stats`` of the window of ``context`` steps ending at every step: (T, N) each.

    The same mean and scale as ``context_stats`` of each window (NaN before the first step), by
    running sums, for a trainer that needs many windows of every sensor.
    """
    x = np.asarray(values, dtype=np.float64)
    seen = ~np.isnan(x)
    filled = np.where(seen, x, 0.0)

    def window_sum(a: FloatArray) -> FloatArray:
        run = np.cumsum(np.concatenate([np.zeros((1, a.shape[1])), a]), axis=0)
        lo = np.maximum(np.arange(1, len(a) + 1) - context, 0)
        out: FloatArray = run[1:] - run[lo]
        return out

    count = np.maximum(window_sum(seen.astype(np.float64)), 1)
    mean = window_sum(filled) / count
    var = np.maximum(window_sum(filled**2) / count - mean**2, 0.0)
    level = window_sum(np.abs(filled)) / count
    return mean, _scale(np.sqrt(var), level)


# -- live: a sensor's neighbours' context from the windows the worker holds for them ---------
#
# For a network whose whole step reaches one worker (network-keyed, a tick batch per step), a
# forecast made at slot ``s`` reads each neighbour's window aligned to ``s``: the readings it
# has at slots ``s - C + 1 .. s``, NaN where it has none (a neighbour not yet heard from, or
# behind). A chunk is inferred only after the whole message it came from is placed
# (``Pipeline``), so a step that arrives as one batch gives every sensor all its neighbours'
# readings of that step, whatever their order inside the batch: the context
# ``offline.model_inputs`` builds.


class NeighbourTable:
    """Each sensor's neighbours by id, with weights (the ``k`` heaviest of the graph)."""

    def __init__(self, neighbours: Mapping[str, Sequence[tuple[str, float]]], k: int) -> None:
        self.k = k
        self._of = {sensor: list(pairs)[:k] for sensor, pairs in neighbours.items()}

    def __len__(self) -> int:
        return len(self._of)

    def context(
        self,
        sensors: Sequence[str],
        slots: Sequence[int],
        window_of: Callable[[str], RollingWindow | None],
        length: int,
    ) -> Float32Array:
        """(len(sensors), length): each sensor's neighbours' normalised context at its slot.
        A neighbour's context at a slot is read and normalised once however many of the
        sensors have it as a neighbour (a step's sensors share most of theirs)."""
        index = np.full((len(sensors), self.k), -1, dtype=np.int64)
        weight = np.zeros((len(sensors), self.k), dtype=np.float32)
        contexts: list[array[float]] = []
        position: dict[tuple[str, int], int] = {}  # (neighbour, slot): row in contexts, or -1
        for row, (sensor, slot) in enumerate(zip(sensors, slots, strict=True)):
            for col, (neighbour, w) in enumerate(self._of.get(sensor, ())):
                at = position.get((neighbour, slot))
                if at is None:
                    window = window_of(neighbour)
                    at = -1
                    if window is not None and window.newest is not None:
                        at = len(contexts)
                        contexts.append(aligned(window, slot, length))
                    position[(neighbour, slot)] = at
                if at >= 0:
                    index[row, col] = at
                    weight[row, col] = w
        values = np.array(contexts) if contexts else np.empty((0, length))
        return neighbour_context(values, index, weight)


def aligned(window: RollingWindow, slot: int, length: int) -> array[float]:
    """The window's values at slots ``slot - length + 1 .. slot`` (NaN where it has none)."""
    newest = window.newest if window.newest is not None else slot - length
    shift = slot - newest
    values = window.buffer
    if shift == 0:
        return values[:]
    nan = array("d", [np.nan])
    if shift > 0:  # the neighbour has not reached this slot yet
        return values[shift:] + nan * min(shift, length) if shift < length else nan * length
    ahead = -shift  # the neighbour is already past this slot
    return nan * min(ahead, length) + values[: length - ahead] if ahead < length else nan * length
