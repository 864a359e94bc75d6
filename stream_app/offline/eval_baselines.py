"""The test samples of an offline evaluation, and the baselines' forecasts for them.

A sample is one (window end ``t``, sensor) pair of the test part: inputs are the target
channel at ``t - window + 1 .. t``, targets at ``t + 1 .. t + horizon``. Pairs whose window has
a missing value are skipped, because the live worker never forecasts from a window with holes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..core.forecasters import DAY_S, WEEK_S, FloatArray, IntArray, season_steps
from .datasets import GridDataset
from .protocols import Split


@dataclass(frozen=True)
class Samples:
    """The test part's complete windows, one row per (window end, sensor) pair."""

    inputs: FloatArray  # (pairs, window), oldest value first
    targets: FloatArray  # (pairs, horizon), NaN where the reading is missing
    ends: IntArray  # (pairs,) step index of each window's newest value
    sensors: IntArray  # (pairs,) sensor index into dataset.sensors
    skipped: int  # pairs left out because their window has a missing value

    def __len__(self) -> int:
        return len(self.ends)

    def target_steps(self) -> IntArray:
        """(pairs, horizon) step index of every target."""
        horizon = self.targets.shape[1]
        return self.ends[:, None] + np.arange(1, horizon + 1, dtype=np.int64)


def target_series(dataset: GridDataset, split: Split) -> FloatArray:
    """The (T, N) series of the channel that ``split`` forecasts."""
    return dataset.values[:, :, split.target_channel]


def evaluation_samples(dataset: GridDataset, split: Split) -> Samples:
    """Every test-part pair with a complete window, ordered by window end, then sensor."""
    series = target_series(dataset, split)
    ends = split.sample_ends(split.test)
    windows = sliding_window_view(series, split.window, axis=0)[ends - split.window + 1]
    complete = ~np.isnan(windows).any(axis=2)  # (ends, sensors)
    which, sensors = np.nonzero(complete)
    targets = sliding_window_view(series, split.horizon, axis=0)[ends[which] + 1, sensors]
    return Samples(
        windows[which, sensors],
        targets,
        ends[which],
        sensors.astype(np.int64),
        int(complete.size - len(which)),
    )


def baseline_forecasts(
    dataset: GridDataset, split: Split, samples: Samples
) -> dict[str, FloatArray]:
    """The (pairs, horizon) forecasts of every baseline, by method name.

    ``historical_average`` needs a step that divides a day; on any other grid it is left out.
    """
    repeat = np.ones((1, split.horizon))
    out = {
        "persistence": samples.inputs[:, -1:] * repeat,
        "seasonal_naive": seasonal_naive(dataset, split, samples),
        "window_mean": samples.inputs.mean(axis=1, keepdims=True) * repeat,
    }
    if DAY_S % dataset.step_s == 0:
        out["historical_average"] = historical_average(dataset, split, samples)
    return out


def seasonal_naive(dataset: GridDataset, split: Split, samples: Samples) -> FloatArray:
    """The latest reading of each target's phase of the season, never after the origin.

    The season fits the step (``season_steps``: a day below a day's step, a week for daily
    data, a year beyond); target ``t + h`` gets the reading at ``t + h - k * season`` with
    ``k = ceil(h / season)``, as the live ``SeasonalNaive`` forecaster has it. NaN, so that the
    pair leaves this method's score at that step only, where that reading is missing or falls
    before the data starts.
    """
    season = season_steps(dataset.step_s)
    ahead = np.arange(1, split.horizon + 1, dtype=np.int64)
    back = samples.ends[:, None] + ahead - season * -(-ahead // season)  # ceil(h / season)
    sensors = np.broadcast_to(samples.sensors[:, None], back.shape)
    out = np.full(back.shape, np.nan)
    known = back >= 0
    out[known] = target_series(dataset, split)[back[known], sensors[known]]
    return out


def historical_average(dataset: GridDataset, split: Split, samples: Samples) -> FloatArray:
    """Per sensor, the train-part mean of the target's time-of-week slot.

    Where that slot never occurs in the train part (Los-loop holds one week, so its test days
    are never in train), the train-part mean of the same time-of-day slot is used instead, and
    where that is missing too, the sensor's train-part mean. Only the train part is read, so no
    test reading leaks into the forecast.
    """
    series = target_series(dataset, split)[split.train]
    times = dataset.timestamps()
    train_times = times[split.train]
    steps = samples.target_steps()
    sensors = np.broadcast_to(samples.sensors[:, None], steps.shape)
    out = np.full(steps.shape, np.nan)
    for period in (WEEK_S, DAY_S, 0):  # finest first; 0: one slot, the sensor's mean
        n_slots = max(1, period // dataset.step_s)
        means = _slot_means(series, _slots(train_times, period, dataset.step_s), n_slots)
        todo = np.isnan(out)
        out[todo] = means[_slots(times[steps[todo]], period, dataset.step_s), sensors[todo]]
    return out


def _slots(times: IntArray, period_s: int, step_s: int) -> IntArray:
    """The slot of each time within ``period_s`` (all 0 when the period is 0)."""
    if not period_s:
        return np.zeros_like(times)
    return (times % period_s) // step_s


def _slot_means(series: FloatArray, slots: IntArray, n_slots: int) -> FloatArray:
    """(n_slots, N) mean of the known readings in each slot, NaN where a slot has none."""
    n_sensors = series.shape[1]
    index = (slots[:, None] * n_sensors + np.arange(n_sensors)).ravel()
    known = ~np.isnan(series.ravel())
    size = n_slots * n_sensors
    sums = np.bincount(index[known], weights=series.ravel()[known], minlength=size)
    counts = np.bincount(index[known], minlength=size)
    with np.errstate(invalid="ignore"):  # 0 / 0 is the NaN that marks an empty slot
        means: FloatArray = (sums / counts).reshape(n_slots, n_sensors)
    return means
