"""Training samples: a dataset's windows turned into the exact tensors the runtime will feed.

The features are built here with the same arithmetic as
:class:`stream_app.core.onnx_forecaster.OnnxForecaster`, so a model never sees at serving time
inputs it was not trained on. Normalisation statistics come from the training part only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stream_app.core.card import FEATURES, Normalization
from stream_app.core.forecasters import DAY_S
from stream_app.offline.datasets import GridDataset
from stream_app.offline.protocols import Split

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Samples:
    """One part's samples, one row per (sample end, sensor) with a complete window and targets.

    ``x`` is (S, window, features) float32 as the runtime builds it, ``sensor`` the embedding
    row, ``y`` the targets in normalised units, ``target`` the same in the readings' units and
    ``mask`` where a target counts (all True unless the protocol is masked).
    """

    x: Float32Array
    sensor: Int64Array
    y: Float32Array
    target: Float64Array
    mask: BoolArray

    def __len__(self) -> int:
        return int(self.sensor.shape[0])


def fit_normalization(dataset: GridDataset, split: Split) -> Normalization:
    """Global z-score statistics of the target channel over the training part's readings."""
    values = dataset.values[split.train, :, split.target_channel]
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError(f"{dataset.name}: the training part holds no readings")
    std = float(finite.std())
    return Normalization(float(finite.mean()), std if std > 0 else 1.0)


def window_features(
    values: Float64Array,
    last_ts: Int64Array,
    step_s: int,
    norm: Normalization,
    features: Sequence[str],
) -> Float32Array:
    """The (batch, window, features) model input of windows ``values`` (batch, window).

    Mirrors the runtime's float32 arithmetic step by step, so the two agree bit for bit.
    """
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown features {unknown}: expected a subset of {FEATURES}")
    window = values.shape[1]
    ts = last_ts[:, None] - np.arange(window - 1, -1, -1, dtype=np.int64) * step_s
    out = np.empty((*values.shape, len(features)), dtype=np.float32)
    for col, name in enumerate(features):
        out[:, :, col] = _feature(name, values, ts, norm)
    return out


def _feature(name: str, values: Float64Array, ts: Int64Array, norm: Normalization) -> Float32Array:
    if name == "value":
        shifted = (values - norm.mean).astype(np.float32)
        return shifted / np.float32(norm.std)
    if name == "time_of_day":
        return (ts % DAY_S).astype(np.float32) / np.float32(DAY_S)
    # day_of_week: the epoch began on a Thursday; +3 makes Monday 0
    return ((ts // DAY_S + 3) % 7).astype(np.float32)


def make_samples(
    dataset: GridDataset,
    split: Split,
    part: range,
    norm: Normalization,
    features: Sequence[str],
) -> Samples:
    """Every complete (window, targets) pair of ``part``; windows with a NaN are skipped."""
    ends = split.sample_ends(part)
    series = dataset.values[:, :, split.target_channel]
    n = dataset.n_sensors
    inputs = _gather(series, ends, -split.window + 1, 1)  # (S * N, window)
    targets = _gather(series, ends, 1, split.horizon + 1)
    last_ts = np.repeat(dataset.timestamps()[ends], n)
    sensor = np.tile(np.arange(n, dtype=np.int64), len(ends))
    keep = np.isfinite(inputs).all(axis=1) & np.isfinite(targets).all(axis=1)
    inputs, targets = inputs[keep], targets[keep]
    mask = targets != 0 if split.masked else np.ones(targets.shape, dtype=np.bool_)
    return Samples(
        x=window_features(inputs, last_ts[keep], dataset.step_s, norm, features),
        sensor=sensor[keep],
        y=((targets - norm.mean) / norm.std).astype(np.float32),
        target=targets,
        mask=mask,
    )


def _gather(series: Float64Array, ends: Int64Array, lo: int, hi: int) -> Float64Array:
    """Rows of ``series[t + lo .. t + hi - 1]`` for every end ``t`` and sensor: (S * N, hi - lo)."""
    steps = ends[:, None] + np.arange(lo, hi, dtype=np.int64)
    block = series[steps]  # (S, hi - lo, N)
    return np.ascontiguousarray(block.transpose(0, 2, 1).reshape(-1, hi - lo))
