"""Reading data files into grids: ``.npz`` arrays, wide CSV, long CSV or Parquet, HDF5 frames,
and ticks recorded from a topic (JSON lines).

Each reader returns the (T, N, F) values, the file's own sensor ids, and the start and step when
the file's times say them; ``stream_app.offline.datasets`` fills in the rest and names the sensors.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import logging
import math
import pickle
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as daytime
from pathlib import Path
from typing import Any, TextIO, cast

import numpy as np
import numpy.typing as npt

from ..core.chunks import ticks_of
from ..core.records import Incoming, Rejected, TimestampParser, tick_from_json

log = logging.getLogger(__name__)

TIME_COLUMNS = (
    "ts", "time", "timestamp", "date", "datetime", "date_time", "epoch", "unix", "unix_time",
    "unixtime", "time_utc", "datetime_utc", "timestamp_utc", "utc",
)  # fmt: skip
LONG_HEADER = ("sensor", "ts", "value")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A column of plain numbers named so holds times elapsed since some moment the data does not say
# (a stay's admission, an experiment's start): seconds per unit. The moment is ``--start``'s.
ELAPSED_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
ELAPSED_UNITS_NAMES = ", ".join(ELAPSED_UNITS)
# also read gzip-compressed: ``.csv.gz``; ``.txt`` and ``.dat`` are tables in plain text (LSTNet's
# electricity.txt, UCI's LD2011_2014.txt, a Campbell logger's TOA5 .dat) when they look like one
PLAIN_SUFFIXES = (".txt", ".dat")
TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", *PLAIN_SUFFIXES)
TICK_SUFFIXES = (".jsonl", ".ndjson")  # recorded ticks: a tick or a tick batch per line
PICKLE_SUFFIXES = (".pkl", ".pickle")
SHEET_SUFFIXES = (".xlsx", ".xlsm", ".xls")  # Excel workbooks: openpyxl; xlrd for 1997-2003's
DATA_SUFFIXES = (
    ".npz",
    ".npy",
    *TEXT_SUFFIXES,
    *SHEET_SUFFIXES,
    ".parquet",
    ".h5",
    ".hdf5",
    *PICKLE_SUFFIXES,
)
# What a comma in a number is: in a file whose cells a comma separates, a quoted "1,234" or
# "12,345.6" is a thousands separator (a US export); in a ``;`` or tab file it is a decimal
# comma (``2,6``), and points before it group thousands (``1.234,5``, a German export)
THOUSANDS, DECIMAL = "thousands", "decimal"


class DatasetError(ValueError):
    """The data cannot be read as a grid; the message says what to add or change."""


@dataclass(frozen=True)
class FileGrid:
    """What a data file says: values (T, N, F), its sensor ids, its start and step if timed."""

    values: npt.NDArray[np.float64]
    sensor_ids: list[str]
    start: datetime | None = None
    step_s: int | None = None
    name: str | None = None  # the network, where the data names it (recorded ticks)
    channels: list[str] | None = None  # the F channels' names, where the data names them
    # the column of elapsed times (``ELAPSED_UNITS``): ``start`` counts from ``EPOCH``, the
    # moment ``--start`` names
    elapsed: str | None = None


def data_suffix(path: Path) -> str:
    """The format's suffix: ``.csv`` for ``x.csv`` and for ``x.csv.gz`` (read through gzip)."""
    if path.suffix == ".gz" and len(path.suffixes) >= 2 and path.suffixes[-2] in TEXT_SUFFIXES:
        return path.suffixes[-2]
    return path.suffix


def _open_text(path: Path) -> TextIO:
    """A UTF-8 text file's lines (JSON lines), gzip-compressed or not."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return path.open(newline="", encoding="utf-8")


def _bytes(path: Path, limit: int = -1) -> bytes:
    """A file's bytes (the first ``limit``), gzip-compressed or not."""
    with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as f:
        return f.read(limit)


def _decoded(raw: bytes, file: Path, partial: bool = False) -> str:
    """A CSV's text as spreadsheets save it: UTF-8 (with or without a byte-order mark), UTF-16
    with its mark (Excel's "Unicode text"), else Windows-1252 (Latin-1 and the euro sign: a
    European export's "°C" or "µg/m³"), named in a warning. ``partial``: a file's first bytes,
    whose last character may be cut."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace" if partial else "strict")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if partial and error.start >= len(raw) - 3:
            return raw[: error.start].decode("utf-8-sig")
        if not partial:
            log.warning(
                "%s: not UTF-8 (byte 0x%02x at %d): read as Windows-1252 (Latin-1)",
                file, raw[error.start], error.start,
            )  # fmt: skip
        return raw.decode("cp1252", errors="replace")


def is_data_file(path: Path) -> bool:
    """False for sensor graphs, adjacency matrices and sensor location tables (such as
    Melbourne's ``stations.csv``)."""
    if "adj" in path.stem.lower():
        return False
    suffix = data_suffix(path)
    if suffix in TICK_SUFFIXES:
        return True
    if suffix == ".npz":
        with np.load(path) as archive:
            return _npz_key(archive.files) is not None
    if suffix in (".npy", ".parquet", ".h5", ".hdf5", *PICKLE_SUFFIXES, *SHEET_SUFFIXES):
        return True
    if suffix in PLAIN_SUFFIXES and (_lists_ids(path) or not _looks_tabular(path)):
        return False
    header = {h.strip().lower() for h in _header(path)}
    locations = {"latitude", "longitude"} <= header or {"lat", "lon"} <= header
    return not ({"from", "to"} <= header or locations)


def _lists_ids(path: Path) -> bool:
    """Whether ``path`` (``PEMS03.txt``) is the sensor listing of an array beside it
    (``PEMS03.npz``: ``datasets._listed_ids``) rather than data."""
    return any(
        path.with_suffix(suffix).is_file() for suffix in (".npz", ".npy", *PICKLE_SUFFIXES, ".h5")
    )


def _looks_tabular(path: Path) -> bool:
    """Whether a plain-text file beside the data (``.txt``: a README, a licence, notes) is a
    table: its first lines (comments aside) split into the same number of cells, most of its
    rows after the first holding a number."""
    head = _bytes(path, 65536)
    text = _decoded(head, path, partial=True)
    lines = text.splitlines()[:40]
    if len(head) == 65536 and len(lines) < 40:
        lines = lines[:-1]  # cut by the read
    lines = [line for line in lines if line.strip() and not line.startswith("#")]
    if len(lines) < 2:
        return False
    delimiter, spaced = _delimiter(lines[0]), _is_spaced(lines)
    cells = [_split_line(line, delimiter, spaced) for line in lines]
    widths = Counter(len(row) for row in cells)
    numbered = sum(any(_is_number(c) for c in row) for row in cells[1:])
    return widths.most_common(1)[0][1] >= 0.8 * len(cells) and numbered >= 0.8 * (len(cells) - 1)


def _is_spaced(lines: list[str]) -> bool:
    """Whether a table's cells are separated by runs of spaces (``np.savetxt``'s default, many
    instruments' ``.dat``): no comma, semicolon or tab, and every line after the first splits
    into the same number (two or more) of cells."""
    if any(mark in line for line in lines for mark in ",;\t"):
        return False
    widths = {len(line.split()) for line in lines[1:]}
    return len(widths) == 1 and widths.pop() >= 2


def _split_line(line: str, delimiter: str, spaced: bool) -> list[str]:
    return line.split() if spaced else next(csv.reader([line], delimiter=delimiter), [])


def _header(path: Path) -> list[str]:
    first = _decoded(_bytes(path, 65536), path, partial=True).split("\n", 1)[0]
    return next(csv.reader([first], delimiter=_delimiter(first)), [])


def _delimiter(first: str) -> str:
    """``,``, or ``;`` or a tab where the header line ``first`` holds those and no comma (as
    European spreadsheets and many exports write CSV)."""
    if "," in first:
        return ","
    return max((";", "\t"), key=first.count) if (";" in first or "\t" in first) else ","


def read_grid(file: Path, *, bin_s: int | None = None) -> FileGrid:
    """The (T, N, F) values, the source's sensor ids, and the file's own start and step if any;
    times on no regular grid are averaged into slots of ``bin_s`` seconds where it is given
    (``_binned``), else refused with the reason."""
    suffix = data_suffix(file)
    if suffix == ".npz":
        return _read_npz(file)
    if suffix == ".npy":
        return _array_grid(np.asarray(np.load(file, allow_pickle=False), dtype=np.float64), file)
    if suffix in TICK_SUFFIXES:
        return _read_ticks(file, bin_s)
    if suffix in TEXT_SUFFIXES:  # the delimiter is found from the header
        rows, delimiter = _csv_rows(file)
        return _read_table(rows, file, THOUSANDS if delimiter == "," else DECIMAL, bin_s)
    if suffix in SHEET_SUFFIXES:
        return _read_table(_sheet_rows(file), file, DECIMAL, bin_s)
    if suffix == ".parquet":
        return _read_parquet(file, bin_s)
    if suffix in (".h5", ".hdf5"):
        return _read_hdf5(file, bin_s)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(file)
    raise DatasetError(
        f"{file}: unknown format; use .npz (key 'data') or .npy, .csv, .tsv, .txt or .dat (or "
        ".csv.gz), .xlsx or .xls, .parquet, .h5 (a pandas frame), .pkl (arrays), .jsonl (ticks as "
        "the worker reads them), or a .zip of them"
    )


def _read_table(
    rows: list[list[str]], file: Path, commas: str, bin_s: int | None = None
) -> FileGrid:
    """A table's rows (a CSV's, a spreadsheet's; the header first, if any) as a wide or long
    grid."""
    if _is_data_row(rows[0], commas, rows[1:201]):  # PeMSD7's V_228.csv, LSTNet's .txt files
        log.warning("%s: no header row (the first holds readings): the columns are numbered", file)
        rows = [[str(j) for j in range(len(rows[0]))], *rows]
    header = [h.strip() for h in rows[0]]
    if tuple(h.lower() for h in header) == LONG_HEADER:
        return _read_long(rows[1:], file, commas, bin_s=bin_s)
    header, body = _time_first(header, rows[1:], file)
    elapsed = _elapsed_column(header, body)
    if elapsed is not None:  # since a moment the data does not say: --start
        at, unit = elapsed
        header = [header[at], *_without(header, [at])]
        body = [[_elapsed_time(row[at], unit, file), *_without(row, [at])] for row in body]
    melted = _melted_layout(header, body, commas)
    if melted is not None and _says_melted(header, melted):  # before a column per instrument
        grid = _read_melted(header, body, melted, file, commas, bin_s)
    elif (layout := _long_layout(header, body, commas)) is not None:
        long_rows, channels = _as_long(body, layout, header, file)
        grid = _read_long(long_rows, file, commas, channels, bin_s)
    elif melted is not None:
        grid = _read_melted(header, body, melted, file, commas, bin_s)
    else:
        grid = _read_wide(header, body, file, commas, bin_s)
    return replace(grid, elapsed=header[0]) if elapsed is not None else grid


def _elapsed_name(name: str) -> str:
    return _label(name).removeprefix("elapsed_").removeprefix("elapsed ")


def _elapsed_column(header: list[str], rows: list[list[str]]) -> tuple[int, int] | None:
    """The column of elapsed times and its seconds per unit (``ELAPSED_UNITS``): the first
    column when it is named so, else the only one named so; every cell a number, the least
    under three years. None where there is none, or where the first column holds times of
    its own."""
    named = [j for j, name in enumerate(header) if _elapsed_name(name) in ELAPSED_UNITS]
    if not named or not rows or (named[0] != 0 and len(named) > 1):
        return None
    if named[0] != 0 and (_label(header[0]) in TIME_COLUMNS or _is_time(rows[0][0])):
        return None
    at = named[0]
    if not all(_is_number(row[at]) for row in rows):
        return None
    unit = ELAPSED_UNITS[_elapsed_name(header[at])]
    least = min(float(row[at]) for row in rows) * unit
    return (at, unit) if least < EPOCH_S[0] else None  # years on: a count since the epoch


def _elapsed_time(cell: str, unit: int, file: Path) -> str:
    """An elapsed time as a moment counted from ``EPOCH``, so that the grid is found as for
    any times (``FileGrid.elapsed`` says its start counts from there)."""
    seconds = float(cell) * unit
    if not math.isfinite(seconds):
        raise DatasetError(f"{file}: elapsed time {cell!r} is not a number of units")
    return (EPOCH + timedelta(seconds=seconds)).isoformat()


def _is_data_row(row: list[str], commas: str, below: list[list[str]]) -> bool:
    """A first row of readings rather than names: every cell a number, and one of them with a
    fraction or two of them alike, or every one near the range of its column in the rows
    ``below`` (within its width: whole counts from the first line). Sensor ids are whole
    numbers, each once, far from the readings (PeMS's ``400001``) or numbering the columns
    (``0,1,2``, ``101,102``)."""
    cells = [_normalised(cell, commas) for cell in row]
    if not cells or not all(c != "nan" and _is_number(c) for c in cells):
        return False
    if any(not c.lstrip("-").isdigit() for c in cells) or len(set(cells)) < len(cells):
        return True
    ids = sorted(int(c) for c in cells)
    if len(ids) > 1 and ids == list(range(ids[0], ids[0] + len(ids))):
        return False
    for j, cell in enumerate(cells):
        texts = [_normalised(r[j], commas) for r in below if j < len(r)]
        column = [v for v in (float(t) for t in texts if _is_number(t)) if not math.isnan(v)]
        if not column:
            return False
        low, high = min(column), max(column)
        if not low - (high - low) <= float(cell) <= high + (high - low):
            return False
    return True


def _sheet_rows(file: Path) -> list[list[str]]:
    """An Excel workbook's first sheet with data as a CSV's rows: dates and times written
    ISO 8601, whole numbers without a fraction, empty cells empty; other sheets named in a
    warning (save the one to read first)."""
    read = _xls_sheets if data_suffix(file) == ".xls" else _xlsx_sheets
    sheets = [(title, _sheet_cells(rows)) for title, rows in read(file)]
    full = [(title, rows) for title, rows in sheets if len(rows) >= 2]
    if not full:
        raise DatasetError(f"{file}: no sheet holds a header row and a data row")
    if len(full) > 1:
        log.warning(
            "%s: sheet %r read; the sheets %s are not (move the one to read first)",
            file, full[0][0], [title for title, _ in full[1:]],
        )  # fmt: skip
    return full[0][1]


Sheet = tuple[str, list[tuple[object, ...]]]  # a sheet's title and its rows of cell values


def _xlsx_sheets(file: Path) -> list[Sheet]:
    """The sheets of an Excel 2007 (or later) workbook, cells as openpyxl gives them."""
    try:
        from openpyxl import load_workbook
    except ImportError:  # pragma: no cover - a dependency of stcast
        raise DatasetError(f"{file}: reading .xlsx needs openpyxl (pip install openpyxl)") from None
    try:
        book = load_workbook(file, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a file that is not a workbook
        raise DatasetError(f"{file}: not an Excel workbook stcast reads ({exc})") from None
    try:
        return [(sheet.title, list(sheet.iter_rows(values_only=True))) for sheet in book.worksheets]
    finally:
        book.close()


def _xls_sheets(file: Path) -> list[Sheet]:
    """The sheets of an Excel 97-2003 workbook (``.xls``), cells as openpyxl would give them:
    a date cell a ``datetime`` (a time of day alone a ``time``), an error or blank ``None``."""
    try:
        import xlrd
    except ImportError:  # pragma: no cover - a dependency of stcast
        raise DatasetError(f"{file}: reading .xls needs xlrd (pip install xlrd)") from None
    try:
        book = xlrd.open_workbook(file, on_demand=True)
    except Exception as exc:  # xlrd raises many kinds for a file that is not a workbook
        raise DatasetError(f"{file}: not an Excel workbook stcast reads ({exc})") from None
    try:
        sheets = []
        for index in range(book.nsheets):
            sheet = book.sheet_by_index(index)
            rows = [
                tuple(_xls_value(cell, book.datemode) for cell in sheet.row(r))
                for r in range(sheet.nrows)
            ]
            sheets.append((sheet.name, rows))
        return sheets
    finally:
        book.release_resources()


def _xls_value(cell: Any, datemode: int) -> object:
    import xlrd

    if cell.ctype == xlrd.XL_CELL_DATE:
        moment = xlrd.xldate.xldate_as_datetime(cell.value, datemode)
        return moment.time() if cell.value < 1 else moment
    if cell.ctype in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK, xlrd.XL_CELL_ERROR):
        return None
    if cell.ctype == xlrd.XL_CELL_BOOLEAN:
        return bool(cell.value)
    return cell.value


def _sheet_cells(rows: Iterable[tuple[object, ...]]) -> list[list[str]]:
    """Non-empty rows as text, from the header on (a title above it, a few cells filled where
    the table fills most, left out), as wide as the table (a sheet's formatted empty cells
    cut); a column of dates (Excel keeps a date as a time at midnight) written as dates, so
    that a time of day beside them is joined to them as in a CSV."""
    cells = [list(row) for row in rows if any(cell not in (None, "") for cell in row)]
    if not cells:
        return []
    filled = [sum(cell not in (None, "") for cell in row) for row in cells[:50]]
    typical = sorted(filled)[len(filled) // 2]
    cells = cells[next(i for i, n in enumerate(filled) if n >= typical) :]
    width = max(max(j + 1 for j, c in enumerate(row) if c not in (None, "")) for row in cells)
    cells = [(row + [None] * width)[:width] for row in cells]
    for j in range(width):
        column = [row[j] for row in cells[1:] if row[j] is not None]
        if column and all(isinstance(c, datetime) and c.time() == daytime() for c in column):
            for row in cells[1:]:
                if isinstance(moment := row[j], datetime):
                    row[j] = moment.date()
    return [[_cell_text(cell) for cell in row] for row in cells]


def _cell_text(cell: object) -> str:
    """A spreadsheet cell as a CSV writes it.

    >>> [_cell_text(c) for c in (None, 18.0, 2.5, datetime(2004, 3, 10, 18), daytime(6, 30))]
    ['', '18', '2.5', '2004-03-10 18:00:00', '06:30:00']
    """
    if cell is None:
        return ""
    if isinstance(cell, bool):
        return str(int(cell))
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    if isinstance(cell, datetime | date | daytime):
        return cell.isoformat(sep=" ") if isinstance(cell, datetime) else cell.isoformat()
    return str(cell).strip()


def side_by_side(files: list[Path], *, bin_s: int | None = None) -> FileGrid:
    """Several files of one network, as archives ship a file per sensor or station: each
    file's grid placed on one time axis, its sensors named after the file (the file's name
    for a file of one column, else ``file/column``). The files must say their times, on one
    step and phase."""
    grids = [read_grid(file, bin_s=bin_s) for file in files]
    untimed = [f.name for f, g in zip(files, grids, strict=True) if g.start is None]
    if untimed:
        raise DatasetError(
            f"{files[0].parent}: {untimed} say no times; files read side by side need their own"
        )
    elapsed = {g.elapsed is not None for g in grids}
    if len(elapsed) > 1:
        raise DatasetError(
            f"{files[0].parent}: some files' times are elapsed ({ELAPSED_UNITS_NAMES}), others' "
            "are moments; read side by side they must be alike"
        )
    steps = sorted({g.step_s for g in grids if g.step_s is not None})
    channels = sorted({g.values.shape[2] for g in grids})
    if len(steps) != 1 or len(channels) != 1:
        raise DatasetError(
            f"{files[0].parent}: its files differ in step ({steps} s) or channels ({channels}); "
            "name one file"
        )
    step_s, start = steps[0], min(g.start for g in grids if g.start is not None)
    offsets = []
    for file, grid in zip(files, grids, strict=True):
        seconds = (cast(datetime, grid.start) - start).total_seconds()
        if seconds % step_s:
            raise DatasetError(
                f"{file}: its times are {seconds % step_s:g} s off the grid of the other files"
            )
        offsets.append(int(seconds // step_s))
    steps_in_all = max(o + len(g.values) for o, g in zip(offsets, grids, strict=True))
    width = sum(g.values.shape[1] for g in grids)
    values = np.full((steps_in_all, width, channels[0]), np.nan)
    ids: list[str] = []
    for file, grid, offset in zip(files, grids, offsets, strict=True):
        n, stem = grid.values.shape[1], file_stem(file)
        values[offset : offset + len(grid.values), len(ids) : len(ids) + n] = grid.values
        ids += [stem] if n == 1 else [f"{stem}/{sensor}" for sensor in grid.sensor_ids]
    named = grids[0].channels if all(g.channels == grids[0].channels for g in grids) else None
    return FileGrid(values, ids, start, step_s, channels=named, elapsed=grids[0].elapsed)


def file_stem(file: Path) -> str:
    """A data file's name without its format's suffix (``flows.csv.gz`` -> ``flows``)."""
    stem = file.name[: len(file.name) - len(file.suffix)]
    if data_suffix(file) != file.suffix:  # compressed: the format's suffix goes too
        stem = stem[: len(stem) - len(data_suffix(file))]
    return stem


def _read_npz(file: Path) -> FileGrid:
    """The archive's ``data`` array, or its only array whatever its name (``np.savez(file,
    array)`` calls it ``arr_0``, as the NYC taxi and bike flows come)."""
    with np.load(file) as archive:
        key = _npz_key(archive.files)
        if key is None:
            raise DatasetError(f"{file}: no array named 'data' (found {archive.files})")
        values = np.asarray(archive[key], dtype=np.float64)
    return _array_grid(values, file)


def _npz_key(names: list[str]) -> str | None:
    return "data" if "data" in names else (names[0] if len(names) == 1 else None)


# What pickled datasets and graphs need (DCRNN's ``adj_mx.pkl``, a tuple of sensor ids, their
# positions and the matrix, pickled by Python 2; UCTB's datasets, a dict of arrays and lists):
# numpy arrays and nothing that runs code. Module names as Python 2 and numpy 1 wrote them.
_PICKLED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes an array's bytes at protocol 2
}  # fmt: skip


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLED:
            raise pickle.UnpicklingError(f"{module}.{name} is not an array")
        try:  # numpy 2 moved numpy.core to numpy._core (the old name warns there)
            return super().find_class(module.replace("numpy.core.", "numpy._core."), name)
        except ImportError:  # numpy 1
            return super().find_class(module.replace("numpy._core.", "numpy.core."), name)


def unpickled(file: Path, what: str) -> object:
    """A pickle's arrays, lists, tuples, dicts, numbers and text; a pickle that would run
    code (or hold anything else) is refused, ``what`` it was read as named."""
    try:
        with file.open("rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DatasetError(f"{file}: not a pickled {what} stcast reads ({exc})") from None


def _read_pickle(file: Path) -> FileGrid:
    """A pickled array (T, N[, F]), or a dict holding one: a UCTB dataset (``Node`` /
    ``TrafficNode``, its times from ``TimeRange`` and ``TimeFitness`` in minutes, its sensors
    named by ``StationInfo``), else the dict's only array of two or more axes."""
    loaded = unpickled(file, "dataset")
    if isinstance(loaded, np.ndarray):
        return _array_grid(np.asarray(loaded, dtype=np.float64), file)
    node = loaded.get("Node") if isinstance(loaded, dict) else None
    if isinstance(loaded, dict) and isinstance(node, dict) and "TrafficNode" in node:
        return _uctb_grid(loaded, node, file)
    arrays = _arrays_in(loaded)
    if len(arrays) != 1:
        raise DatasetError(
            f"{file}: {len(arrays)} arrays of two or more axes in the pickle; stcast reads a "
            "pickle of one, or a UCTB dataset"
        )
    return _array_grid(np.asarray(arrays[0], dtype=np.float64), file)


def _arrays_in(loaded: object) -> list[npt.NDArray[Any]]:
    """The arrays of two or more axes in a pickle's containers, in order."""
    if isinstance(loaded, np.ndarray):
        return [loaded] if loaded.ndim >= 2 and loaded.dtype.kind in "iuf" else []
    if isinstance(loaded, dict):
        return [a for item in loaded.values() for a in _arrays_in(item)]
    if isinstance(loaded, list | tuple):
        return [a for item in loaded for a in _arrays_in(item)]
    return []


def _uctb_grid(loaded: dict[Any, Any], node: dict[Any, Any], file: Path) -> FileGrid:
    """A UCTB dataset (the Urban-Dataset pickles: bikes, metro, taxis, pedestrians...): its
    (T, N) ``TrafficNode`` from the first day of ``TimeRange`` (the city's clock, read as
    UTC) at ``TimeFitness`` minutes, each sensor named by its ``StationInfo`` entry (``[id,
    built, lat, lng, name]``): its name, else its id, where those are distinct."""
    values = np.asarray(node["TrafficNode"], dtype=np.float64)
    try:
        start = datetime.fromisoformat(str(loaded["TimeRange"][0])).replace(tzinfo=UTC)
        step_s = int(float(loaded["TimeFitness"]) * 60)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{file}: a UCTB dataset without TimeRange or TimeFitness ({exc})"
        ) from None
    stations = node.get("StationInfo")
    ids = [str(i) for i in range(values.shape[1])]
    if isinstance(stations, list) and len(stations) == values.shape[1]:
        for field in (-1, 0):  # the name, else the id
            named = [str(s[field]) if isinstance(s, list | tuple) and s else "" for s in stations]
            if all(named) and len(set(named)) == len(named):
                ids = named
                break
    log.warning(NAIVE.format(file=file))
    grid = values if values.ndim == 3 else values[:, :, np.newaxis]
    return FileGrid(grid, ids, start, step_s)


def _read_hdf5(file: Path, bin_s: int | None = None) -> FileGrid:
    """An HDF5 file as ``pandas.DataFrame.to_hdf`` writes a frame (METR-LA's ``df``, PEMS-BAY's
    ``speed``: a row per time, a column per sensor; columns that are not numbers are left out
    with a warning), or with an array ``data`` like the ``.npz`` files. Needs h5py, not pandas."""
    try:
        import h5py
    except ImportError:
        raise DatasetError(
            f"{file}: reading HDF5 needs h5py (pip install h5py; the 'train' extra has it)"
        ) from None
    with h5py.File(file, "r") as h5:
        if isinstance(h5.get("data"), h5py.Dataset):
            return _array_grid(np.asarray(h5["data"], dtype=np.float64), file)
        frames = [
            name
            for name, node in h5.items()
            if isinstance(node, h5py.Group) and {"axis0", "axis1", "block0_values"} <= node.keys()
        ]
        if len(frames) != 1:
            raise DatasetError(
                f"{file}: holds neither one pandas frame (a group with axis0, axis1 and "
                f"block0_values) nor an array 'data'; found {sorted(h5.keys())}"
            )
        return _pandas_frame(h5[frames[0]], file, bin_s)


def _pandas_frame(group: Any, file: Path, bin_s: int | None = None) -> FileGrid:
    """The grid of a frame ``to_hdf`` wrote in its fixed format: ``axis0`` the column labels,
    ``axis1`` the index (times: ``kind`` names the unit), ``blockK_items`` and
    ``blockK_values`` (rows by items) the columns, by dtype."""
    labels = [_text(label) for label in group["axis0"][()]]
    columns: dict[str, npt.NDArray[np.float64]] = {}
    for k in range(int(group.attrs.get("nblocks", 1))):
        values = group[f"block{k}_values"]
        items = [_text(item) for item in group[f"block{k}_items"][()]]
        if values.dtype.kind not in "biuf" or values.ndim != 2:
            log.warning("%s: columns %s are not numbers: left out", file, items)
            continue
        block = np.asarray(values, dtype=np.float64)
        columns.update({item: block[:, i] for i, item in enumerate(items)})
    sensors = [label for label in labels if label in columns]
    if not sensors:
        raise DatasetError(f"{file}: the frame {group.name} has no numeric column")
    grid = np.stack([columns[s] for s in sensors], axis=1)
    index, kind = group["axis1"], _text(group["axis1"].attrs.get("kind", b""))
    if not kind.startswith("datetime64"):  # no times: the flags or stcast.json say them
        return FileGrid(grid[:, :, np.newaxis], sensors)
    unit = kind[len("datetime64[") : -1] if "[" in kind else "ns"  # older pandas: always ns
    if unit not in MS_PER_TICK:
        raise DatasetError(f"{file}: index times in {kind!r}, a unit stcast does not read")
    times_ms = np.floor_divide(np.asarray(index, dtype=np.int64) * MS_PER_TICK[unit][0],
                               MS_PER_TICK[unit][1])  # fmt: skip
    if "tz" not in index.attrs:  # a naive index: the file's own clock (``NAIVE``)
        log.warning(NAIVE.format(file=file))
    axis = _regular_axis(times_ms, file, bin_s=bin_s)
    return FileGrid(axis.placed(grid[:, :, np.newaxis]), sensors, axis.start, axis.step_s)


MS_PER_TICK = {"ns": (1, 1_000_000), "us": (1, 1_000), "ms": (1, 1), "s": (1_000, 1)}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _array_grid(values: npt.NDArray[np.float64], file: Path) -> FileGrid:
    """A (T, N) or (T, N, F) array, its sensors numbered."""
    if values.ndim == 2:
        values = values[:, :, np.newaxis]
    if values.ndim != 3:
        raise DatasetError(f"{file}: the array must be (T, N) or (T, N, F), got {values.shape}")
    return FileGrid(values, [str(i) for i in range(values.shape[1])])


def _csv_rows(file: Path) -> tuple[list[list[str]], str]:
    """The rows of a CSV, from its header on (``_table_start``), and its delimiter."""
    text = _decoded(_bytes(file), file)
    lines = text.split("\n", 200)[:200]
    first = next((line for line in lines if line.strip() and not line.startswith("#")), "")
    delimiter = _delimiter(first)
    body = [line for line in lines[:-1] if line.strip() and not line.startswith("#")]
    if _is_spaced(body[:40]):  # cells between runs of spaces: no quoting to honour
        delimiter = " "
        rows = [line.split() for line in text.splitlines() if line.strip()]
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows = [row for row in reader if row]
    rows = _table_start(rows, file)
    if len(rows) < 2:
        raise DatasetError(f"{file}: a header row and at least one data row are needed")
    return rows, delimiter


def _table_start(rows: list[list[str]], file: Path) -> list[list[str]]:
    """The rows from the table's header on: lines before it that loggers and services write
    (``# comments``, a title or a station's name: fewer or more cells than the table's rows)
    left out, and up to three rows of units or labels under the header (``_is_units``),
    named in a warning. Where the row found is no header (numbers, a time), nothing is."""
    body = rows[:200]
    widths = Counter(len(row) for row in body if not _is_comment(row))
    if not widths:
        return rows
    width = widths.most_common(1)[0][0]
    start = 0
    while start < len(body) - 1 and _is_preamble(body[start], width):
        start += 1
    header = [_normalised(cell) for cell in rows[start]]
    numbers = sum(c != "nan" and _is_number(c) for c in header)
    if start and (numbers >= len(header) / 2 or _is_time(rows[start][0])):
        return rows  # no header there: rows of data (the reader says what is wrong)
    skipped = rows[:start]
    rows = rows[start:]
    units = 0
    while units < 3 and len(rows) > units + 2 and _is_units(rows[1 + units]):
        units += 1
    if units:
        skipped += rows[1 : 1 + units]
        rows = rows[:1] + rows[1 + units :]
    if skipped:
        log.warning(
            "%s: %d lines before the table's rows left out (the first: %r)",
            file, len(skipped), ",".join(skipped[0])[:80],
        )  # fmt: skip
    return rows


def _is_comment(row: list[str]) -> bool:
    return row[0].lstrip().startswith("#")


def _is_preamble(row: list[str], width: int) -> bool:
    """A line before a table of ``width`` cells: a comment, a title or a station's name (under
    half the cells filled), or a logger's header line wider than the table (TOA5's); a header
    one cell short of rows that end in a delimiter is none."""
    filled = sum(bool(cell.strip()) for cell in row)
    return _is_comment(row) or filled < width / 2 or len(row) > width + 1


def _is_units(row: list[str]) -> bool:
    """A row of units or labels under a header (``Deg C``, ``Avg``): no time in its first
    cell, no number in the others, and text (not a missing reading's mark) in one of them."""
    if len(row) < 2 or _is_time(row[0]):
        return False
    cells = [_normalised(cell) for cell in row[1:]]
    return not any(c != "nan" and _is_number(c) for c in cells) and any(c != "nan" for c in cells)


def _time_first(
    header: list[str], rows: list[list[str]], file: Path
) -> tuple[list[str], list[list[str]]]:
    """The header and rows with the times first: a delimiter after every row's last cell
    dropped, row numbers left out (a first column of them, as pandas and R write, or a
    logger's ``RECORD``), a column of times elsewhere moved first, and a time written over
    several columns joined into one: a date and a time of day (as spreadsheets write them),
    ``year``, ``month``, ``day``[, ``hour``[, ``minute``]], or a date and an hour."""
    if rows and all(len(row) == len(header) + 1 and not row[-1].strip() for row in rows):
        rows = [row[:-1] for row in rows]  # a delimiter after each row's last cell
    if any(len(row) != len(header) for row in rows):
        raise DatasetError(f"{file}: every row must have {len(header)} cells, like the header")
    if len(header) > 2 and _is_row_number(header[0], [row[0] for row in rows], file):
        header, rows = header[1:], [row[1:] for row in rows]  # pandas' index, R's row names
    if (at := _time_column_elsewhere(header, rows)) is not None:  # a logger's last column
        header = [header[at], *_without(header, [at])]
        rows = [[row[at], *_without(row, [at])] for row in rows]
    numbers = [  # a logger's RECORD column after its times
        j for j in range(1, len(header))
        if _label(header[j]) in ROW_NUMBERS[2:]
        and _is_row_number(header[j], [row[j] for row in rows], file)
    ]  # fmt: skip
    if numbers and len(header) - len(numbers) >= 2:
        header, rows = _without(header, numbers), [_without(row, numbers) for row in rows]
    if len(header) > 2 and _date_and_clock(rows[0]) is not None:  # split, as spreadsheets write
        rows = [[_date_and_clock(row) or f"{row[0]} {row[1]}", *row[2:]] for row in rows]
        header = [f"{header[0]} {header[1]}", *header[2:]]
    if (parts := _time_parts(header)) is not None:  # year, month, day[, hour[, minute]]
        rows = [[_joined_time(row, parts, file), *_without(row, parts)] for row in rows]
        header = ["ts", *_without(header, parts)]
    elif (hour := _hour_column(header, rows)) is not None:  # a date, and the hour elsewhere
        rows = [[f"{row[0].strip()} {int(row[hour]):02d}:00", *_without(row, [0, hour])]
                for row in rows]  # fmt: skip
        header = [header[0], *_without(header, [0, hour])]
    return header, rows


def _time_column_elsewhere(header: list[str], rows: list[list[str]]) -> int | None:
    """The column of times when it is not the first (``a,b,time``): the only one named so
    (``TIME_COLUMNS``) or holding times, where the first column is a number; else None."""
    if len(header) < 2 or not rows or _time_parts(header) is not None:
        return None
    first = rows[0][0].strip()
    if _label(header[0]) in TIME_COLUMNS or _is_time(first) or not _is_number(first):
        return None
    if _compact_moments([row[0] for row in rows[:100]]) is not None:
        return None
    at = [
        j for j in range(1, len(header))
        if _label(header[j]) in TIME_COLUMNS or _is_time(rows[0][j])
    ]  # fmt: skip
    return at[0] if len(at) == 1 else None


def _read_wide(
    header: list[str],
    rows: list[list[str]],
    file: Path,
    commas: str = DECIMAL,
    bin_s: int | None = None,
) -> FileGrid:
    """A row per time (its times first, as ``_time_first`` leaves them), a column per sensor."""
    firsts = [row[0] for row in rows]
    compact = _compact_moments(firsts)  # read once: the times below are these
    has_time = (
        header[0].lower() in TIME_COLUMNS
        or _is_time(firsts[0] if firsts else "")
        or compact is not None
    )
    cells = np.array(rows, dtype=object)
    sensors = header[1:] if has_time else header
    try:
        values = _floats(cells[:, int(has_time) :], file, commas)
    except DatasetError:  # columns of text are left out; a number column's bad cell is named
        cells, sensors = _without_text(cells, sensors, int(has_time), file, commas)
        values = _floats(cells[:, int(has_time) :], file, commas)
    if not has_time:
        return FileGrid(values[:, :, np.newaxis], sensors)
    values, sensors = _without_calendar(values, sensors, file)
    times_ms = _times_ms([str(c) for c in cells[:, 0]], file, compact)
    distinct = _distinct_rows(times_ms, cells[:, 0], file)
    times_ms, values = times_ms[distinct], values[distinct]
    axis = _regular_axis(times_ms, file, bin_s=bin_s)
    return FileGrid(axis.placed(values[:, :, np.newaxis]), sensors, axis.start, axis.step_s)


def _distinct_rows(
    times_ms: npt.NDArray[np.int64], cells: npt.NDArray[Any], file: Path
) -> npt.NDArray[np.bool_]:
    """Which of a wide file's rows to read: each time's first. A few repeated times (local
    clocks repeat an hour when summer time ends) are left out with a warning; more are refused,
    as a date without its hour would otherwise lose most of its rows."""
    _, first, counts = np.unique(times_ms, return_index=True, return_counts=True)
    if not (counts > 1).any():
        return np.ones(len(times_ms), dtype=bool)
    row = int(first[np.argmax(counts > 1)])
    again = int(np.flatnonzero(times_ms == times_ms[row])[1])
    repeated = len(times_ms) - len(first)
    if repeated > MAX_LEFT_OUT * len(times_ms):
        raise DatasetError(
            f"{file}: data rows {row + 1} and {again + 1} have the same time ({cells[row]!r}); "
            "a wide file has a row per time"
        )
    log.warning(
        "%s: %d rows repeat an earlier row's time (data rows %d and %d: %r, as a local clock "
        "repeats an hour when summer time ends): the first of each is read",
        file, repeated, row + 1, again + 1, cells[row],
    )  # fmt: skip
    keep = np.zeros(len(times_ms), dtype=bool)
    keep[first] = True
    return keep


ROW_NUMBERS = ("", "unnamed: 0", "index", "no", "instant", "id", "row", "record", "recnum")


def _label(name: str) -> str:
    """A column's name as the layouts below are recognised by: no padding, quotes or case."""
    return name.strip().strip('"').lower()


def _is_row_number(name: str, cells: list[str], file: Path) -> bool:
    """A first column that numbers the rows (``DataFrame.to_csv``'s unnamed index, a ``No``
    column): named so, and counting up by one, but for at most 1 % of unreadable cells (the
    UCI bike hours' ``instant`` holds a stray byte in row 160), named in a warning."""
    if _label(name) not in ROW_NUMBERS or not cells:
        return False
    numbers = [int(cell) if cell.strip().isdigit() else None for cell in cells]
    known = [(row, n) for row, n in enumerate(numbers) if n is not None]
    if not known or len(known) < 0.99 * len(cells):
        return False
    first = known[0][1] - known[0][0]
    if any(n != first + row for row, n in known):
        return False
    bad = [(row + 1, cells[row]) for row, n in enumerate(numbers) if n is None]
    if bad:
        log.warning("%s: row numbers (%s) unreadable in data rows %s", file, name, bad[:5])
    return True


TIME_PARTS = ("year", "month", "day", "hour", "minute")


def _time_parts(header: list[str]) -> list[int] | None:
    """The columns of ``year``, ``month``, ``day`` and, if there, ``hour`` and ``minute`` (as
    the UCI air-quality and bike files write a time), in that order; None without all three
    of the first."""
    names = [_label(h) for h in header]
    found = [names.index(part) for part in TIME_PARTS if part in names]
    return found if len(found) >= 3 and all(p in names for p in TIME_PARTS[:3]) else None


HOUR_COLUMNS = ("hour", "hr", "hour_of_day")


def _hour_column(header: list[str], rows: list[list[str]]) -> int | None:
    """The column of a file whose first column is a date without a time of day that holds
    the hour (``hour`` or ``hr``, 0 to 23: the UCI bike hours' ``dteday`` and ``hr``, Seoul's
    bike demand's ``Date`` and ``Hour``); None when there is none.

    >>> _hour_column(["dteday", "season", "hr", "cnt"], [["2011-01-01", "1", "0", "16"]])
    2
    >>> _hour_column(["ts", "hr"], [["2011-01-01 00:00", "0"]]) is None  # a time already
    True
    """
    names = [_label(h) for h in header]
    found = next((names.index(name) for name in HOUR_COLUMNS if name in names[1:]), None)
    if found is None or not rows:
        return None
    if DATE_SHAPE.fullmatch(rows[0][0].strip()) is None:  # 2011-01-01, 1/1/2011, 1.1.2011
        return None
    hours = [row[found].strip() for row in rows]
    if not all(hour.isdigit() and int(hour) < 24 for hour in hours):
        return None
    return found


def _joined_time(row: list[str], parts: list[int], file: Path) -> str:
    """A row's time from its ``TIME_PARTS`` cells, as ISO 8601 without an offset."""
    try:
        numbers = [int(float(row[p])) for p in parts] + [0, 0]
    except ValueError:
        cells = [row[p] for p in parts]
        raise DatasetError(f"{file}: {cells} are not a year, month, day and hour") from None
    year, month, day, hour, minute = numbers[:5]
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:00"


def _without(row: list[str], parts: list[int]) -> list[str]:
    return [cell for i, cell in enumerate(row) if i not in parts]


def _without_text(
    cells: npt.NDArray[Any], sensors: list[str], first: int, file: Path, commas: str = DECIMAL
) -> tuple[npt.NDArray[Any], list[str]]:
    """The cells without the columns of text (a station's name, a wind direction: no cell a
    number), left out with a warning; a column of numbers with text among them stays, for
    ``_floats`` to refuse with the cell named."""
    text = [
        j
        for j in range(len(sensors))
        if not any(
            (cell := _normalised(c, commas)) != "nan" and _is_number(cell)
            for c in cells[:, first + j]
        )
    ]
    if not text:
        return cells, sensors
    log.warning("%s: columns %s hold no number: left out", file, [sensors[j] for j in text])
    keep = [j for j in range(len(sensors)) if j not in text]
    return cells[:, list(range(first)) + [first + j for j in keep]], [sensors[j] for j in keep]


# columns that say when, not what was measured (the UCI bike hours' season, yr, mnth, holiday,
# weekday and workingday; the European weather set's MONTH): a model reads the calendar from
# the times, and a forecast of them would only blur the accuracy of the real series
CALENDAR_COLUMNS = frozenset({
    "year", "yr", "month", "mnth", "mon", "day", "weekday", "dayofweek", "day_of_week", "dow",
    "week", "weekofyear", "quarter", "season", "seasons", "holiday", "workingday", "working_day",
    "weekend", "hour", "hr", "minute",
})  # fmt: skip


def _without_calendar(
    values: npt.NDArray[np.float64], sensors: list[str], file: Path
) -> tuple[npt.NDArray[np.float64], list[str]]:
    """A time-indexed file's values without its calendar columns (``CALENDAR_COLUMNS`` by
    name, whole numbers only), left out with a warning; a file of nothing else keeps them."""
    calendar = [
        j
        for j, name in enumerate(sensors)
        if _label(name) in CALENDAR_COLUMNS
        and np.array_equal(values[:, j], np.round(values[:, j]), equal_nan=True)
    ]
    if not calendar or len(calendar) == len(sensors):
        return values, sensors
    names = [sensors[j] for j in calendar]
    log.warning("%s: calendar columns %s left out (the times say when)", file, names)
    keep = [j for j in range(len(sensors)) if j not in calendar]
    return values[:, keep], [sensors[j] for j in keep]


# Names a long file's numeric sensor column goes by (``station_id``, ``node``, ``zone``...)
SENSOR_WORDS = ("sensor", "station", "site", "node", "id", "detector", "zone", "device", "meter")


def _long_layout(
    header: list[str], rows: list[list[str]], commas: str = DECIMAL
) -> tuple[int, int, list[int], list[int]] | None:
    """A long file whose columns are named otherwise (``station,datetime,pm25,pm10``; the
    Beijing stations' files concatenated): a column of times that repeat (``_time_first``
    joined them), a column that names the sensor (``_sensor_column``) and columns of numbers.
    Its time, sensor, number and text columns; None for any other layout (a wide file's
    times never repeat)."""
    time = _time_column(header, rows) if len(header) >= 3 else None
    if time is None:
        return None
    n_times = len({row[time] for row in rows})
    if n_times == len(rows):
        return None  # a wide file's times never repeat: it is read as one, once
    rest = [j for j in range(len(header)) if j != time]
    text = _text_columns(rows, rest, commas)
    sensor = _sensor_column(header, rows, time, rest, text, n_times)
    if sensor is None:
        return None
    numbers = [
        j for j in rest if j != sensor and j not in text and _label(header[j]) not in ROW_NUMBERS
    ]
    fixed = [j for j in numbers if _fixed_per_sensor(rows, sensor, j)]
    if fixed and len(fixed) < len(numbers):  # a station's latitude, longitude, elevation
        numbers = [j for j in numbers if j not in fixed]
        text = [*text, *fixed]
    return (time, sensor, numbers, [j for j in text if j != sensor]) if numbers else None


def _time_column(header: list[str], rows: list[list[str]]) -> int | None:
    """The one column named as times (``TIME_COLUMNS``), else the one whose first cell is a
    time; None where there is none, or more than one."""
    if not rows:
        return None
    times = [j for j, name in enumerate(header) if _label(name) in TIME_COLUMNS]
    times = times or [j for j, cell in enumerate(rows[0]) if _is_time(cell)]
    return times[0] if len(times) == 1 else None


def _text_columns(rows: list[list[str]], columns: list[int], commas: str) -> list[int]:
    """The columns of text among ``columns``: no number in 2,000 rows spread over the file."""
    sample = rows[:: max(1, len(rows) // 2000)]
    return [
        j for j in columns
        if not any((c := _normalised(row[j], commas)) != "nan" and _is_number(c) for row in sample)
    ]  # fmt: skip


def _fixed_per_sensor(rows: list[list[str]], sensor: int, column: int) -> bool:
    """Whether a column of numbers says one thing per sensor in every row, and not the same
    for all (a station's latitude or elevation, as NOAA's exports repeat them): metadata, not
    readings (a rain gauge's dry days read 0 at every station)."""
    seen: dict[str, str] = {}
    for row in rows:
        cell = row[column].strip()
        if cell and seen.setdefault(row[sensor].strip(), cell) != cell:
            return False
    return len(set(seen.values())) > 1


# What a melted file's column of readings is called when the sensor's id is a number too
VALUE_WORDS = ("value", "values", "val", "reading", "measurement", "result", "observation", "obs")
# What a melted file's column of variable names is called (``element``, ``parameter``...)
VARIABLE_WORDS = (
    "element", "parameter", "param", "variable", "measure", "metric", "pollutant", "quantity",
    "indicator", "signal", "field", "item", "species", "obs_type", "datatype", "data_type",
)  # fmt: skip
MAX_MELTED_CHANNELS = 500  # a column of names with more distinct ones is not a variable's


def _melted_layout(
    header: list[str], rows: list[list[str]], commas: str = DECIMAL
) -> tuple[int, int, int, int, list[int]] | None:
    """A melted (tidy) long file: a time, a sensor, a column that names the variable read and
    one of the readings (``station,date,element,value`` as GHCN writes,
    ``patient,minutes,parameter,value`` as PhysioNet's ICU files), maybe more (OpenAQ's
    ``location_id,sensors_id,location,datetime,lat,lon,parameter,units,value``): the time's,
    the sensor's, the variable's and the readings' columns, and the others (left out); None
    for any other layout. The sensor is the coarsest column with which a time and a variable
    name one reading (but for 10 %: repeats are averaged). Without a sensor
    (``date,element,value``) it is a long file whose sensors are the variables."""
    time = _time_column(header, rows) if len(header) >= 4 else None
    if time is None or 2 * len({row[time] for row in rows}) > len(rows):
        return None  # a wide file's times never repeat; a melted one's hold several readings
    sample = rows[:: max(1, len(rows) // 2000)]
    rest = [j for j in range(len(header)) if j != time]
    text = _text_columns(rows, rest, commas)
    variable = _variable_column(header, rows, text)
    numeric = [j for j in rest if j not in text]
    named = [j for j in numeric if _label(header[j]) in VALUE_WORDS]
    if variable is None or not numeric:
        return None
    if len(named) == 1 or len(numeric) == 1:
        value = (named or numeric)[0]
    elif len(header) == 4:  # an id and the readings: the readings take more values
        value = max(numeric, key=lambda j: len({row[j] for row in sample}))
    else:
        return None
    keyed = [j for j in rest if j not in (variable, value)]
    distinct = {
        j: len({row[j].strip() for row in rows})
        for j in keyed
        if len({(row[time], row[j].strip(), row[variable].strip()) for row in rows})
        >= 0.9 * len(rows)
    }
    if not distinct:
        return None
    sensor = min(distinct, key=lambda j: distinct[j])  # a location, not each of its instruments
    return time, sensor, variable, value, [j for j in keyed if j != sensor]


def _says_melted(header: list[str], layout: tuple[int, int, int, int, list[int]]) -> bool:
    """Whether a melted layout's header names its variable and readings so (``parameter``,
    ``value``): then it is read melted even where a column names each instrument (OpenAQ's
    ``sensors_id``), which would make a sensor of each variable at each location."""
    _, _, variable, value, _ = layout
    label = _label(header[variable])
    return any(w in label for w in VARIABLE_WORDS) and _label(header[value]) in VALUE_WORDS


def _variable_column(header: list[str], rows: list[list[str]], text: list[int]) -> int | None:
    """The column of text that names the variable read: of those with 2 to
    ``MAX_MELTED_CHANNELS`` names, the one named so (``VARIABLE_WORDS``), else the one not
    named like a sensor, else the one with the fewest names."""
    kinds = {j: len({row[j].strip() for row in rows}) for j in text}
    found = [j for j, n in kinds.items() if 2 <= n <= MAX_MELTED_CHANNELS]
    if len(found) <= 1:
        return found[0] if found else None
    named = [j for j in found if any(w in _label(header[j]) for w in VARIABLE_WORDS)]
    sensors = [j for j in found if any(w in _label(header[j]) for w in SENSOR_WORDS)]
    if len(named) == 1:
        return named[0]
    if len(sensors) == len(found) - 1:
        return next(j for j in found if j not in sensors)
    return min(found, key=lambda j: kinds[j])


def _read_melted(
    header: list[str],
    rows: list[list[str]],
    layout: tuple[int, int, int, int, list[int]],
    file: Path,
    commas: str = DECIMAL,
    bin_s: int | None = None,
) -> FileGrid:
    """A melted file as a long one: a channel per variable, the one with the most readings
    first (the one forecast), named in a warning; a reading repeated at a time averaged."""
    time, sensor, variable, value, left_out = layout
    if left_out:
        log.warning(
            "%s: columns %s left out: a melted file's readings are its %r column",
            file, [header[j] for j in left_out], header[value],
        )  # fmt: skip
    readings = _floats(np.array([row[value] for row in rows], dtype=object), file, commas)
    names = [row[variable].strip() for row in rows]
    counts = Counter(name for name, v in zip(names, readings, strict=True) if not math.isnan(v))
    channels = sorted(dict.fromkeys(names), key=lambda name: -counts[name])  # ties: first seen
    channel = {name: f for f, name in enumerate(channels)}
    keys = [(row[time], row[sensor].strip()) for row in rows]
    slots: dict[tuple[str, str], int] = {}
    at = np.array([slots.setdefault(key, len(slots)) for key in keys])
    f = np.array([channel[name] for name in names])
    sums, seen = np.zeros((len(slots), len(channels))), np.zeros((len(slots), len(channels)))
    ok = ~np.isnan(readings)
    np.add.at(sums, (at[ok], f[ok]), readings[ok])
    np.add.at(seen, (at[ok], f[ok]), 1)
    log.warning(
        "%s: read as a melted long file (sensor %r, time %r, variable %r, readings %r) of %d "
        "channels; %r, the one with the most readings, is forecast (--forecast-channel names "
        "another)",
        file, header[sensor], header[time],
        header[variable], header[value], len(channels), channels[0],
    )  # fmt: skip
    times_ms = _times_ms([moment for moment, _ in slots], file)
    values = np.where(seen > 0, sums / np.maximum(seen, 1), np.nan)
    grid = _long_to_grid([name for _, name in slots], times_ms, values, file, bin_s)
    return replace(grid, channels=channels)


def _sensor_column(
    header: list[str],
    rows: list[list[str]],
    time: int,
    rest: list[int],
    text: list[int],
    n_times: int,
) -> int | None:
    """The column that names each row's sensor: it reads once per time (but for 1 %) and
    takes about as many values as a time has rows (at most twice: sensors may miss times);
    a column of text, else of numbers named like a sensor (``SENSOR_WORDS``)."""
    found = []
    for j in rest:
        names = [row[j].strip() for row in rows]
        if len(set(names)) * n_times > 2 * len(rows):
            continue
        pairs = len({(row[time], name) for row, name in zip(rows, names, strict=True)})
        if pairs >= (1 - MAX_LEFT_OUT) * len(rows):
            found.append(j)
    named = [j for j in found if j in text] or [
        j for j in found if any(word in _label(header[j]) for word in SENSOR_WORDS)
    ]
    if len(named) > 1 and _same_partition(rows, named):  # an id and a name (NOAA's exports)
        worded = [j for j in named if any(word in _label(header[j]) for word in SENSOR_WORDS)]
        return (worded or named)[0]
    return named[0] if len(named) == 1 else None


def _same_partition(rows: list[list[str]], columns: list[int]) -> bool:
    """Whether the columns name the same groups of rows: each value of one goes with one
    value of every other (a station's id and its name)."""
    first = columns[0]
    pairs = {(row[first].strip(), tuple(row[j].strip() for j in columns[1:])) for row in rows}
    return (
        len(pairs)
        == len({row[first].strip() for row in rows})
        == len({tuple(row[j].strip() for j in columns[1:]) for row in rows})
    )


def _as_long(
    rows: list[list[str]],
    layout: tuple[int, int, list[int], list[int]],
    header: list[str],
    file: Path,
) -> tuple[list[list[str]], list[str]]:
    """The rows as ``sensor,ts,value[,value...]`` and the names of the values: each column
    of numbers a channel, the first the one forecast (named in a warning when there are
    others); columns of text left out, named in a warning."""
    time, sensor, numbers, text = layout
    channels = [header[j].strip() for j in numbers]
    if text:
        log.warning(
            "%s: columns %s left out: text, or one number per sensor throughout (a station's "
            "latitude...), not readings", file, [header[j] for j in text],
        )  # fmt: skip
    if len(numbers) > 1:
        log.warning(
            "%s: read as a long file (sensor %r, time %r) of %d channels %s; the first, %r, "
            "is the one forecast (--forecast-channel names another)",
            file, header[sensor], header[time], len(channels), channels, channels[0],
        )  # fmt: skip
    return [[row[sensor], row[time], *(row[j] for j in numbers)] for row in rows], channels


def _read_long(
    rows: list[list[str]],
    file: Path,
    commas: str = DECIMAL,
    channels: list[str] | None = None,
    bin_s: int | None = None,
) -> FileGrid:
    width = 2 + (len(channels) if channels else 1)
    if any(len(row) != width for row in rows):
        raise DatasetError(f"{file}: every row of a long CSV must be sensor,ts,value")
    sensors = [row[0].strip() for row in rows]
    times_ms = _times_ms([row[1] for row in rows], file)
    values = _floats(np.array([row[2:] for row in rows], dtype=object), file, commas)
    return replace(_long_to_grid(sensors, times_ms, values, file, bin_s), channels=channels)


def _read_ticks(file: Path, bin_s: int | None = None) -> FileGrid:
    """Ticks recorded from a ticks topic (``kcat -C -t stcast.ticks > ticks.jsonl``): a tick or
    a tick batch per line, read by the worker's own reference decoder (``chunks.ticks_of``); a
    line or tick the worker would dead-letter is left out, counted in a warning."""
    parse = TimestampParser()
    sensors: list[str] = []
    times: list[int] = []
    values: list[float] = []
    refused: list[str] = []
    with _open_text(file) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            for item, _ in ticks_of(Incoming(file.name, 0, number, None, line.encode())):
                try:
                    if isinstance(item, Rejected):
                        raise item
                    tick = tick_from_json(item, parse)
                except Rejected as why:
                    refused.append(f"line {number}: {why.detail}")
                    continue
                if tick.value is not None:
                    sensors.append(tick.sensor)
                    times.append(tick.ts_ms)
                    values.append(tick.value)
    if refused:
        log.warning(
            "%s: %d ticks or lines left out, as a worker would dead-letter them (first: %s)",
            file, len(refused), refused[0],
        )  # fmt: skip
    if not values:
        raise DatasetError(f"{file}: no tick with a reading (a line per tick or tick batch)")
    times_ms = np.asarray(times, dtype=np.int64)
    grid = _long_to_grid(sensors, times_ms, np.asarray(values, dtype=np.float64), file, bin_s)
    networks = {sensor.split("/")[0] for sensor in grid.sensor_ids if "/" in sensor}
    if len(networks) == 1 and all("/" in sensor for sensor in grid.sensor_ids):
        return replace(grid, name=networks.pop())  # the worker's names: ``network/sensor``
    return grid


def _read_parquet(file: Path, bin_s: int | None = None) -> FileGrid:
    """A long table (sensor, ts, value) in Parquet; needs pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{file}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    table = pq.read_table(file)
    names = {name.lower(): name for name in table.column_names}
    if not set(LONG_HEADER) <= names.keys():
        raise DatasetError(f"{file}: a Parquet dataset needs the columns {list(LONG_HEADER)}")
    ts = table[names["ts"]]
    if pa.types.is_timestamp(ts.type):
        if ts.type.tz is None:  # the file's own clock, labelled UTC (``_times_ms``)
            log.warning(NAIVE.format(file=file))
            ts = pc.assume_timezone(ts, "UTC")
        times_ms = pc.cast(pc.cast(ts, pa.timestamp("ms", tz="UTC")), pa.int64()).to_numpy()
    else:
        times_ms = _times_ms([str(t) for t in ts.to_pylist()], file)
    sensors = [str(s) for s in table[names["sensor"]].to_pylist()]
    values = table[names["value"]].to_numpy(zero_copy_only=False).astype(np.float64)
    return _long_to_grid(sensors, times_ms, values, file, bin_s)


def _long_to_grid(
    sensors: list[str],
    times_ms: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    file: Path,
    bin_s: int | None = None,
) -> FileGrid:
    """The (T, N, F) grid of long rows (``values`` (R,) or (R, F)); sensors in order of first
    appearance."""
    sensor_pos: dict[str, int] = {}
    columns = np.array([sensor_pos.setdefault(s, len(sensor_pos)) for s in sensors])
    axis = _regular_axis(times_ms, file, columns, bin_s)
    grid = axis.placed(values.reshape(len(values), -1), columns, len(sensor_pos))
    return FileGrid(grid, list(sensor_pos), axis.start, axis.step_s)


@dataclass(frozen=True)
class _Axis:
    """Where each reading goes: its step's index on the grid (``index``), the grid's start and
    step, which readings to place (``keep``), and whether several share a slot to be averaged
    (``binned``)."""

    index: npt.NDArray[np.int64]
    start: datetime
    step_s: int
    keep: npt.NDArray[np.bool_]
    binned: bool = False

    def placed(
        self,
        rows: npt.NDArray[np.float64],
        columns: npt.NDArray[np.int64] | None = None,
        width: int = 0,
    ) -> npt.NDArray[np.float64]:
        """The (T, N, F) grid of ``rows``: (R, N, F) a time's readings (wide), or (R, F) a
        sensor's (long; its sensor in ``columns``, ``width`` sensors); a slot's readings
        averaged where binned."""
        steps = int(self.index.max()) + 1
        at: tuple[npt.NDArray[np.int64], ...]
        if columns is None:
            shape, at = (steps, *rows.shape[1:]), (self.index[self.keep],)
        else:
            shape, at = (steps, width, rows.shape[1]), (self.index[self.keep], columns[self.keep])
        kept = rows[self.keep]
        grid = np.full(shape, np.nan)
        if not self.binned:
            grid[at] = kept
            return grid
        sums, counts = np.zeros(shape), np.zeros(shape)
        seen = ~np.isnan(kept)
        np.add.at(sums, at, np.where(seen, kept, 0.0))
        np.add.at(counts, at, seen)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _regular_axis(
    times_ms: npt.NDArray[np.int64],
    file: Path,
    columns: npt.NDArray[np.int64] | None = None,
    bin_s: int | None = None,
) -> _Axis:
    """Each time's step index on the grid, the grid's start and step (the commonest gap), and
    which readings to place. Times off that grid by a few seconds (a logger's jitter) are
    placed on the nearest slot of a usual step, as a worker places ticks (``_snapped``);
    ``columns`` (a long file's sensor of each reading) tells whose slot it is. Times on no
    such grid are averaged into slots of ``bin_s`` where given (``_binned``)."""
    distinct = np.unique(times_ms)
    if len(distinct) < 2:
        raise DatasetError(f"{file}: at least two distinct times are needed to find the step")
    step_ms = Counter(np.diff(distinct).tolist()).most_common(1)[0][0]
    offsets = times_ms - distinct[0]
    every = np.ones(len(times_ms), dtype=bool)
    if step_ms % 1000 == 0 and not np.any(offsets % step_ms):
        start = datetime.fromtimestamp(int(distinct[0]) / 1000, tz=UTC)
        return _Axis(offsets // step_ms, start, int(step_ms // 1000), every)
    days = step_ms / 86_400_000
    if 28 <= days <= 31 or 89 <= days <= 92 or 365 <= days <= 366:
        raise DatasetError(
            f"{file}: the times are a calendar {_calendar_step(days)} apart, whose length "
            "varies; stcast's grid steps by a fixed number of seconds (from minutes to weeks)"
        )
    snapped = _snapped(times_ms, distinct, file, columns)
    if snapped is not None:
        return _Axis(*snapped)
    middle = _duration(int(np.median(np.diff(distinct))))
    if bin_s:
        return _binned(times_ms, bin_s, file, f"gaps of {middle} in the middle")
    raise DatasetError(
        f"{file}: times are not on a regular grid (gaps of {_duration(step_ms)} most often, "
        f"{middle} in the middle); give the step to average them into (--dataset-step-s 300, "
        "or step_s in stcast.json)"
    )


def _binned(times_ms: npt.NDArray[np.int64], bin_s: int, file: Path, why: str) -> _Axis:
    """Irregular times (events, a logger that samples when it can) in slots of ``bin_s`` on
    whole steps since the epoch, each slot the mean of its readings (``_Axis.placed``)."""
    slots = times_ms // (bin_s * 1000)
    start = datetime.fromtimestamp(int(slots.min()) * bin_s, tz=UTC)
    log.warning(
        "%s: times are not on a regular grid (%s): readings averaged into slots of %s",
        file, why, _duration(bin_s * 1000),
    )  # fmt: skip
    return _Axis(slots - slots.min(), start, bin_s, np.ones(len(times_ms), dtype=bool), True)


# Grid steps readings are logged at, in seconds: a file whose times wander around one of these
# by a few seconds is put on it (``_snapped``)
USUAL_STEPS_S = (
    1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 240, 300, 360, 600, 720, 900, 1200, 1800,
    3600, 7200, 10800, 14400, 21600, 28800, 43200, 86400, 604800,
)  # fmt: skip
SNAP_TOLERANCE = 0.1  # the middle gap within 10 % of the usual step
MAX_LEFT_OUT = 0.01  # at most 1 % of the readings left out: a repeated time, a slot taken


def _snapped(
    times_ms: npt.NDArray[np.int64],
    distinct: npt.NDArray[np.int64],
    file: Path,
    columns: npt.NDArray[np.int64] | None,
) -> tuple[npt.NDArray[np.int64], datetime, int, npt.NDArray[np.bool_]] | None:
    """The axis of times that jitter around a usual step (``USUAL_STEPS_S``): each reading on
    the slot nearest its time, on the grid a worker uses (whole steps since the epoch) unless
    the readings keep to another phase (``_phase``), the first of a sensor's readings for a
    slot kept as a worker keeps it; None where the middle gap is no usual step or too many
    readings would share a slot."""
    middle = float(np.median(np.diff(distinct))) / 1000
    step_s = min(USUAL_STEPS_S, key=lambda usual: abs(np.log(middle / usual)))
    if abs(middle / step_s - 1) > SNAP_TOLERANCE:
        return None
    step_ms = step_s * 1000
    phase = _phase(times_ms, step_ms)
    slots = (times_ms - phase + step_ms // 2) // step_ms  # as the pipeline places a tick
    index = slots - slots.min()
    owner = index if columns is None else index * (int(columns.max()) + 1) + columns
    keep = np.zeros(len(times_ms), dtype=bool)
    keep[np.unique(owner, return_index=True)[1]] = True  # the first reading of each slot
    left_out = int(len(keep) - keep.sum())
    if left_out > MAX_LEFT_OUT * len(keep):
        return None
    shift = int(np.abs(times_ms - phase - slots * step_ms).max())
    log.warning(
        "%s: times are not on a regular grid; each reading is placed on the nearest step of "
        "%s, as a worker places ticks (moved by up to %s%s)",
        file, _duration(step_ms), _duration(shift),
        f"; {left_out} left out, their slot taken by an earlier reading" if left_out else "",
    )  # fmt: skip
    start = datetime.fromtimestamp(int(slots.min() * step_ms + phase) / 1000, tz=UTC)
    return index, start, step_s, keep


def _phase(times_ms: npt.NDArray[np.int64], step_ms: int) -> int:
    """Where in a step the readings fall, from the epoch: 0 (the grid a worker uses) when they
    jitter around whole steps since the epoch, as loggers stamp them; else their middle
    offset (daily readings taken at 13:00 stay at 13:00, on their own weekday)."""
    first = int(times_ms[0])
    around = (times_ms - first + step_ms // 2) % step_ms - step_ms // 2  # off the first's phase
    phase = (first + int(np.median(around))) % step_ms
    near_zero = min(phase, step_ms - phase) <= SNAP_TOLERANCE * step_ms
    return 0 if near_zero else phase


def _duration(ms: int) -> str:
    """``ms`` as people write a step: 300000 -> '5 min'."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms / 1000:g} s"


def _calendar_step(days: float) -> str:
    return "month" if days < 32 else "quarter" if days < 93 else "year"


# How spreadsheets, R, pandas and station exports write a missing reading (compared lower-cased
# and stripped), and the errors Excel writes into a cell it could not compute
MISSING = frozenset({
    "", "na", "n/a", "n.a.", "nan", "null", "none", "-", "--", "---", "?", "nd", "no data",
    "nodata", "missing", "err", "error",
    "#n/a", "#div/0!", "#value!", "#ref!", "#num!", "#name?", "#null!",
})  # fmt: skip
DECIMAL_COMMA = re.compile(r"[-+]?\d+,\d+")
GROUPED = {
    THOUSANDS: re.compile(r"[-+]?[1-9]\d{0,2}(,\d{3})+(\.\d+)?"),
    DECIMAL: re.compile(r"[-+]?[1-9]\d{0,2}(\.\d{3})+,\d+"),
}


def _floats(cells: npt.NDArray[Any], file: Path, commas: str = DECIMAL) -> npt.NDArray[np.float64]:
    """The cells as numbers; a missing reading (``MISSING``) is NaN, a comma read as
    ``commas`` says (``THOUSANDS`` or ``DECIMAL``)."""
    filled = np.where(cells == "", "nan", cells)
    try:
        return filled.astype(np.float64)
    except ValueError:
        pass
    filled = np.vectorize(lambda cell: _normalised(cell, commas), otypes=[object])(cells)
    try:
        numbers: npt.NDArray[np.float64] = filled.astype(np.float64)
        return numbers
    except ValueError:
        flat = filled.reshape(-1)
        bad = next((i for i, cell in enumerate(flat) if not _is_number(cell)), 0)
        where = np.unravel_index(bad, filled.shape)
        raise DatasetError(
            f"{file}: {flat[bad]!r} (data row {where[0] + 1}"
            + (f", value column {where[1] + 1}" if filled.ndim > 1 else "")
            + ") is not a number; leave a missing reading empty or write NA, NaN or null"
        ) from None


def _normalised(cell: object, commas: str = DECIMAL) -> str:
    """A cell as ``float`` reads it: a missing reading as ``nan``, a decimal comma (``2,6``
    from a ``;``-separated European export) as a point, thousands ungrouped (``GROUPED``).

    >>> _normalised("1,234.5", THOUSANDS), _normalised("1.234,5"), _normalised("2,6")
    ('1234.5', '1234.5', '2.6')
    >>> _normalised("12,5", THOUSANDS), _normalised("0,125", THOUSANDS), _normalised("1.234")
    ('12.5', '0.125', '1.234')
    """
    text = str(cell).strip()
    if text.lower() in MISSING:
        return "nan"
    if GROUPED[commas].fullmatch(text):
        text = text.replace("," if commas == THOUSANDS else ".", "")
    return text.replace(",", ".") if DECIMAL_COMMA.fullmatch(text) else text


def _is_time(cell: str) -> bool:
    """A date and time (``2024-01-01T00:00:00Z``, ``2024-01-01 00:00``, ``1/7/2016 0:00``): a
    first column of them is the time column whatever its header says (``Zeit``,
    ``DateTime``...). A number has no ``/``, ``:`` or second dot, so it is never one."""
    text = _zone_as_offset(cell.strip())
    if "-" in text[1:] and (":" in text or ISO_DATE.fullmatch(text)) and _is_iso(text):
        return True
    if "/" not in text and ":" not in text and text.count(".") != 2:
        return False
    return bool(_formats_reading(text))


ZONE_NAME = re.compile(r"(?<=\d)\s*(UTC|GMT|Z)$", re.IGNORECASE)


def _zone_as_offset(text: str) -> str:
    """A time that names its zone UTC or GMT (``2016-07-01 00:00:00 UTC``, as BigQuery and many
    databases export it) with the offset those are, ``+00:00``.

    >>> _zone_as_offset("2016-07-01 00:00:00 UTC"), _zone_as_offset("2016-07-01")
    ('2016-07-01 00:00:00+00:00', '2016-07-01')
    """
    return ZONE_NAME.sub("+00:00", text)


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?(Z|[+-]\d{2}:?\d{2})?")
DOTTED_CLOCK = re.compile(r"(\d{1,2}\.\d{2}\.\d{2})(.*)")  # 18.00.00: never a number


def _date_and_clock(row: list[str]) -> str | None:
    """A row's first two cells as one time when they are a date and a time of day
    (``2004-03-10`` or ``10/03/2004``, and ``18:00:00``, or ``18.00.00`` as some exports
    write it, with or without an offset): ``2004-03-10T18:00:00``; None when they are not.

    >>> _date_and_clock(["2004-03-10", "18.00.00", "2.6"]), _date_and_clock(["1", "2", "3"])
    ('2004-03-10T18:00:00', None)
    >>> _date_and_clock(["10/03/2004", "18.00.00", "2,6"])
    '10/03/2004 18:00:00'
    """
    day, text = row[0].strip(), row[1].strip()
    dotted = DOTTED_CLOCK.fullmatch(text)
    if dotted is not None:
        text = dotted.group(1).replace(".", ":") + dotted.group(2)
    clock = CLOCK.fullmatch(text)
    if clock is None:
        return None
    hour, minute, second, offset = clock.groups()
    time_of_day = f"{int(hour):02d}:{minute}:{second or '00'}{offset or ''}"
    if len(day) == 10 and day[4] == "-":
        try:
            date.fromisoformat(day)  # a calendar date, nothing more (the length says so)
        except ValueError:
            return None
        return f"{day}T{time_of_day}"
    if DATE_SHAPE.fullmatch(day) is None:  # the column's reader checks the date itself
        return None
    return f"{day} {time_of_day}"


def _is_number(cell: object) -> bool:
    try:
        float(str(cell))
    except ValueError:
        return False
    return True


NAIVE = (
    "{file}: times carry no UTC offset; read as UTC, so that time of day and weekday follow "
    "the file's own clock (as the model was pre-trained); add an offset to the times to say "
    "otherwise"
)
# Dates as exports write them beside ISO 8601 (``datetime.fromisoformat``): year first with
# slashes or unpadded dashes, day or month first with slashes or dots; a time of day and an
# offset may follow. A column is read with one format: where the day may come first or second
# (no day above 12), the reading whose times fall on the most regular grid.
DATE_FORMATS = (
    "%Y/%m/%d", "%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y",
    "%d-%b-%Y", "%d %b %Y", "%b %d %Y",  # 01-Jul-2016, 1 Jul 2016, Jul 1 2016 (SQL Server's)
)  # fmt: skip
CLOCK_FORMATS = (
    "", " %H:%M", " %H:%M:%S", " %H:%M:%S.%f", "T%H:%M", "T%H:%M:%S",
    " %I:%M %p", " %I:%M:%S %p", " %I:%M%p",  # 12:05 AM, as US spreadsheets write it
)  # fmt: skip
TIME_FORMATS = tuple(
    d + c + z for d in DATE_FORMATS for c in CLOCK_FORMATS for z in ("", "%z", " %z")
)
DATE_SHAPE = re.compile(r"\d{1,4}([/.-])\d{1,2}\1\d{1,4}")
ACCEPTED = (
    "RFC 3339 (2024-01-31T00:00:00Z), ISO 8601 without an offset (2024-01-31 00:00), "
    "2024/1/31 0:00, 31/1/2024 00:00 or 1/31/2024 12:00 AM (day or month first), 31.1.2024, "
    "31-Jan-2024, Jan 31 2024 12:00AM, 20240131, or epoch seconds or milliseconds"
)


def _times_ms(
    cells: list[str], file: Path, compact: list[datetime] | None = None
) -> npt.NDArray[np.int64]:
    """Epoch milliseconds of a column of times (``ACCEPTED``), each cell an integer (epoch
    seconds or milliseconds, ``EPOCH_S``) or a time. Times without an offset are read as UTC
    (``NAIVE``); a column may not mix times with and without one. ``compact``: the column
    already read as compact dates."""
    texts = [_zone_as_offset(cell.strip()) for cell in cells]
    out = np.zeros(len(texts), dtype=np.int64)
    compact = compact if compact is not None else _compact_moments(texts)
    if not compact and (seconds := _epoch_fractions(texts)) is not None:
        return seconds
    timed = [i for i, text in enumerate(texts) if compact or not text.lstrip("-").isdigit()]
    for i in set(range(len(texts))) - set(timed):
        out[i] = int(texts[i])
    if not timed:
        if len(out) and ((EPOCH_S[0] <= out) & (out < EPOCH_S[1])).all():
            return out * 1000  # epoch seconds, as Unix tools write times
        return out
    moments = compact or _moments([texts[i] for i in timed], file)
    aware = [moment.utcoffset() is not None for moment in moments]
    if not all(aware):
        if any(aware):
            odd = timed[aware.index(not aware[0])]
            raise DatasetError(
                f"{file}: time {texts[odd]!r} (data row {odd + 1}) "
                f"{'lacks' if aware[0] else 'has'} a UTC offset, unlike the times before it"
            )
        log.warning(NAIVE.format(file=file))
        moments = [moment.replace(tzinfo=UTC) for moment in moments]
    out[timed] = [round(moment.timestamp() * 1000) for moment in moments]
    return out


COMPACT_FORMATS = {8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M"}
# A column of integers all in this range is epoch seconds (1973-03-03 to 5138), else epoch
# milliseconds (those of 1970-1973 alone would fall in it)
EPOCH_S = (10**8, 10**11)


EPOCH_FRACTION = re.compile(r"\d+\.\d+")


def _epoch_fractions(texts: list[str]) -> npt.NDArray[np.int64] | None:
    """Epoch milliseconds of epoch seconds written with a fraction (``1467331200.25``, as
    Python's ``time.time()`` and many loggers write them), or None when the column is not
    one: some cell has a fraction and every cell is a number of seconds in ``EPOCH_S``.

    >>> _epoch_fractions(["1467331200.25", "1467331500"]).tolist()
    [1467331200250, 1467331500000]
    >>> _epoch_fractions(["1467331200", "1467331500"]) is None  # integers: read as before
    True
    """
    if not any(EPOCH_FRACTION.fullmatch(text) for text in texts):
        return None
    if not all(EPOCH_FRACTION.fullmatch(text) or text.isdigit() for text in texts):
        return None
    seconds = np.array(texts, dtype=np.float64)
    if not ((EPOCH_S[0] <= seconds) & (seconds < EPOCH_S[1])).all():
        return None
    return np.round(seconds * 1000).astype(np.int64)


def _compact_moments(cells: list[str]) -> list[datetime] | None:
    """The times of a column of compact dates (``20000101``, as the European weather set and
    many archives write them; ``2000010113`` with the hour, ``200001011330`` with minutes), or
    None when it is not one: every cell of the same length, and each a valid date from 1800
    to 2200 (epoch milliseconds, read as such, never are: at any regular step their last
    digits run past a valid month, day, hour or minute).

    >>> [f"{t:%Y-%m-%d %H:%M}" for t in _compact_moments(["20000101", "20000102"]) or []]
    ['2000-01-01 00:00', '2000-01-02 00:00']
    >>> _compact_moments(["1467331200000", "1467331500000"]) is None  # epoch ms
    True
    """
    fmt = COMPACT_FORMATS.get(len(cells[0].strip())) if cells else None
    if fmt is None:  # most columns are told apart by their first cell, without reading on
        return None
    texts = [cell.strip() for cell in cells]
    if not all(len(text) == len(texts[0]) and text.isdigit() for text in texts):
        return None
    try:
        moments = [datetime.strptime(text, fmt) for text in texts]  # noqa: DTZ007 (naive: UTC)
    except ValueError:
        return None
    return moments if all(1800 <= moment.year <= 2200 for moment in moments) else None


def _moments(texts: list[str], file: Path) -> list[datetime]:
    """The times of ``texts``: all ISO 8601, or all of one ``TIME_FORMATS`` format."""
    try:
        return [datetime.fromisoformat(text) for text in texts]
    except ValueError:
        pass
    # month first where the clock says AM or PM (a US export), where both would read
    formats = sorted(
        _formats_reading(texts[0]), key=lambda f: not (f.startswith("%m/%d") and "%p" in f)
    )
    readings = []
    for fmt in formats:
        try:
            readings.append([datetime.strptime(text, fmt) for text in texts])  # noqa: DTZ007
        except ValueError:
            continue
    if readings:
        return max(readings, key=_regularity)  # the first of the most regular
    for row, text in enumerate(texts):  # the first time the first one's formats do not read
        if _is_iso(text) or any(_reads(text, fmt) for fmt in formats):
            continue
        if row == 0 or not (_is_iso(text) or _formats_reading(text)):
            raise DatasetError(f"{file}: {text!r} (data row {row + 1}) is not a time: {ACCEPTED}")
        raise DatasetError(
            f"{file}: {text!r} (data row {row + 1}) is not written like {texts[0]!r} before it"
        )
    raise DatasetError(f"{file}: the times are not all written the same way (e.g. {texts[0]!r})")


def _reads(text: str, fmt: str) -> bool:
    try:
        datetime.strptime(text, fmt)  # noqa: DTZ007 (an offset is checked by the caller)
    except ValueError:
        return False
    return True


def _formats_reading(text: str) -> list[str]:
    """The ``TIME_FORMATS`` that read ``text``."""
    return [fmt for fmt in TIME_FORMATS if _reads(text, fmt)]


def _is_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _regularity(moments: list[datetime]) -> float:
    """The share of the commonest gap between the distinct times, in order."""
    stamps = np.unique([moment.timestamp() for moment in moments])
    if len(stamps) < 2:
        return 0.0
    _, counts = np.unique(np.diff(stamps), return_counts=True)
    return float(counts.max() / counts.sum())
