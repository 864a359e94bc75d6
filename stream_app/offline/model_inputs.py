"""A long-context model's inputs for (window end, sensor) pairs of a dataset, as live.

A model that reads more than the protocol's window (the universal model) gets, for a pair,
the sensor's last ``context`` readings up to the window end (NaN before the data starts or
where missing), and its neighbours' normalised context at the same steps
(``core.contexts.neighbour_context``), exactly as a worker holding the whole network has them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..core.contexts import neighbour_context

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
# Each sensor's neighbours (N, k) by index into the dataset's sensors (-1: none), and weights.
Neighbours = tuple[IntArray, Float32Array]


def padded(series: npt.NDArray[np.floating], context: int) -> Float32Array:
    """``series`` (T, N) with ``context - 1`` rows of NaN before it: row t + j of the result is
    step t - context + 1 + j of the series."""
    front = np.full((context - 1, series.shape[1]), np.nan, dtype=np.float32)
    return np.concatenate([front, np.asarray(series, dtype=np.float32)])


def contexts(pad: Float32Array, ends: IntArray, sensors: IntArray, context: int) -> Float32Array:
    """(pairs, context) readings of each sensor up to its window end, oldest first."""
    rows = ends[:, None] + np.arange(context)
    out: Float32Array = pad[rows, sensors[:, None]]
    return out


def neighbour_contexts(
    pad: Float32Array,
    ends: IntArray,
    sensors: IntArray,
    context: int,
    index: IntArray,
    weight: npt.NDArray[np.floating],
) -> Float32Array:
    """(pairs, context) neighbour input of each pair: ``index``/``weight`` (N, k) name each
    sensor's neighbours (-1: none) and their weights; NaN where a sensor has none."""
    pairs, k = len(ends), index.shape[1]
    if k == 0 or pairs == 0:
        return np.full((pairs, context), np.nan, dtype=np.float32)
    mine = index[sensors]  # (pairs, k)
    real = mine >= 0
    which, _ = np.nonzero(real)  # only real neighbours' contexts are read
    # A neighbour's window at a step is the same for every sensor it neighbours: read and
    # normalise each (step, neighbour) once (a chunk of a test part holds each about k times).
    width = pad.shape[1]
    read, flat_read = np.unique(ends[which] * width + mine[real], return_inverse=True)
    rows = read[:, None] // width + np.arange(context)
    flat = np.full(mine.shape, -1, dtype=np.int64)
    flat[real] = flat_read.reshape(-1)
    return neighbour_context(pad[rows, read[:, None] % width], flat, weight[sensors])
