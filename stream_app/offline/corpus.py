"""The pre-training corpus: every shared dataset as one cleaned series per sensor, with its graph.

``load_pretraining_set(name)`` reads one of ``PRETRAINING_SETS`` from ``shared/data`` and applies
what its ``SOURCE.md`` says: codes and structural zeros made missing, duplicated series merged,
series that never vary dropped. ``pretraining_part`` is the first 80 % of a set's time range,
the only part pre-training may fit or select on; ``manifest`` summarises sets for a model card.

ICU_VITALS is left out: its 300 patients each span 48 hours on their own clock (minutes since
admission), so on any regular grid a series is a few dozen steps, mostly gaps, shorter than the
day of context plus horizon a window needs, and without a calendar.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.forecasters import FloatArray, IntArray
from .dataset_files import DatasetError
from .datasets import GridDataset, load_dataset, shared_data_dir
from .graphs import SensorGraph, correlation_graph, knn_graph, load_graph, zone_graph

BoolArray = npt.NDArray[np.bool_]
Masker = Callable[[GridDataset, Path], BoolArray]  # (T, N) cells to make missing
GraphLoader = Callable[[Path, Sequence[str]], SensorGraph]

PRETRAINING_SHARE = 0.8  # the rest of every time range is never fitted or selected on
DUPLICATE_SHARE = 0.995  # equal in this share of the non-zero readings: one series twice
FILLED_RUN = 5  # days of one value at the series mean: an upstream fill (EU_WEATHER)
# Sunshine may exceed the formula's day length by refraction and a summit's low horizon
# (Sonnblick, 3106 m: up to 1.5 h); Oslo's impossible November values exceed it by 2.3 h or more.
SUN_MARGIN_H = 2.0


@dataclass(frozen=True, eq=False)
class PretrainingSet:
    """One dataset ready for pre-training: a one-channel grid and, if given, its graph."""

    name: str
    dataset: GridDataset
    graph: SensorGraph | None  # aligned with dataset.sensors
    calendar: bool  # False: the timestamps are nominal (no real hour of day or weekday)
    domain: str
    notes: str
    dropped: dict[str, str] = field(default_factory=dict)  # sensor -> why
    masked_cells: int = 0  # readings the cleaning made missing


@dataclass(frozen=True)
class _Spec:
    path: str  # the data file, under the shared data directory
    channel: str | int
    domain: str
    notes: str
    calendar: bool = True
    graph: GraphLoader | None = None
    maskers: tuple[Masker, ...] = ()


def _zeros(data: GridDataset, folder: Path) -> BoolArray:
    return np.asarray(data.values[:, :, 0] == 0)


def _rows_at(*stamps: str) -> Masker:
    """Whole rows at these (local clock) times: the spring-forward hours stored as 0."""

    def mask(data: GridDataset, folder: Path) -> BoolArray:
        times = [int(datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()) for s in stamps]
        rows = np.isin(data.timestamps(), times)
        return np.broadcast_to(rows[:, None], data.values.shape[:2])

    return mask


def _electricity_gap(data: GridDataset, folder: Path) -> BoolArray:
    # hours 673..695: the same 25 clients read exactly 0 (2 zeros in the hours either side)
    out = np.zeros(data.values.shape[:2], dtype=np.bool_)
    out[673:696] = data.values[673:696, :, 0] == 0
    return out


# Plausible ranges of EU_WEATHER's variables in the file's own (unstated) units.
_EU_RANGES = {"cloud_cover": (0.0, 9.0), "pressure": (0.9, 1.1), "humidity": (0.0, 1.0),
              "sunshine": (0.0, 24.0), "global_radiation": (0.0, np.inf),
              "precipitation": (0.0, np.inf), "wind_speed": (0.0, np.inf),
              "wind_gust": (0.0, np.inf)}  # fmt: skip


def _eu_weather(data: GridDataset, folder: Path) -> BoolArray:
    """Out-of-range codes (-99, -0.099, 0.0003, -1.7), sunshine longer than the day (Oslo's
    24 h in November), and runs of five or more days at the series mean (upstream fills)."""
    values = data.values[:, :, 0]
    out = np.zeros(values.shape, dtype=np.bool_)
    latitude = _station_latitudes(folder / "original" / "all_stations.csv")
    day = _day_of_year(data.timestamps())
    for i, sensor in enumerate(data.sensors):
        station, variable = sensor.split("/")[-2:]
        low, high = _EU_RANGES.get(variable, (-np.inf, np.inf))
        col = values[:, i]
        out[:, i] = (col < low) | (col > high) | _filled_runs(col)
        if variable == "sunshine":
            out[:, i] |= col > day_length_h(latitude[station], day) + SUN_MARGIN_H
    return out


def _filled_runs(col: FloatArray) -> BoolArray:
    """Cells in runs of ``FILLED_RUN`` or more equal values within 0.1 std of the mean."""
    start = np.r_[True, col[1:] != col[:-1]]
    run = np.cumsum(start)
    long_run = np.bincount(run)[run] >= FILLED_RUN
    return np.asarray(long_run & (np.abs(col - np.nanmean(col)) <= 0.1 * np.nanstd(col)))


def day_length_h(latitude_deg: float, day_of_year: FloatArray) -> FloatArray:
    """Hours from sunrise to sunset (Cooper's declination; no refraction)."""
    declination = np.radians(23.44) * np.sin(2 * np.pi * (284 + day_of_year) / 365)
    cos_hour = -np.tan(np.radians(latitude_deg)) * np.tan(declination)
    return np.asarray(24 / np.pi * np.arccos(np.clip(cos_hour, -1.0, 1.0)), dtype=np.float64)


def _day_of_year(epoch_s: npt.NDArray[np.int64]) -> FloatArray:
    days = epoch_s.astype("datetime64[s]").astype("datetime64[D]")
    return np.asarray((days - days.astype("datetime64[Y]")).astype(np.float64) + 1)


def _station_latitudes(file: Path) -> dict[str, float]:
    """``Name,lat,...`` with latitudes as ``+59:56:32``, in degrees."""
    with file.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        d, m, s = (float(part) for part in row["lat"].lstrip("+-").split(":"))
        out[row["Name"]] = (-1 if row["lat"].startswith("-") else 1) * (d + m / 60 + s / 3600)
    return out


def _link(name: str) -> GraphLoader:
    return lambda folder, sensors: load_graph(folder / name, sensors)


_TRAFFIC = "first {} steps of the ASTGCN benchmark; zero flow is a missing reading (SOURCE.md)"
_LOCAL = "local clock time labelled UTC"
_SPECS: dict[str, _Spec] = {
    "PEMS08": _Spec("PEMS08/PEMS08.npz", "flow", "traffic flow", _TRAFFIC.format(1282),
                    graph=_link("PEMS08.csv"), maskers=(_zeros,)),
    "PEMS04": _Spec("PEMS04/PEMS04.npz", "flow", "traffic flow", _TRAFFIC.format(694),
                    graph=_link("PEMS04.csv"), maskers=(_zeros,)),
    "LOS_LOOP": _Spec("LOS_LOOP/los_speed.csv", "speed", "traffic speed",
                      "one week of METR-LA, gaps interpolated upstream (T-GCN)",
                      graph=_link("los_adj.csv")),
    "SZ_TAXI": _Spec("SZ_TAXI/SZ_taxi.npz", "speed", "traffic speed",
                     "24.8 % zeros (no taxi passed) kept, as the tgcn protocol scores them",
                     graph=_link("SZ_taxi_adj.csv")),
    "BEIJING_AIR": _Spec("corpus/BEIJING_AIR/wide.csv", 0, "air quality and weather",
                         f"{_LOCAL} (UTC+8); weather shared by stations kept once"),
    "AIR_ITALY": _Spec("corpus/AIR_ITALY/wide.csv", 0, "air-quality sensor array",
                       f"{_LOCAL}; -200 is already empty; NMHC(GT) only in the first 914 h"),
    "BIKE_DC": _Spec("corpus/BIKE_DC/wide.csv", 0, "bike rentals",
                     f"{_LOCAL} (US Eastern); the 165 absent hours stay missing"),
    "NYC_MOBILITY": _Spec("corpus/NYC_MOBILITY/wide.csv", 0, "taxi and bike trips",
                          f"{_LOCAL} (US Eastern); spring-forward zero rows made missing",
                          graph=lambda folder, s: zone_graph(folder / "adjacency.csv", s),
                          maskers=(_rows_at("2019-03-10T02:00", "2020-03-08T02:00"),)),
    "MELBOURNE_PEDESTRIANS": _Spec(
        "corpus/MELBOURNE_PEDESTRIANS/wide.csv", 0, "pedestrian counts",
        f"{_LOCAL} (AEST/AEDT); -1 already empty; spring-forward zero rows made missing; "
        "graph: 4 nearest counters", graph=lambda folder, s: knn_graph(folder / "stations.csv", s),
        maskers=(_rows_at("2021-10-03T02:00", "2022-10-02T02:00"),)),
    "ELECTRICITY_321": _Spec("corpus/ELECTRICITY_321/wide.csv", 0, "electricity consumption",
                             "nominal dates: no real hour of day or weekday; the 23-hour "
                             "recording gap of 25 clients made missing",
                             calendar=False, maskers=(_electricity_gap,)),
    "WIND": _Spec("corpus/WIND/wide.csv", 0, "wind power",
                  "measured wind speed and farm output; clock zone undocumented"),
    "EU_WEATHER": _Spec("corpus/EU_WEATHER/wide.csv", 0, "weather (daily)",
                        "impossible values and upstream mean-fills made missing",
                        maskers=(_eu_weather,)),
}  # fmt: skip
PRETRAINING_SETS = tuple(_SPECS)


def load_pretraining_set(name: str, data_dir: str | Path | None = None) -> PretrainingSet:
    """One of ``PRETRAINING_SETS`` (any case), cleaned, from ``data_dir`` (default
    ``shared_data_dir()``)."""
    key, file = name.upper(), data_file(name, data_dir)
    spec = _SPECS[key]
    raw = load_dataset(file)
    channel = raw.channel_index(spec.channel)
    data = _grid(raw, raw.values[:, :, channel], raw.sensors, raw.channels[channel])
    graph = spec.graph(file.parent, data.sensors) if spec.graph else None
    values = data.values[:, :, 0].copy()
    masked = np.zeros(values.shape, dtype=np.bool_)
    for masker in spec.maskers:
        masked |= masker(data, file.parent) & ~np.isnan(values)
    values[masked] = np.nan
    keep, dropped = _distinct_series(values, data.sensors)
    cleaned = _grid(data, values[:, keep], tuple(data.sensors[i] for i in keep))
    return PretrainingSet(
        key, cleaned, None if graph is None else graph.subset(keep), spec.calendar,
        spec.domain, spec.notes, dropped, int(masked[:, keep].sum()),
    )  # fmt: skip


def data_file(name: str, data_dir: str | Path | None = None) -> Path:
    """The data file of one of ``PRETRAINING_SETS`` (any case) under ``data_dir``."""
    key = name.upper()
    if key not in _SPECS:
        raise DatasetError(f"unknown pre-training set {name!r}: expected one of {PRETRAINING_SETS}")
    return _data_dir(data_dir) / _SPECS[key].path


def load_pretraining_sets(
    names: Sequence[str] = PRETRAINING_SETS, data_dir: str | Path | None = None
) -> list[PretrainingSet]:
    """Several sets, in the order given."""
    return [load_pretraining_set(name, data_dir) for name in names]


def pretraining_steps(n_steps: int) -> int:
    """How many leading steps of a time range pre-training may use (the first 80 %)."""
    return int(n_steps * PRETRAINING_SHARE)


def pretraining_part(pset: PretrainingSet) -> GridDataset:
    """The chronological pre-training part: the first 80 % of the set's steps."""
    data = pset.dataset
    return _grid(data, data.values[: pretraining_steps(data.n_steps), :, 0], data.sensors)


def pretraining_graph(pset: PretrainingSet, k: int = 8) -> SensorGraph:
    """The given graph, else one learned from the pre-training part's correlations."""
    if pset.graph is not None:
        return pset.graph
    return correlation_graph(pretraining_part(pset).values[:, :, 0], k)


def manifest(sets: Sequence[PretrainingSet]) -> list[dict[str, Any]]:
    """Per set: what it is, its grid and time range, the steps pre-training used (JSON-ready)."""
    return [_summary(pset) for pset in sets]


def _summary(pset: PretrainingSet) -> dict[str, Any]:
    data = pset.dataset
    times = data.timestamps()
    used = pretraining_steps(data.n_steps)
    return {
        "name": pset.name,
        "domain": pset.domain,
        "step_s": data.step_s,
        "sensors": data.n_sensors,
        "start": _rfc3339(int(times[0])),
        "end": _rfc3339(int(times[-1])),
        "steps": data.n_steps,
        "train_steps": used,
        "train_end": _rfc3339(int(times[used - 1])),
        "train_readings": int(np.isfinite(data.values[:used]).sum()),
        "calendar": pset.calendar,
        "graph": None if pset.graph is None else pset.graph.source,
        "dropped_series": len(pset.dropped),
        "masked_cells": pset.masked_cells,
    }


def _rfc3339(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _data_dir(data_dir: str | Path | None) -> Path:
    found = data_dir if data_dir is not None else shared_data_dir()
    if found is None:
        raise DatasetError("shared/data not found beside the repository: pass data_dir")
    return Path(found)


def _grid(
    data: GridDataset, values: FloatArray, sensors: tuple[str, ...], channel: str | None = None
) -> GridDataset:
    """``data``'s grid with other (T, N) values and sensors, as one channel."""
    grid = np.ascontiguousarray(values, dtype=np.float64)[:, :, None]
    name = channel if channel is not None else data.channels[0]
    return GridDataset(data.name, grid, data.start, data.step_s, sensors, (name,))


def _distinct_series(
    values: FloatArray, sensors: Sequence[str]
) -> tuple[list[int], dict[str, str]]:
    """The series to keep, and why each other was dropped; a duplicate's readings fill the
    gaps of the copy that is kept (in place)."""
    dropped: dict[str, str] = {}
    for copy, kept in _duplicates(values, sensors).items():
        gaps = np.isnan(values[:, kept])
        values[gaps, kept] = values[gaps, copy]
        dropped[sensors[copy]] = f"duplicate of {sensors[kept]}"
    for i, sensor in enumerate(sensors):
        readings = values[:, i][~np.isnan(values[:, i])]
        if sensor not in dropped and (readings.size == 0 or np.ptp(readings) == 0):
            dropped[sensor] = "never varies" if readings.size else "no readings"
    return [i for i, s in enumerate(sensors) if s not in dropped], dropped


def _duplicates(values: FloatArray, sensors: Sequence[str]) -> dict[int, int]:
    """Series equal to an earlier series of the same variable (``site/variable``) in at least
    ``DUPLICATE_SHARE`` of the hours where both are present and either is non-zero (so two
    mostly-zero rain gauges do not count), mapped to that earlier series."""
    groups: dict[str, list[int]] = {}
    for i, sensor in enumerate(sensors):
        groups.setdefault(sensor.rsplit("/", 1)[-1], []).append(i)
    twin: dict[int, int] = {}
    for members in groups.values():
        for pos, first in enumerate(members):
            rest = [m for m in members[pos + 1 :] if m not in twin]
            if first in twin or not rest:
                continue
            # a cheap pass on every 16th row first: most pairs are plainly different
            n, equal = _agreement(values[::16], first, rest)
            near = [m for m, a, b in zip(rest, n, equal, strict=True) if b >= 0.9 * a]
            n, equal = _agreement(values, first, near)
            pairs = zip(near, n, equal, strict=True)
            twin.update({m: first for m, a, b in pairs if a >= 10 and b >= DUPLICATE_SHARE * a})
    return twin


def _agreement(values: FloatArray, first: int, others: list[int]) -> tuple[IntArray, IntArray]:
    """For each of ``others`` against ``first``: the rows where both are present and either
    is non-zero, and how many of them are equal."""
    x, y = values[:, [first]], values[:, others]
    counted = ~np.isnan(x) & ~np.isnan(y) & ((x != 0) | (y != 0))
    return counted.sum(axis=0), ((x == y) & counted).sum(axis=0)
