"""What a long-context model needs to know about a dataset besides its readings.

Its neighbours (from a graph file, or for a shared dataset the graph it ships with, or a graph
shipped beside the data, else one learned from the first 80 % of its history), and whether its
timestamps are real. A dataset of ``shared/data`` is recognised by its path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .corpus import (
    PRETRAINING_SETS,
    PretrainingSet,
    data_file,
    load_pretraining_set,
    pretraining_graph,
)
from .dataset_files import DatasetError
from .datasets import GridDataset, shared_data_dir
from .graphs import SensorGraph, correlation_graph, graph_beside, load_graph, neighbours
from .model_inputs import Neighbours

log = logging.getLogger(__name__)

NEIGHBOURS = 8


def recognise(path: str | Path, data_dir: Path | None = None) -> str | None:
    """The pre-training set whose data file or folder ``path`` is, if any."""
    root = data_dir or shared_data_dir()
    if root is None:
        return None
    target = Path(path).resolve()
    for name in PRETRAINING_SETS:
        file = data_file(name, root).resolve()
        if target in (file, file.parent):
            return name
    return None


def network_context(
    dataset: GridDataset,
    path: str | Path,
    graph_file: str | Path | None = None,
    *,
    learn: bool = True,
    k: int = NEIGHBOURS,
) -> tuple[Neighbours | None, bool, str]:
    """The dataset's neighbours, whether its calendar is real, and where the graph came from.

    ``graph_file`` wins; then the graph of a recognised shared dataset; then the graph shipped
    beside the data (``graphs.graph_beside``); then, if ``learn``, top-k correlations of the
    first 80 % of the series (the history a worker would have).
    """
    name = recognise(path)
    pset = None if name is None else load_pretraining_set(name)  # read once: it may warn
    calendar = True if pset is None else pset.calendar
    graph = _graph(dataset, path, pset, graph_file, learn, k)
    if graph is None:
        return None, calendar, "none"
    return neighbours(graph, k), calendar, graph.source


def _graph(
    dataset: GridDataset,
    path: str | Path,
    pset: PretrainingSet | None,
    graph_file: str | Path | None,
    learn: bool,
    k: int,
) -> SensorGraph | None:
    if graph_file:
        return load_graph(graph_file, dataset.sensors)
    if pset is not None:
        return _aligned(pretraining_graph(pset, k), pset.dataset.sensors, dataset.sensors)
    if (beside := graph_beside(Path(path))) is not None:
        try:
            return load_graph(beside, dataset.sensors)
        except DatasetError as exc:  # another network's graph, ids it does not know...
            log.warning("%s is not this dataset's graph (%s): one is learned instead", beside, exc)
    if learn:
        history = dataset.values[: int(0.8 * dataset.n_steps), :, 0]
        return correlation_graph(history, k)
    return None


def _aligned(
    graph: SensorGraph, graph_sensors: tuple[str, ...], sensors: tuple[str, ...]
) -> SensorGraph:
    """``graph`` over ``sensors``: the cleaned set may have left some out (no neighbours)."""
    where = {sensor: i for i, sensor in enumerate(graph_sensors)}
    n = len(sensors)
    weights = np.zeros((n, n))
    mine = [i for i, s in enumerate(sensors) if s in where]
    theirs = [where[sensors[i]] for i in mine]
    weights[np.ix_(mine, mine)] = graph.weights[np.ix_(theirs, theirs)]
    return SensorGraph(weights, graph.source)
