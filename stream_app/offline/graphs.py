"""Sensor graphs: who informs whom in a network, as a dense (N, N) weight matrix.

``SensorGraph.weights[i, j] > 0`` means sensor ``j``'s readings are context for sensor ``i``.
Given graphs come from edge lists (``from,to[,weight|cost]``), N x N matrices (CSV, npz, or
the ``adj_mx.pkl`` that METR-LA and PEMS-BAY come with), the NYC zone adjacency, or station
coordinates; where a network has none, ``correlation_graph`` learns one from the training rows.
``neighbours`` turns any graph into the fixed-size neighbour lists a model takes.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..core.forecasters import FloatArray, IntArray
from .dataset_files import PICKLE_SUFFIXES, DatasetError, unpickled

DISTANCE_COLUMNS = ("cost", "distance", "dist", "length")


@dataclass(frozen=True, eq=False)
class SensorGraph:
    """Nonnegative (N, N) float64 weights with a zero diagonal, and where they came from."""

    weights: FloatArray
    source: str

    def __post_init__(self) -> None:
        w = self.weights
        if w.ndim != 2 or w.shape[0] != w.shape[1] or w.dtype != np.float64:
            raise DatasetError(f"graph weights must be (N, N) float64, got {w.shape} {w.dtype}")
        if not np.isfinite(w).all() or (w < 0).any() or np.diagonal(w).any():
            raise DatasetError(f"{self.source}: weights must be finite, >= 0, zero on the diagonal")

    @property
    def n_sensors(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_edges(self) -> int:
        """Directed edges (nonzero weights)."""
        return int(np.count_nonzero(self.weights))

    def subset(self, keep: Sequence[int] | IntArray) -> SensorGraph:
        """The graph among the sensors ``keep`` (indices, in their new order)."""
        index = np.asarray(keep, dtype=np.int64)
        return SensorGraph(self.weights[np.ix_(index, index)].copy(), self.source)


def from_weights(weights: npt.ArrayLike, source: str, *, symmetric: bool = True) -> SensorGraph:
    """A graph from any (N, N) weights: diagonal cleared, ``max(W, W.T)`` when ``symmetric``.

    Road and zone graphs are symmetrised because a sensor learns from the detectors both up and
    down the road (as Los-loop's published matrix, ``max(A, A.T)`` of DCRNN's, already is).
    """
    w = np.array(weights, dtype=np.float64)
    np.fill_diagonal(w, 0.0)
    return SensorGraph(np.maximum(w, w.T) if symmetric else w, source)


def graph_beside(dataset_path: Path) -> Path | None:
    """The graph shipped beside a dataset, if any: a CSV named like its folder (PEMS08's
    ``PEMS08.csv``), ``adjacency.csv``, or DCRNN's ``adj_mx.pkl`` as METR-LA and PEMS-BAY come
    with it; never the data file itself."""
    folder = dataset_path if dataset_path.is_dir() else dataset_path.parent
    candidates = (folder / f"{folder.name}.csv", folder / "adjacency.csv", folder / "adj_mx.pkl")
    for candidate in candidates:
        if candidate.is_file() and candidate != dataset_path:
            return candidate
    return None


def load_graph(path: str | Path, sensors: Sequence[str], *, symmetric: bool = True) -> SensorGraph:
    """A user's graph file aligned with ``sensors``: an edge list or an N x N matrix.

    Edge list CSV: header ``from,to`` and optionally a third column; ends are sensor ids (full,
    ``net/17``, or local, ``17``) or indices into ``sensors``. A third column named ``cost``,
    ``distance``, ``dist`` or ``length`` is a distance (see ``distance_weights``), any other is
    a weight; none gives weight 1. Matrix: ``.npz`` (key ``adj_mx``, ``adj`` or the only array) or
    a CSV of N rows of N numbers, optionally with a header row and a first column of sensor ids.
    """
    file = Path(path)
    if file.suffix == ".npz":
        return from_weights(_npz_matrix(file), f"matrix:{file.name}", symmetric=symmetric)
    if file.suffix in PICKLE_SUFFIXES:
        ids, matrix = _pickled_matrix(file)
        matrix = _ordered(matrix, ids, sensors, file)
        return from_weights(matrix, f"matrix:{file.name}", symmetric=symmetric)
    rows = _csv_rows(file)
    header = [cell.strip().lower() for cell in rows[0]]
    if header[:2] == ["from", "to"]:
        return _edge_graph(rows, sensors, file, symmetric)
    matrix = _matrix(rows, sensors, file)
    return from_weights(matrix, f"matrix:{file.name}", symmetric=symmetric)


def _edge_graph(
    rows: list[list[str]], sensors: Sequence[str], file: Path, symmetric: bool
) -> SensorGraph:
    header = [cell.strip().lower() for cell in rows[0]]
    known = _positions(sensors)
    ends = np.array([[_resolve(r[k], known, len(sensors), file) for k in (0, 1)] for r in rows[1:]])
    if len(header) < 3:
        weights, kind = np.ones(len(ends)), "edges"
    elif header[2] in DISTANCE_COLUMNS:
        weights, kind = distance_weights(_numbers(rows[1:], 2, file)), "edges:inverse-distance"
    else:
        weights, kind = _numbers(rows[1:], 2, file), "edges:weight"
    w = np.zeros((len(sensors), len(sensors)))
    np.maximum.at(w, (ends[:, 0], ends[:, 1]), weights)
    return from_weights(w, f"{kind}:{file.name}", symmetric=symmetric)


def distance_weights(distances: FloatArray) -> FloatArray:
    """Inverse-distance weights ``min(d) / d`` in (0, 1] of the listed edges' distances.

    Not a Gaussian kernel: an edge list already names each sensor's road neighbours, and
    DCRNN's kernel ``exp(-(d / std)^2)`` would weigh half of PEMS08's listed links below 0.1 and
    its longest at 1e-100, deleting links the source lists. Inverse distance keeps every link,
    still favours the nearer one, and does not depend on the distance's unit (PEMS never states
    it).
    """
    if (distances <= 0).any():
        raise DatasetError("edge distances must be positive")
    return np.asarray(distances.min() / distances, dtype=np.float64)


def zone_graph(path: str | Path, sensors: Sequence[str]) -> SensorGraph:
    """NYC's zone adjacency for series ``<net>/<mode>/<zone>/<in|out>``: a series is linked
    to the series of the same mode and direction in every adjacent zone."""
    file = Path(path)
    rows = _csv_rows(file)
    zones = {z.strip(): i for i, z in enumerate(rows[0][1:])}
    adjacent = _numbers([r[1:] for r in rows[1:]], slice(None), file)
    keys = [_local(s).split("/") for s in sensors]  # [mode, zone, direction]
    zone = np.array([zones[z] for _, z, _ in keys])
    w = np.zeros((len(sensors), len(sensors)))
    for kind in {(mode, way) for mode, _, way in keys}:
        same = np.array([i for i, (m, _, d) in enumerate(keys) if (m, d) == kind])
        w[np.ix_(same, same)] = adjacent[np.ix_(zone[same], zone[same])] > 0
    return from_weights(w, f"zones:{file.name}")


def knn_graph(path: str | Path, sensors: Sequence[str], k: int = 4) -> SensorGraph:
    """Each station linked to its ``k`` nearest by great-circle distance (``name,lat,lon``
    columns; a sensor ``net/NAME/var`` is station NAME), with inverse-distance weights."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        where = {r["name"]: (float(r["lat"]), float(r["lon"])) for r in csv.DictReader(f)}
    coords = np.radians([where[_local(s).split("/")[0]] for s in sensors])
    dist = _haversine_km(coords)
    np.fill_diagonal(dist, np.inf)
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(len(sensors)), nearest.shape[1])
    w = np.zeros_like(dist)
    w[rows, nearest.ravel()] = distance_weights(dist[rows, nearest.ravel()])
    return from_weights(w, f"knn{k}:{Path(path).name}")


def _haversine_km(coords: FloatArray) -> FloatArray:
    lat, lon = coords[:, 0], coords[:, 1]
    a = (
        np.sin((lat[:, None] - lat) / 2) ** 2
        + np.cos(lat[:, None]) * np.cos(lat) * np.sin((lon[:, None] - lon) / 2) ** 2
    )
    return np.asarray(2 * 6371.0 * np.arcsin(np.sqrt(a)), dtype=np.float64)


def correlation_graph(values_train: FloatArray, k: int = 8, min_rows: int = 24) -> SensorGraph:
    """Each series linked to the ``k`` others it correlates with most, weight = Pearson r > 0.

    ``values_train`` is (T, N), NaN where missing, and must hold training rows only: the graph
    is part of the model's input, so it may not see the rows it is scored on. Each pair's r is
    computed over the rows where both are present; pairs with fewer than ``min_rows`` such rows,
    or a constant series among them, get 0.
    """
    r = pairwise_correlation(values_train, min_rows)
    np.fill_diagonal(r, 0.0)
    r = np.clip(r, 0.0, None)
    w = np.zeros_like(r)
    top = np.argsort(-r, axis=1, kind="stable")[:, :k]
    rows = np.arange(r.shape[0])[:, None]
    w[rows, top] = r[rows, top]
    return SensorGraph(w, f"correlation:top{k}")


def pairwise_correlation(values: FloatArray, min_rows: int = 2) -> FloatArray:
    """(N, N) Pearson r of every pair over the rows where both are present; NaN-free (0 where
    undefined). Sums over pairwise rows come from masked matrix products, so it is O(T N^2)."""
    present = (~np.isnan(values)).astype(np.float64)
    counts = present.sum(axis=0)  # a sensor with no reading at all is centred on 0
    means = np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), 0.0)
    x = np.nan_to_num(values - means)  # centring keeps the sums well scaled
    n = present.T @ present
    sx = x.T @ present  # sx[i, j]: sum of series i over the rows where j is present too
    sxx = (x * x).T @ present
    sxy = x.T @ x
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sx.T / n
        var = sxx - sx * sx / n
        r = cov / np.sqrt(var * var.T)
    flat = var <= 1e-12 * sxx  # constant over the shared rows, up to rounding
    ok = (n >= max(min_rows, 2)) & ~flat & ~flat.T
    return np.where(ok & np.isfinite(r), np.clip(r, -1.0, 1.0), 0.0)


def neighbours(graph: SensorGraph, k: int) -> tuple[IntArray, npt.NDArray[np.float32]]:
    """Each sensor's ``k`` heaviest in-neighbours: index (N, k) int64, -1 as padding, and
    weight (N, k) float32 summing to 1 over the real neighbours (0 on padding).

    >>> g = from_weights([[0, 2, 1], [2, 0, 0], [1, 0, 0]], "toy")
    >>> index, weight = neighbours(g, 2)
    >>> index.tolist(), weight.astype(float).round(3).tolist()
    ([[1, 2], [0, -1], [0, -1]], [[0.667, 0.333], [1.0, 0.0], [1.0, 0.0]])
    """
    n = graph.n_sensors
    width = max(0, min(k, n - 1))
    order = np.argsort(-graph.weights, axis=1, kind="stable")[:, :width]
    w = np.take_along_axis(graph.weights, order, axis=1)
    index = np.where(w > 0, order, -1).astype(np.int64)
    total = w.sum(axis=1, keepdims=True)
    share = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    if width < k:  # fewer other sensors than k: pad the columns too
        index = np.pad(index, ((0, 0), (0, k - width)), constant_values=-1)
        share = np.pad(share, ((0, 0), (0, k - width)))
    return index, share.astype(np.float32)


def _csv_rows(file: Path) -> list[list[str]]:
    if not file.exists():
        raise DatasetError(f"{file} does not exist")
    with file.open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    if not rows:
        raise DatasetError(f"{file}: empty graph file")
    return rows


def _numbers(rows: list[list[str]], column: int | slice, file: Path) -> FloatArray:
    try:
        return np.array([r[column] for r in rows], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise DatasetError(f"{file}: a graph cell is not a number ({exc})") from exc


def _matrix(rows: list[list[str]], sensors: Sequence[str], file: Path) -> FloatArray:
    """An N x N matrix CSV, reordered to ``sensors`` when it names its rows or columns.

    The first row is a header when it holds a word or when there is one row more than columns;
    the first column holds labels when each remaining row is one cell wider than it is tall.
    """
    ids: list[str] | None = None
    if len(rows) == len(rows[0]) + 1 or not all(_is_number(c) for c in rows[0]):
        ids, rows = [c.strip() for c in rows[0]], rows[1:]
    labelled = all(len(r) == len(rows) + 1 for r in rows)
    if labelled:
        ids = [r[0].strip() for r in rows]
    matrix = _numbers([r[1:] if labelled else r for r in rows], slice(None), file)
    return _ordered(matrix, ids, sensors, file)


def _ordered(
    matrix: FloatArray, ids: list[str] | None, sensors: Sequence[str], file: Path
) -> FloatArray:
    """``matrix`` reordered to ``sensors`` by its row ids (as it is without them)."""
    if matrix.shape != (len(sensors), len(sensors)):
        raise DatasetError(f"{file}: a {matrix.shape} matrix for {len(sensors)} sensors")
    if ids is None:
        return matrix
    known = {sensor_id: i for i, sensor_id in enumerate(ids[-len(sensors) :])}
    order = [known.get(s, known.get(_local(s), -1)) for s in sensors]
    if min(order) < 0:
        missing = [s for s, i in zip(sensors, order, strict=True) if i < 0][:3]
        raise DatasetError(f"{file}: no row or column for the sensors {missing}")
    return matrix[np.ix_(order, order)]


def _npz_matrix(file: Path) -> FloatArray:
    with np.load(file) as archive:
        keys = [k for k in ("adj_mx", "adj") if k in archive.files] or archive.files
        arrays = [archive[k] for k in keys if archive[k].ndim == 2]
    if not arrays:
        raise DatasetError(f"{file}: no (N, N) array (use the key 'adj_mx')")
    return np.asarray(arrays[0], dtype=np.float64)


def _pickled_matrix(file: Path) -> tuple[list[str] | None, FloatArray]:
    """The sensor ids and the (N, N) matrix of a pickled graph: DCRNN's ``(sensor_ids,
    sensor_id_to_ind, adj_mx)``, or a bare matrix. Only arrays, lists, tuples, dicts and
    text are unpickled: a pickle that would run code is refused."""
    loaded = unpickled(file, "graph")
    parts = list(loaded) if isinstance(loaded, tuple | list) else [loaded]
    matrices = [p for p in parts if isinstance(p, np.ndarray) and p.ndim == 2]
    if not matrices:
        raise DatasetError(f"{file}: no (N, N) array in the pickle")
    texts = [p for p in parts if isinstance(p, list) and all(isinstance(i, str) for i in p)]
    return (texts[0] if texts else None), np.asarray(matrices[0], dtype=np.float64)


def _positions(sensors: Sequence[str]) -> dict[str, int]:
    """Each sensor's full and local id (``net/17`` and ``17``) to its position."""
    known: dict[str, int] = {}
    for i, sensor in enumerate(sensors):
        known.setdefault(sensor, i)
        known.setdefault(_local(sensor), i)
    return known


def _resolve(token: str, known: dict[str, int], n: int, file: Path) -> int:
    """The position of an edge's end: a sensor id, else an index."""
    token = token.strip()
    if token in known:
        return known[token]
    if token.isdigit() and int(token) < n:
        return int(token)
    raise DatasetError(f"{file}: {token!r} is neither a sensor id nor an index")


def _local(sensor: str) -> str:
    """``net/17`` -> ``17``: the sensor id without its network's name."""
    return sensor.split("/", 1)[-1]


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def network_sensors(path: str | Path, network: str) -> tuple[str, ...]:
    """The sensor ids a live network's graph file names, in its order: ``network/i`` for the
    i-th row of a matrix without labels or an edge list of indices, else the file's own ids
    (with ``network/`` in front of a local one)."""
    file = Path(path)
    if file.suffix == ".npz":
        return tuple(f"{network}/{i}" for i in range(len(_npz_matrix(file))))
    if file.suffix in PICKLE_SUFFIXES:
        ids, matrix = _pickled_matrix(file)
        ids = ids or [str(i) for i in range(len(matrix))]
        return tuple(i if "/" in i else f"{network}/{i}" for i in ids)
    rows = _csv_rows(file)
    if [cell.strip().lower() for cell in rows[0][:2]] == ["from", "to"]:
        ends = {row[k].strip() for row in rows[1:] for k in (0, 1)}
        if all(end.isdigit() for end in ends):
            return tuple(f"{network}/{i}" for i in range(max(map(int, ends)) + 1))
        return tuple(sorted(end if "/" in end else f"{network}/{end}" for end in ends))
    if not all(_is_number(cell) for cell in rows[0]):  # a header row of ids
        ids = [cell.strip() for cell in rows[0] if cell.strip()][-(len(rows) - 1) :]
        return tuple(i if "/" in i else f"{network}/{i}" for i in ids)
    return tuple(f"{network}/{i}" for i in range(len(rows)))


def neighbour_table(path: str | Path, network: str, k: int) -> dict[str, list[tuple[str, float]]]:
    """Each sensor of a live network's graph file: its ``k`` heaviest neighbours and weights."""
    sensors = network_sensors(path, network)
    index, weight = neighbours(load_graph(path, sensors), k)
    return {
        sensor: [(sensors[j], float(w)) for j, w in zip(index[i], weight[i], strict=True) if j >= 0]
        for i, sensor in enumerate(sensors)
    }
