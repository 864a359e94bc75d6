"""Pre-training windows: many datasets, many grid steps, drawn at random into mixed batches.

Each dataset becomes one or more *sources*: its pre-training part (the first 80 % of its time
range) at its own step and, for sub-hourly and hourly data, averaged to coarser steps (15 min,
1 h, 1 day) so that the model meets every step between minutes and days. A batch takes windows
from several sources; a window is a random (sensor, origin) of its source with the inputs the
runtime builds (``stream_app.core.contexts``), the next ``horizon`` readings as targets, and, at
random, a context cut short (a sensor just warming up) or its neighbours left out (a
sensor-keyed network).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stream_app.core.contexts import Z_CLIP, calendar, rolling_stats
from stream_app.offline.corpus import PretrainingSet, pretraining_graph, pretraining_part
from stream_app.offline.graphs import neighbours
from stream_app.offline.model_inputs import contexts, padded

Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

MIN_CONTEXT = 12  # readings a sensor needs before it is forecast
COARSER_STEPS = (900, 3_600, 86_400)  # averaged versions of finer data
MIN_COARSE_STEPS = 400  # an averaged version needs this many steps
NEIGHBOURS = 8  # neighbours per sensor in the neighbour input


@dataclass(frozen=True)
class Source:
    """One dataset at one grid step: its pre-training readings and what windows need."""

    name: str
    values: Float32Array  # (T, N), NaN where missing
    start_s: int
    step_s: int
    calendar: bool  # False: the timestamps are nominal
    neighbour_index: IntArray  # (N, k), -1 padding; k may be 0
    neighbour_weight: Float32Array  # (N, k)

    @property
    def n_windows(self) -> int:
        return int(np.isfinite(self.values).sum())


@dataclass(frozen=True)
class Batch:
    """Model inputs and targets (readings' units), as numpy arrays."""

    context: Float32Array  # (B, C)
    step_s: Float32Array  # (B, 1)
    calendar: Float32Array  # (B, 3)
    neighbours: Float32Array  # (B, C)
    target: Float32Array  # (B, H), NaN where missing

    def __len__(self) -> int:
        return int(self.context.shape[0])


def coarser(source: Source, step_s: int) -> Source | None:
    """``source`` averaged to ``step_s`` (a multiple of its step), or None if it is too short."""
    factor = step_s // source.step_s
    if factor <= 1 or step_s % source.step_s:
        return None
    steps = source.values.shape[0] // factor
    if steps < MIN_COARSE_STEPS:
        return None
    blocks = source.values[: steps * factor].reshape(steps, factor, -1)
    with warnings.catch_warnings():  # an all-missing block is NaN, as it should be
        warnings.simplefilter("ignore", RuntimeWarning)
        values = np.nanmean(blocks, axis=1).astype(np.float32)
    return Source(
        f"{source.name}@{step_s}s",
        values,
        source.start_s,
        step_s,
        source.calendar,
        source.neighbour_index,
        source.neighbour_weight,
    )


def with_coarser_steps(sources: Sequence[Source]) -> list[Source]:
    """Every source, and its averaged versions at the coarser steps it allows."""
    out: list[Source] = []
    for source in sources:
        out.append(source)
        for step in COARSER_STEPS:
            if step > source.step_s and (made := coarser(source, step)) is not None:
                out.append(made)
    return out


class Sampler:
    """Random mixed batches of windows from ``sources``, weighted by the square root of size."""

    def __init__(
        self,
        sources: Sequence[Source],
        context: int,
        horizon: int,
        *,
        seed: int = 0,
        short_p: float = 0.15,
        no_neighbours_p: float = 0.3,
        per_batch: int = 4,
    ) -> None:
        self.sources = list(sources)
        self.context = context
        self.horizon = horizon
        self.short_p = short_p
        self.no_neighbours_p = no_neighbours_p
        self.per_batch = per_batch
        self._rng = np.random.default_rng(seed)
        sizes = np.array([max(s.n_windows, 1) for s in self.sources], dtype=np.float64)
        self._p = np.sqrt(sizes) / np.sqrt(sizes).sum()
        self._padded = [_pad(s.values, context, horizon) for s in self.sources]
        self._stats = [rolling_stats(s.values, context) for s in self.sources]

    def batch(self, size: int) -> Batch:
        """``size`` windows from ``per_batch`` sources drawn by weight."""
        picks = self._rng.choice(len(self.sources), self.per_batch, p=self._p)
        shares = np.full(self.per_batch, size // self.per_batch)
        shares[: size % self.per_batch] += 1
        parts = [self.windows(int(i), int(n)) for i, n in zip(picks, shares, strict=True)]
        return Batch(*(np.concatenate(arrays) for arrays in zip(*_fields(parts), strict=True)))

    def windows(self, which: int, size: int) -> Batch:
        """``size`` valid windows of source ``which`` (drawn again until enough are valid)."""
        got: list[Batch] = []
        needed = size
        for _ in range(20):
            drawn = self._draw(which, 2 * needed)
            got.append(drawn)
            needed -= len(drawn)
            if needed <= 0:
                break
        merged = Batch(*(np.concatenate(a) for a in zip(*_fields(got), strict=True)))
        return Batch(*(a[:size] for a in _fields([merged])[0]))

    def _draw(self, which: int, size: int) -> Batch:
        source, padded_values = self.sources[which], self._padded[which]
        rng, c = self._rng, self.context
        steps, n_sensors = source.values.shape
        ends = rng.integers(MIN_CONTEXT - 1, steps - 1, size)  # t; targets t+1..t+h
        sensors = rng.integers(0, n_sensors, size)
        series = contexts(padded_values, ends, sensors, c + self.horizon)  # to t + h
        context, target = self._shorten(series[:, :c]), series[:, c:]
        ok = (
            ~np.isnan(context[:, -1])
            & ((~np.isnan(context)).sum(axis=1) >= MIN_CONTEXT)
            & (~np.isnan(target)).any(axis=1)
        )
        ends, sensors = ends[ok], sensors[ok]
        neighbours = self._neighbours(which, ends, sensors)
        last_ts = source.start_s + ends * source.step_s
        return Batch(
            context[ok],
            np.full((len(ends), 1), source.step_s, dtype=np.float32),
            calendar(last_ts, source.calendar),
            neighbours,
            target[ok],
        )

    def _shorten(self, context: Float32Array) -> Float32Array:
        """Some contexts cut to their last 12 to C - 1 readings, as a new sensor's would be."""
        short = self._rng.random(len(context)) < self.short_p
        keep = self._rng.integers(MIN_CONTEXT, self.context, len(context))
        cut = short[:, None] & (np.arange(self.context)[None, :] < (self.context - keep)[:, None])
        return np.where(cut, np.float32(np.nan), context)

    def _neighbours(self, which: int, ends: IntArray, sensors: IntArray) -> Float32Array:
        """The neighbours' context, left out for some windows (as a sensor-keyed network's)."""
        source, c = self.sources[which], self.context
        index = source.neighbour_index[sensors]
        if index.shape[1]:
            dropped = self._rng.random(len(sensors)) < self.no_neighbours_p
            index = np.where(dropped[:, None], -1, index)
        mean, scale = self._stats[which]
        return fast_neighbour_contexts(
            self._padded[which], mean, scale, ends, c, index, source.neighbour_weight[sensors]
        )


def fast_neighbour_contexts(
    pad: Float32Array,
    mean: npt.NDArray[np.float64],
    scale: npt.NDArray[np.float64],
    ends: IntArray,
    context: int,
    index: IntArray,
    weight: Float32Array,
) -> Float32Array:
    """``offline.model_inputs.neighbour_contexts`` (``index`` and ``weight`` given per pair),
    with each neighbour's context statistics taken from ``rolling_stats`` instead of computed
    window by window: the same numbers, several times faster."""
    pairs, k = index.shape
    if k == 0 or pairs == 0:
        return np.full((pairs, context), np.nan, dtype=np.float32)
    real = index >= 0
    which, slot = np.nonzero(real)
    cols = index[which, slot]
    values = pad[ends[which, None] + np.arange(context), cols[:, None]]  # (R, C)
    at = ends[which]
    z = (values - mean[at, cols][:, None]) / scale[at, cols][:, None]
    z = np.clip(z, -Z_CLIP, Z_CLIP).astype(np.float32)
    w = weight[which, slot][:, None] * ~np.isnan(z)  # (R, C)
    total = np.zeros((pairs, context), dtype=np.float32)
    summed = np.zeros((pairs, context), dtype=np.float32)
    np.add.at(total, which, w)
    np.add.at(summed, which, np.nan_to_num(z) * w)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: Float32Array = summed / total
    out[total <= 0] = np.nan
    return out


def _pad(values: Float32Array, context: int, horizon: int) -> Float32Array:
    back = np.full((horizon + 1, values.shape[1]), np.nan, dtype=np.float32)
    return padded(np.concatenate([values.astype(np.float32), back]), context)


def _fields(parts: Sequence[Batch]) -> list[tuple[Float32Array, ...]]:
    return [(p.context, p.step_s, p.calendar, p.neighbours, p.target) for p in parts]


def sources_of(sets: Sequence[PretrainingSet], k: int = NEIGHBOURS) -> list[Source]:
    """Each set's pre-training part as a source, with its graph's ``k`` nearest neighbours
    (the given graph, else top-k correlations learned from that same part)."""
    out = []
    for pset in sets:
        part = pretraining_part(pset)
        index, weight = neighbours(pretraining_graph(pset, k), k)
        out.append(
            Source(
                pset.name,
                part.values[:, :, 0].astype(np.float32),
                int(part.start.timestamp()),
                part.step_s,
                pset.calendar,
                index,
                weight,
            )
        )
    return out
