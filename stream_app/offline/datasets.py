"""Datasets as regular grids: T steps by N sensors by F channels, with a start time and a step.

Reads PEMS-style ``.npz`` arrays and ``.npy`` arrays, wide CSV (a row per time, a column per
sensor), long CSV or Parquet (``sensor,ts,value``; Parquet needs pyarrow) and pandas frames in
HDF5: see ``dataset_files``. Start and step come from the arguments, else from the data's own
times, else from ``stcast.json`` beside the data (which may also say that an array is stored
sensors first), else from a table of the shared reference datasets.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from .dataset_files import (
    DATA_SUFFIXES,
    EPOCH,
    DatasetError,
    data_suffix,
    file_stem,
    is_data_file,
    read_grid,
    side_by_side,
)

log = logging.getLogger(__name__)

METADATA_FILE = "stcast.json"
# File names that say nothing of the network (the corpus's ``wide.csv``): its folder names it.
GENERIC_STEMS = ("wide", "long", "data")
PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"  # stream_app/data


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

    def target_steps(self, first: int, stop: int) -> GridDataset:
        """Steps ``first`` to ``stop`` (exclusive) of the first channel, the one forecast: what a
        retrain reads of a stream (a copy, with its own start)."""
        return replace(
            self,
            values=self.values[first:stop, :, :1].copy(),
            start=self.start + timedelta(seconds=first * self.step_s),
            channels=self.channels[:1],
        )

    def forecasting(self, channel: str | int) -> GridDataset:
        """The same grid with ``channel`` (a name or an index) first: the one every model and
        baseline forecasts; the others follow in their order."""
        first = self.channel_index(channel)
        if first == 0:
            return self
        order = [first, *(i for i in range(len(self.channels)) if i != first)]
        return replace(
            self, values=self.values[:, :, order], channels=tuple(self.channels[i] for i in order)
        )

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
    missing: tuple[float, ...] | None = None
    sensors_first: bool | None = None  # an array stored (N, T[, F]), as transdim's are

    def over(self, fallback: _Meta) -> _Meta:
        """Fields of self, or of ``fallback`` where self has none."""
        pick = [
            a if a is not None else b for a, b in zip(_fields(self), _fields(fallback), strict=True)
        ]
        return _Meta(*pick)


def _fields(meta: _Meta) -> tuple[Any, ...]:
    return meta.name, meta.start, meta.step_s, meta.channels, meta.missing, meta.sensors_first


def _builtin(file_name: str) -> _Meta:
    """What the shared reference datasets' SOURCE.md files say about their grids, and the
    published start of their PEMS siblings."""
    pems = ("flow", "occupancy", "speed")
    table = {
        "PEMS08.npz": _Meta("pems08", datetime(2016, 7, 1, tzinfo=UTC), 300, pems),
        "PEMS04.npz": _Meta("pems04", datetime(2018, 1, 1, tzinfo=UTC), 300, pems),
        "los_speed.csv": _Meta("los_loop", datetime(2012, 3, 1, tzinfo=UTC), 300, ("speed",)),
        "SZ_taxi.npz": _Meta("sz_taxi", datetime(2015, 1, 1, tzinfo=UTC), 900, ("speed",)),
        # their siblings, as the literature ships them (ASTGCN, STSGCN): flows from these days
        "PEMS03.npz": _Meta("pems03", datetime(2018, 9, 1, tzinfo=UTC), 300, ("flow",)),
        "PEMS07.npz": _Meta("pems07", datetime(2017, 5, 1, tzinfo=UTC), 300, ("flow",)),
    }
    return table.get(file_name, _Meta())


def load_dataset(
    path: str | Path,
    *,
    start: datetime | None = None,
    step_s: int | None = None,
    name: str | None = None,
    missing: Sequence[float] = (),
) -> GridDataset:
    """Load a data file, or the data files in a directory (several: side by side, a file per
    sensor or station, ``dataset_files.side_by_side``), as a ``GridDataset``. Readings
    equal to a ``missing`` code (the UCI air file's -200, a weather service's -9999), or to one
    the file's ``stcast.json`` names, are missing readings. A ``.zip`` is read as the folder
    it holds (``_unpacked``)."""
    if Path(path).suffix.lower() == ".zip":
        with _unpacked(Path(path)) as folder:
            return load_dataset(folder, start=start, step_s=step_s, name=name, missing=missing)
    files = _data_files(Path(path))
    start = None if start is None else _utc(start)
    sidecar = _sidecar(files[0])  # the stcast.json of the file's folder, or the directory's
    bin_s = step_s or sidecar.step_s  # for times on no grid
    if len(files) == 1:
        file, grid = files[0], read_grid(files[0], bin_s=bin_s)
    else:  # a file per sensor or station; named, and its stcast.json found, as a file "data" there
        file, grid = Path(path) / "data", side_by_side(files, bin_s=bin_s)
    values, sensor_ids = grid.values, grid.sensor_ids
    named = tuple(grid.channels) if grid.channels else None
    found = _Meta(grid.name, grid.start, grid.step_s, named)
    if grid.elapsed is not None and grid.start is not None:  # counted from the moment named
        origin = start or sidecar.start
        if origin is None:
            raise DatasetError(
                f"{file}: its times are {grid.elapsed!r} elapsed since a moment it does not "
                "say; pass --start with that moment (RFC 3339, e.g. 2016-07-01T00:00:00Z), or "
                f'add "start" to {file.parent / METADATA_FILE}'
            )
        found = replace(found, start=origin + (grid.start - EPOCH))
        start = None  # the moment the times count from, not the first reading's
    if sidecar.sensors_first:
        if file.suffix not in (".npz", ".npy"):
            raise DatasetError(f"{file}: sensors_first applies to arrays (.npz, .npy) only")
        values = values.transpose(1, 0, 2)
        sensor_ids = [str(i) for i in range(values.shape[1])]
    _check_agrees(found, start)
    # the grid the data is on: its own times, else stcast.json, else the shared table; the
    # start a flag gives is its first reading's (times the data does not say)
    builtin = _builtin(file.name)  # its channels only where the file has as many
    if builtin.channels and len(builtin.channels) != values.shape[2]:
        builtin = replace(builtin, channels=None)
    native = _Meta(None, start).over(found).over(sidecar).over(builtin)
    codes = [*missing, *(sidecar.missing or ())]
    values = np.where(np.isinf(values), np.nan, values)  # ``inf`` (or 1e999) is no reading
    if codes:
        values = np.where(np.isin(values, codes), np.nan, values)
    else:
        values = _without_missing_codes(values, file)
    if step_s not in (None, native.step_s) and native.step_s and native.start is not None:
        values, native = _averaged(values, native, step_s, file)  # a coarser step
    meta = _Meta(name, None, step_s).over(native)
    if meta.start is None or meta.step_s is None:
        raise DatasetError(
            f"{file}: no start time or step known; pass --start (RFC 3339, e.g. "
            f'2016-07-01T00:00:00Z) and --dataset-step-s, or add "start" and "step_s" to '
            f"{file.parent / METADATA_FILE}"
        )
    n_channels = values.shape[2]
    channels = meta.channels or (("value",) if n_channels == 1 else _numbered(n_channels))
    if file.suffix in (".npz", ".npy") and sensor_ids == [str(i) for i in range(len(sensor_ids))]:
        sensor_ids = _listed_ids(file, len(sensor_ids)) or sensor_ids
    net = meta.name or _default_name(file)
    sensors = tuple(s if s.startswith(f"{net}/") else f"{net}/{s}" for s in sensor_ids)
    return GridDataset(net, values, meta.start, meta.step_s, sensors, channels)


# Codes archives and loggers write for a missing reading: the UCI air file's -200, weather
# services' -99, -999 and -9999, and -1 among counts (the UCTB pedestrian counts)
MISSING_CODES = (-1.0, -99.0, -99.9, -200.0, -999.0, -999.9, -9999.0, -99999.0)


def _without_missing_codes(values: npt.NDArray[np.float64], file: Path) -> npt.NDArray[np.float64]:
    """``values`` with a missing code made NaN where the data shows one: a column's least
    reading is one of ``MISSING_CODES`` and far below all its other readings (above half the
    code: -200 among readings above -100; -1 among counts, whole numbers from 0 up to 10 or
    more), and the
    code is written at least twice in such columns (once in a column is enough then: UCTB's
    lone -1 among a pedestrian counter's hours). Named in a warning; codes the user names
    replace this guess."""
    least = np.where(np.isnan(values), np.inf, values).min(axis=0)  # (N, F)
    coded: dict[float, list[tuple[int, int]]] = {}
    for n, f in np.argwhere(np.isin(least, MISSING_CODES)):
        column, code = values[:, n, f], float(least[n, f])
        rest = column[(column != code) & ~np.isnan(column)]
        if code == -1.0:  # counts that reach 10 (not a -1/0/1 state)
            whole = bool(np.all(rest >= 0) and np.all(rest == np.round(rest)))
            apart = whole and rest.size > 0 and float(rest.max()) >= 10
        else:
            apart = rest.size == 0 or float(rest.min()) > code / 2
        if apart:
            coded.setdefault(code, []).append((int(n), int(f)))
    cleaned = values
    for code, columns in coded.items():
        n, f = np.array(columns).T
        count = int((values[:, n, f] == code).sum())
        if count < 2:
            continue
        cleaned = cleaned.copy() if cleaned is values else cleaned
        cleaned[:, n, f] = np.where(values[:, n, f] == code, np.nan, values[:, n, f])
        log.warning(
            "%s: %d readings of %g read as missing: a missing code (the least reading of its "
            "columns, far below their others); name the codes with --missing-value to say "
            "otherwise", file, count, code,
        )  # fmt: skip
    return cleaned


def _listed_ids(file: Path, n: int) -> list[str] | None:
    """An array's sensor ids from ``<name>.txt`` beside it, one per line (PEMS03 ships its
    detectors' ids so, and its graph names them), where it lists exactly ``n``."""
    listing = file.with_suffix(".txt")
    if not listing.is_file():
        return None
    ids = [
        line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    if len(ids) != n or len(set(ids)) != n or any(len(i.split()) != 1 for i in ids):
        return None
    return ids


def bundled_dataset_path() -> Path:
    """The PEMS08 slice shipped inside the package."""
    return PACKAGE_DATA / "PEMS08" / "PEMS08.npz"


def shared_data_dir() -> Path | None:
    """The shared reference data (``shared/data`` beside or inside the repository), if present."""
    repo = PACKAGE_DATA.parents[1]
    for candidate in (repo.parent / "shared" / "data", repo / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def _default_name(file: Path) -> str:
    """``PEMS08.npz`` -> ``pems08``; ``BEIJING_AIR/wide.csv`` -> ``beijing_air``;
    ``flows.csv.gz`` -> ``flows``."""
    stem = file_stem(file).lower()
    return file.parent.name.lower() if stem in GENERIC_STEMS and file.parent.name else stem


def _numbered(n: int) -> tuple[str, ...]:
    return tuple(f"channel{i}" for i in range(n))


def _averaged(
    values: npt.NDArray[np.float64], native: _Meta, step_s: int, file: Path
) -> tuple[npt.NDArray[np.float64], _Meta]:
    """``values`` averaged into the coarser ``step_s`` (a whole number of the data's steps),
    each slot the mean of the readings in it (missing where it has none), the slots on whole
    steps since the epoch (hours on the hour); and the grid's start and step."""
    fine, first = cast(int, native.step_s), cast(datetime, native.start)
    if step_s % fine:
        raise DatasetError(
            f"--dataset-step-s {step_s} is not a whole number of the data's steps of {fine} s: "
            "stcast averages readings into a coarser step, never a finer one"
        )
    k, epoch = step_s // fine, int(first.timestamp())
    lead = (epoch % step_s) // fine  # the data's steps before its first, in its first slot
    slots = -(-(lead + len(values)) // k)
    padded = np.full((slots * k, *values.shape[1:]), np.nan)
    padded[lead : lead + len(values)] = values
    blocks = padded.reshape(slots, k, *values.shape[1:])
    counts = (~np.isnan(blocks)).sum(axis=1)
    sums = np.nansum(blocks, axis=1)
    averaged = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    start = first - timedelta(seconds=lead * fine)
    log.warning(
        "%s: readings every %d s averaged into steps of %d s (%d readings a step)",
        file, fine, step_s, k,
    )  # fmt: skip
    return averaged, replace(native, start=start, step_s=step_s)


def _check_agrees(found: _Meta, start: datetime | None) -> None:
    if start is not None and found.start is not None and start != found.start:
        raise DatasetError(f"--start {start.isoformat()} contradicts the data's own times")


MAX_UNZIPPED = 4 << 30  # bytes a zip may unpack to: a larger one is refused (a zip bomb)


@contextmanager
def _unpacked(archive: Path) -> Iterator[Path]:
    """The files of a zip (as downloads ship data: the UCI and UCTB archives), unpacked into
    a temporary folder named like it, its inner folders flattened, with the ``stcast.json``
    beside the zip unless it holds its own; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="stcast-zip-") as scratch:
        folder = Path(scratch) / archive.name[: -len(archive.suffix)]
        folder.mkdir()
        try:
            _unzip(archive, folder)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"{archive}: not a zip stcast can read ({exc})") from None
        beside = archive.parent / METADATA_FILE
        if beside.exists() and not (folder / METADATA_FILE).exists():
            shutil.copyfile(beside, folder / METADATA_FILE)
        yield folder


def _unzip(archive: Path, folder: Path) -> None:
    """Each file of ``archive`` into ``folder`` under its own name (hidden files and macOS's
    ``__MACOSX`` left out)."""
    with zipfile.ZipFile(archive) as zipped:
        members = [
            m for m in zipped.infolist()
            if not m.is_dir() and not any(
                part.startswith((".", "__MACOSX")) for part in Path(m.filename).parts
            )
        ]  # fmt: skip
        names = [Path(m.filename).name for m in members]
        if len(set(names)) < len(names):
            raise DatasetError(f"{archive}: files of one name in several folders; unzip it")
        if sum(m.file_size for m in members) > MAX_UNZIPPED:
            raise DatasetError(f"{archive}: unpacks to more than {MAX_UNZIPPED >> 30} GiB")
        for member, name in zip(members, names, strict=True):
            with zipped.open(member) as source, (folder / name).open("wb") as out:
                shutil.copyfileobj(source, out)


def _data_files(path: Path) -> list[Path]:
    """The file, or the data files in a directory (graphs and location tables left out)."""
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    if path.is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if data_suffix(p) in DATA_SUFFIXES and is_data_file(p))
    if not found:
        raise DatasetError(f"{path} holds no data file ({', '.join(DATA_SUFFIXES)})")
    return found


def _sidecar(file: Path) -> _Meta:
    meta_path = file.parent / METADATA_FILE
    if not meta_path.exists():
        return _Meta()
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
        start = datetime.fromisoformat(raw["start"]) if "start" in raw else None
        codes = raw.get("missing")
        missing = None if codes is None else tuple(float(c) for c in _listed(codes))
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{meta_path}: {exc}") from exc
    channels = tuple(raw["channels"]) if "channels" in raw else None
    step = int(raw["step_s"]) if "step_s" in raw else None
    first = raw.get("sensors_first")
    if first is not None and not isinstance(first, bool):
        raise DatasetError(f"{meta_path}: sensors_first must be true or false, not {first!r}")
    when = None if start is None else _utc(start)
    return _Meta(raw.get("name"), when, step, channels, missing, first)


def _listed(codes: Any) -> list[Any]:
    """``"missing": -200`` or ``"missing": [-200, -999]``."""
    return codes if isinstance(codes, list) else [codes]


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; without an offset, the file's own clock read as UTC, as its times
    are (``dataset_files.NAIVE``)."""
    if moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
