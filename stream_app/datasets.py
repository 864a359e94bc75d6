"""Datasets as regular grids: T steps by N sensors by F channels, with a start time and a step.

Reads PEMS-style ``.npz`` arrays, wide CSV (a row per time, a column per sensor) and long CSV
(``sensor,ts,value``). Start and step come from the arguments, else from the data's own times,
else from ``stcast.json`` beside the data, else from a table of the shared reference datasets.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

METADATA_FILE = "stcast.json"
TIME_COLUMNS = ("ts", "time", "timestamp", "date")
LONG_HEADER = ("sensor", "ts", "value")
_DATA_SUFFIXES = (".npz", ".csv")


class DatasetError(ValueError):
    """The data cannot be read as a grid; the message says what to add or change."""


@dataclass(frozen=True, eq=False)
class GridDataset:
    """A regular grid of readings: ``values`` is (T, N, F) float64, NaN where missing."""

    name: str
    values: npt.NDArray[np.float64]
    start: datetime
    step_s: int
    sensors: tuple[str, ...]
    channels: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.values.ndim != 3 or self.values.dtype != np.float64:
            raise DatasetError(f"values must be (T, N, F) float64, got {self.values.shape}")
        if (len(self.sensors), len(self.channels)) != self.values.shape[1:]:
            raise DatasetError("sensors and channels must match the values' N and F axes")
        if self.start.utcoffset() is None or self.step_s <= 0:
            raise DatasetError("start must be timezone-aware and step_s positive")

    @property
    def n_steps(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_sensors(self) -> int:
        return int(self.values.shape[1])

    def timestamps(self) -> npt.NDArray[np.int64]:
        """Epoch seconds of every step, shape (T,)."""
        first = int(self.start.timestamp())
        return first + self.step_s * np.arange(self.n_steps, dtype=np.int64)

    def channel_index(self, channel: str | int) -> int:
        """The index of a channel given by name or index."""
        if isinstance(channel, int) and 0 <= channel < len(self.channels):
            return channel
        if isinstance(channel, str) and channel in self.channels:
            return self.channels.index(channel)
        raise DatasetError(f"{self.name} has no channel {channel!r}; it has {self.channels}")


@dataclass(frozen=True)
class _Meta:
    name: str | None = None
    start: datetime | None = None
    step_s: int | None = None
    channels: tuple[str, ...] | None = None

    def over(self, fallback: _Meta) -> _Meta:
        """Fields of self, or of ``fallback`` where self has none."""
        pick = [
            a if a is not None else b for a, b in zip(_fields(self), _fields(fallback), strict=True)
        ]
        return _Meta(*pick)


def _fields(meta: _Meta) -> tuple[Any, ...]:
    return meta.name, meta.start, meta.step_s, meta.channels


def _builtin(file_name: str) -> _Meta:
    """What the shared reference datasets' SOURCE.md files say about their grids."""
    pems = ("flow", "occupancy", "speed")
    table = {
        "PEMS08.npz": _Meta("pems08", datetime(2016, 7, 1, tzinfo=UTC), 300, pems),
        "PEMS04.npz": _Meta("pems04", datetime(2018, 1, 1, tzinfo=UTC), 300, pems),
        "los_speed.csv": _Meta("los_loop", datetime(2012, 3, 1, tzinfo=UTC), 300, ("speed",)),
        "SZ_taxi.npz": _Meta("sz_taxi", datetime(2015, 1, 1, tzinfo=UTC), 900, ("speed",)),
    }
    return table.get(file_name, _Meta())


def load_dataset(
    path: str | Path,
    *,
    start: datetime | None = None,
    step_s: int | None = None,
    name: str | None = None,
) -> GridDataset:
    """Load a data file, or the one data file in a directory, as a ``GridDataset``."""
    file = _data_file(Path(path))
    values, sensor_ids, found = _read(file)
    meta = _Meta(name, start, step_s).over(found).over(_sidecar(file)).over(_builtin(file.name))
    _check_agrees(found, start, step_s)
    if meta.start is None or meta.step_s is None:
        raise DatasetError(
            f"{file}: no start time or step known; pass --start (RFC 3339, e.g. "
            f'2016-07-01T00:00:00Z) and --step-s, or add "start" and "step_s" to '
            f"{file.parent / METADATA_FILE}"
        )
    n_channels = values.shape[2]
    channels = meta.channels or (("value",) if n_channels == 1 else _numbered(n_channels))
    net = meta.name or file.stem.lower()
    return GridDataset(
        net, values, meta.start, meta.step_s, tuple(f"{net}/{s}" for s in sensor_ids), channels
    )


def bundled_dataset_path() -> Path:
    """The PEMS08 slice shipped inside the package."""
    return Path(__file__).parent / "data" / "PEMS08" / "PEMS08.npz"


def shared_data_dir() -> Path | None:
    """The shared reference data (``shared/data`` beside or inside the repository), if present."""
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo.parent / "shared" / "data", repo / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def _numbered(n: int) -> tuple[str, ...]:
    return tuple(f"channel{i}" for i in range(n))


def _check_agrees(found: _Meta, start: datetime | None, step_s: int | None) -> None:
    if start is not None and found.start is not None and start != found.start:
        raise DatasetError(f"--start {start.isoformat()} contradicts the data's own times")
    if step_s is not None and found.step_s is not None and step_s != found.step_s:
        raise DatasetError(f"--step-s {step_s} contradicts the data's step of {found.step_s} s")


def _data_file(path: Path) -> Path:
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.suffix in _DATA_SUFFIXES and _is_data(p))
    if len(found) != 1:
        names = [p.name for p in found] or "none"
        raise DatasetError(f"{path} must hold exactly one data file (found {names}); name one")
    return found[0]


def _is_data(path: Path) -> bool:
    """False for sensor graphs, adjacency matrices and sensor location tables."""
    if "adj" in path.stem.lower():
        return False
    if path.suffix == ".npz":
        with np.load(path) as archive:
            return "data" in archive.files
    header = {h.strip().lower() for h in _header(path)}
    return not ({"from", "to"} <= header or {"latitude", "longitude"} <= header)


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def _sidecar(file: Path) -> _Meta:
    meta_path = file.parent / METADATA_FILE
    if not meta_path.exists():
        return _Meta()
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
        start = datetime.fromisoformat(raw["start"]) if "start" in raw else None
    except ValueError as exc:
        raise DatasetError(f"{meta_path}: {exc}") from exc
    channels = tuple(raw["channels"]) if "channels" in raw else None
    step = int(raw["step_s"]) if "step_s" in raw else None
    return _Meta(raw.get("name"), None if start is None else _utc(start), step, channels)


def _read(file: Path) -> tuple[npt.NDArray[np.float64], list[str], _Meta]:
    """The (T, N, F) values, the source's sensor ids, and what the file says of its own times."""
    if file.suffix == ".npz":
        return _read_npz(file)
    if file.suffix == ".csv":
        rows = _csv_rows(file)
        header = [h.strip() for h in rows[0]]
        if tuple(h.lower() for h in header) == LONG_HEADER:
            return _read_long(rows[1:], file)
        return _read_wide(header, rows[1:], file)
    raise DatasetError(f"{file}: unknown format; use .npz (key 'data') or .csv")


def _read_npz(file: Path) -> tuple[npt.NDArray[np.float64], list[str], _Meta]:
    with np.load(file) as archive:
        if "data" not in archive.files:
            raise DatasetError(f"{file}: no array named 'data' (found {archive.files})")
        values = np.asarray(archive["data"], dtype=np.float64)
    if values.ndim == 2:
        values = values[:, :, np.newaxis]
    if values.ndim != 3:
        raise DatasetError(f"{file}: 'data' must be (T, N) or (T, N, F), got {values.shape}")
    return values, [str(i) for i in range(values.shape[1])], _Meta()


def _csv_rows(file: Path) -> list[list[str]]:
    with file.open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row]
    if len(rows) < 2:
        raise DatasetError(f"{file}: a header row and at least one data row are needed")
    return rows


def _read_wide(
    header: list[str], rows: list[list[str]], file: Path
) -> tuple[npt.NDArray[np.float64], list[str], _Meta]:
    has_time = header[0].lower() in TIME_COLUMNS
    if any(len(row) != len(header) for row in rows):
        raise DatasetError(f"{file}: every row must have {len(header)} cells, like the header")
    cells = np.array(rows, dtype=object)
    values = _floats(cells[:, 1:] if has_time else cells, file)
    sensors = header[1:] if has_time else header
    if not has_time:
        return values[:, :, np.newaxis], sensors, _Meta()
    times_ms = np.array([_parse_ts(str(c), file) for c in cells[:, 0]], dtype=np.int64)
    index, meta = _regular_axis(times_ms, file)
    grid = np.full((int(index[-1]) + 1, len(sensors)), np.nan)
    grid[index] = values
    return grid[:, :, np.newaxis], sensors, meta


def _read_long(
    rows: list[list[str]], file: Path
) -> tuple[npt.NDArray[np.float64], list[str], _Meta]:
    if any(len(row) != 3 for row in rows):
        raise DatasetError(f"{file}: every row of a long CSV must be sensor,ts,value")
    sensor_pos: dict[str, int] = {}
    columns = np.array([sensor_pos.setdefault(row[0].strip(), len(sensor_pos)) for row in rows])
    times_ms = np.array([_parse_ts(row[1], file) for row in rows], dtype=np.int64)
    values = _floats(np.array([row[2] for row in rows], dtype=object), file)
    index, meta = _regular_axis(times_ms, file)
    grid = np.full((int(index.max()) + 1, len(sensor_pos)), np.nan)
    grid[index, columns] = values
    return grid[:, :, np.newaxis], list(sensor_pos), meta


def _regular_axis(
    times_ms: npt.NDArray[np.int64], file: Path
) -> tuple[npt.NDArray[np.int64], _Meta]:
    """Each time's step index on the grid, and the grid's start and step (the commonest gap)."""
    distinct = np.unique(times_ms)
    if len(distinct) < 2:
        raise DatasetError(f"{file}: at least two distinct times are needed to find the step")
    step_ms = Counter(np.diff(distinct).tolist()).most_common(1)[0][0]
    offsets = times_ms - distinct[0]
    if step_ms % 1000 or np.any(offsets % step_ms):
        raise DatasetError(f"{file}: times are not on a regular grid of {step_ms} ms")
    start = datetime.fromtimestamp(int(distinct[0]) / 1000, tz=UTC)
    return offsets // step_ms, _Meta(start=start, step_s=int(step_ms // 1000))


def _floats(cells: npt.NDArray[Any], file: Path) -> npt.NDArray[np.float64]:
    # an empty cell is a missing reading
    filled = np.where(cells == "", "nan", cells)
    try:
        return filled.astype(np.float64)
    except ValueError as exc:
        raise DatasetError(f"{file}: a value is not a number ({exc})") from exc


def _parse_ts(text: str, file: Path) -> int:
    """Epoch milliseconds of an RFC 3339 time with offset, or of an integer epoch-ms string."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise DatasetError(f"{file}: {text!r} is neither RFC 3339 nor epoch ms") from exc
    if parsed.utcoffset() is None:
        raise DatasetError(f"{file}: time {text!r} has no UTC offset; add one, e.g. 'Z'")
    return round(parsed.timestamp() * 1000)


def _utc(moment: datetime) -> datetime:
    if moment.utcoffset() is None:
        raise DatasetError(f"{METADATA_FILE}: start {moment.isoformat()} needs a UTC offset")
    return moment.astimezone(UTC)
