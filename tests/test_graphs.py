"""Sensor graphs: given graphs from files, the learned correlation graph, neighbour lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_app.offline.datasets import DatasetError, load_dataset, shared_data_dir
from stream_app.offline.graphs import (
    SensorGraph,
    correlation_graph,
    from_weights,
    knn_graph,
    load_graph,
    neighbours,
    pairwise_correlation,
    zone_graph,
)

SENSORS = ("net/a", "net/b", "net/c", "net/d")


@pytest.fixture(scope="module")
def shared() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("shared/data is not beside the repository")
    return found


def test_a_graph_refuses_negative_weights_and_self_loops() -> None:
    with pytest.raises(DatasetError, match="zero on the diagonal"):
        SensorGraph(np.array([[1.0, 0.0], [0.0, 0.0]]), "x")
    with pytest.raises(DatasetError, match=">= 0"):
        SensorGraph(np.array([[0.0, -1.0], [0.0, 0.0]]), "x")
    graph = from_weights([[5.0, 2.0], [0.0, 0.0]], "x")  # diagonal cleared, symmetrised
    assert graph.weights.tolist() == [[0.0, 2.0], [2.0, 0.0]] and graph.n_edges == 2


def test_edge_list_with_ids_indices_and_distances(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text("from,to,cost\na,b,100\nnet/b,c,200\n3,a,400\n")
    graph = load_graph(tmp_path / "g.csv", SENSORS)
    # inverse distance, scaled so the shortest link weighs 1; symmetric
    expected = np.zeros((4, 4))
    for i, j, w in ((0, 1, 1.0), (1, 2, 0.5), (3, 0, 0.25)):
        expected[i, j] = expected[j, i] = w
    np.testing.assert_allclose(graph.weights, expected)
    assert graph.source == "edges:inverse-distance:g.csv"


def test_edge_list_weight_column_and_direction(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text("from,to,weight\na,b,0.3\nc,d,2\n")
    directed = load_graph(tmp_path / "g.csv", SENSORS, symmetric=False)
    assert directed.weights[0, 1] == 0.3 and directed.weights[1, 0] == 0.0
    (tmp_path / "h.csv").write_text("from,to\na,zz\n")
    with pytest.raises(DatasetError, match="'zz' is neither a sensor id nor an index"):
        load_graph(tmp_path / "h.csv", SENSORS)


def test_matrix_csv_with_labels_is_reordered_to_the_sensors(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,d,c,b,a\nd,0,1,0,0\nc,1,0,0,0\nb,0,0,0,3\na,0,0,3,0\n")
    graph = load_graph(tmp_path / "m.csv", SENSORS)
    assert graph.weights[0, 1] == 3.0 and graph.weights[2, 3] == 1.0 and graph.n_edges == 4
    plain = np.eye(4)[::-1] * 2  # anti-diagonal: a-d and b-c
    np.savez(tmp_path / "m.npz", adj_mx=plain)
    assert load_graph(tmp_path / "m.npz", SENSORS).weights[0, 3] == 2.0
    np.savetxt(tmp_path / "bad.csv", np.ones((3, 3)), delimiter=",")
    with pytest.raises(DatasetError, match=r"\(3, 3\) matrix for 4 sensors"):
        load_graph(tmp_path / "bad.csv", SENSORS)


def test_pems_and_los_graphs_cover_every_sensor(shared: Path) -> None:
    pems = load_dataset(shared / "PEMS08")
    graph = load_graph(shared / "PEMS08" / "PEMS08.csv", pems.sensors)
    assert graph.n_sensors == 170 and (graph.weights.sum(axis=1) > 0).all()
    assert np.array_equal(graph.weights, graph.weights.T) and graph.weights.max() == 1.0
    los = load_dataset(shared / "LOS_LOOP")
    adj = load_graph(shared / "LOS_LOOP" / "los_adj.csv", los.sensors)
    assert adj.n_edges == 2833 - 207  # the published non-zeros less the unit diagonal


def test_zone_graph_links_one_mode_and_direction(tmp_path: Path) -> None:
    (tmp_path / "adjacency.csv").write_text("zone_id,4,12,13\n4,0,1,0\n12,1,0,1\n13,0,1,0\n")
    sensors = [f"nyc/{m}/{z}/{d}" for m in ("bike", "taxi") for z in (4, 12, 13) for d in "io"]
    graph = zone_graph(tmp_path / "adjacency.csv", sensors)
    linked = {(sensors[i], sensors[j]) for i, j in zip(*np.nonzero(graph.weights), strict=True)}
    assert ("nyc/bike/4/i", "nyc/bike/12/i") in linked
    assert ("nyc/bike/4/i", "nyc/taxi/12/i") not in linked
    assert ("nyc/bike/4/i", "nyc/bike/12/o") not in linked
    assert ("nyc/taxi/4/o", "nyc/taxi/13/o") not in linked  # 4 and 13 are not adjacent
    assert graph.n_edges == 2 * 2 * 4  # 2 modes x 2 directions x 2 undirected links


def test_knn_graph_from_coordinates(tmp_path: Path) -> None:
    rows = ["id,name,lat,lon", "1,A,0.0,0.0", "2,B,0.0,0.01", "3,C,0.0,0.03", "4,D,1.0,0.0"]
    (tmp_path / "stations.csv").write_text("\n".join(rows) + "\n")
    sensors = ("p/A/count", "p/B/count", "p/C/count", "p/D/count")
    graph = knn_graph(tmp_path / "stations.csv", sensors, k=1)
    index, _ = neighbours(graph, 1)
    assert index[:, 0].tolist() == [1, 0, 1, 0]  # D's nearest is A (111 km; C is 111.004)


def test_correlation_graph_keeps_the_top_k_positive_correlations() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=500)
    values = np.column_stack(
        [base, base + 0.3 * rng.normal(size=500), -base, rng.normal(size=500), np.full(500, 2.0)]
    )
    values[::7, 1] = np.nan  # pairwise rows: r over the rows where both are present
    graph = correlation_graph(values, k=2)
    both = ~np.isnan(values[:, 1])
    r01 = np.corrcoef(values[both, 0], values[both, 1])[0, 1]
    assert graph.weights[0, 1] == pytest.approx(r01, abs=1e-9)
    assert graph.weights[0, 2] == 0.0 and graph.weights[2].max() < 0.1  # anti-correlation: 0
    assert not graph.weights[:, 4].any() and not graph.weights[4].any()  # constant: no links
    assert (np.count_nonzero(graph.weights, axis=1) <= 2).all()
    np.testing.assert_allclose(pairwise_correlation(values)[[0, 0], [1, 2]], [r01, -1.0])


@pytest.mark.filterwarnings("error")  # numpy's "Mean of empty slice" would fail it
def test_a_sensor_without_a_reading_has_no_links_and_no_warning() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=300)
    values = np.column_stack([base, base + 0.1 * rng.normal(size=300), np.full(300, np.nan)])
    r = pairwise_correlation(values)
    assert r[0, 1] > 0.9 and not r[2].any() and not r[:, 2].any()


def test_correlation_needs_enough_shared_rows() -> None:
    values = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, 1.0], [4.0, 2.0], [5.0, 4.0]])
    assert correlation_graph(values, k=1, min_rows=3).n_edges == 2  # 3 shared rows: linked
    assert correlation_graph(values, k=1, min_rows=4).n_edges == 0


def test_neighbours_pad_and_normalise() -> None:
    graph = from_weights([[0, 3, 1, 0], [3, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], "toy")
    index, weight = neighbours(graph, 3)
    assert index.dtype == np.int64 and weight.dtype == np.float32
    assert index.tolist() == [[1, 2, -1], [0, -1, -1], [0, -1, -1], [-1, -1, -1]]
    np.testing.assert_allclose(weight[0], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(weight.sum(axis=1), [1, 1, 1, 0])
    wide_index, wide_weight = neighbours(graph, 6)  # more columns than other sensors
    assert wide_index.shape == wide_weight.shape == (4, 6) and wide_index[0, 3:].max() == -1


def test_dcrnn_pickle_as_metr_la_and_pems_bay_come(tmp_path: Path, shared: Path) -> None:
    """``adj_mx.pkl``: (sensor ids, id -> position, float32 matrix), pickled by Python 2 at
    protocol 2. PEMS08's road graph written that way, its ids in another order, reads back as
    the edge list gives it; a pickle that would run code is refused."""
    import pickle

    dataset = load_dataset(shared / "PEMS08")
    sensors = dataset.sensors
    graph = load_graph(shared / "PEMS08" / "PEMS08.csv", sensors)
    order = np.random.default_rng(0).permutation(len(sensors))
    ids = [sensors[i].split("/")[1] for i in order]
    matrix = graph.weights[np.ix_(order, order)].astype(np.float32)
    with (tmp_path / "adj_mx.pkl").open("wb") as f:
        pickle.dump((ids, {s: i for i, s in enumerate(ids)}, matrix), f, protocol=2)
    loaded = load_graph(tmp_path / "adj_mx.pkl", sensors)
    np.testing.assert_allclose(loaded.weights, graph.weights, rtol=1e-6)
    assert loaded.source == "matrix:adj_mx.pkl"

    class Runs:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("ran",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps((ids, Runs(), matrix), protocol=2))
    with pytest.raises(DatasetError, match=r"not a pickled graph .*print is not an array"):
        load_graph(tmp_path / "evil.pkl", sensors)
