"""The pre-training corpus: every shared dataset loads cleaned as its SOURCE.md describes it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from stream_app.offline.corpus import (
    PRETRAINING_SETS,
    PretrainingSet,
    _distinct_series,
    data_file,
    day_length_h,
    load_pretraining_set,
    manifest,
    pretraining_graph,
    pretraining_part,
    pretraining_steps,
)
from stream_app.offline.datasets import DatasetError, GridDataset, load_dataset, shared_data_dir
from stream_app.offline.graphs import neighbours

Loader = Callable[[str], PretrainingSet]


@pytest.fixture(scope="module")
def shared() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("shared/data is not beside the repository")
    return found


@pytest.fixture(scope="module")
def corpus(shared: Path) -> Loader:
    """Each set loaded once for the module."""
    cache: dict[str, PretrainingSet] = {}

    def get(name: str) -> PretrainingSet:
        if name not in cache:
            cache[name] = load_pretraining_set(name, shared)
        return cache[name]

    return get


def at(pset: PretrainingSet, stamp: str) -> int:
    """The row of a local clock time (labelled UTC in the files)."""
    moment = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    return int((moment - pset.dataset.start).total_seconds()) // pset.dataset.step_s


@pytest.mark.parametrize(
    ("name", "sensors", "steps", "step_s", "calendar", "graph"),
    [
        ("PEMS08", 170, 1282, 300, True, "edges:inverse-distance:PEMS08.csv"),
        ("PEMS04", 307, 694, 300, True, "edges:inverse-distance:PEMS04.csv"),
        ("LOS_LOOP", 207, 2016, 300, True, "matrix:los_adj.csv"),
        ("SZ_TAXI", 156, 2976, 900, True, "matrix:SZ_taxi_adj.csv"),
        ("BEIJING_AIR", 112, 35064, 3600, True, None),
        ("AIR_ITALY", 13, 9357, 3600, True, None),
        ("BIKE_DC", 3, 17544, 3600, True, None),
        ("NYC_MOBILITY", 264, 17544, 3600, True, "zones:adjacency.csv"),
        ("MELBOURNE_PEDESTRIANS", 55, 16056, 3600, True, "knn4:stations.csv"),
        ("ELECTRICITY_321", 320, 840, 3600, False, None),
        ("WIND", 2, 48673, 900, True, None),
        ("EU_WEATHER", 163, 3654, 86400, True, None),
    ],
)
def test_every_set_loads_as_one_clean_channel(
    corpus: Loader,
    name: str,
    sensors: int,
    steps: int,
    step_s: int,
    calendar: bool,
    graph: str | None,
) -> None:
    pset = corpus(name)
    data = pset.dataset
    assert (data.n_sensors, data.n_steps, data.step_s) == (sensors, steps, step_s)
    assert data.values.shape[2] == 1 and len(set(data.sensors)) == sensors
    assert data.sensors[0].startswith(name.lower() + "/")
    assert pset.calendar is calendar and pset.domain and pset.notes
    assert (pset.graph.source if pset.graph else None) == graph
    if pset.graph is not None:
        assert pset.graph.n_sensors == sensors
    for i in range(sensors):  # no series is empty or constant
        readings = data.values[:, i, 0][~np.isnan(data.values[:, i, 0])]
        assert readings.size and np.ptp(readings) > 0, data.sensors[i]


def test_the_set_list_and_names(corpus: Loader, shared: Path) -> None:
    assert len(PRETRAINING_SETS) == 12 and "ICU_VITALS" not in PRETRAINING_SETS
    assert data_file("nyc_mobility", shared) == shared / "corpus" / "NYC_MOBILITY" / "wide.csv"
    assert corpus("PEMS08").dataset.channels == ("flow",)
    with pytest.raises(DatasetError, match="unknown pre-training set 'icu_vitals'"):
        load_pretraining_set("icu_vitals")


def test_pems_zero_flow_is_missing(corpus: Loader, shared: Path) -> None:
    raw = load_dataset(shared / "PEMS08").values[:, :, 0]
    clean = corpus("PEMS08").dataset.values[:, :, 0]
    assert np.array_equal(np.isnan(clean), raw == 0) and corpus("PEMS08").masked_cells == 915


def test_beijing_keeps_one_copy_of_each_shared_weather_series(corpus: Loader) -> None:
    pset = corpus("BEIJING_AIR")
    assert len(pset.dropped) == 20
    for station in ("Guanyuan", "Dingling", "Nongzhanguan", "Tiantan"):
        for variable in ("TEMP", "PRES", "DEWP", "RAIN", "WSPM"):
            assert f"beijing_air/{station}/{variable}" in pset.dropped
        assert f"beijing_air/{station}/PM2.5" in pset.dataset.sensors
    assert pset.dropped["beijing_air/Tiantan/TEMP"] == "duplicate of beijing_air/Dongsi/TEMP"


def test_nyc_drops_empty_series_and_the_spring_forward_rows(corpus: Loader) -> None:
    pset = corpus("NYC_MOBILITY")
    assert set(pset.dropped) == {
        f"nyc_mobility/{mode}/{zone}/{way}"
        for mode, zones in (("bike", (103, 104, 127, 128, 153)), ("taxi", (103,)))
        for zone in zones
        for way in ("in", "out")
    }
    values = pset.dataset.values[:, :, 0]
    for stamp in ("2019-03-10T02:00", "2020-03-08T02:00"):
        assert np.isnan(values[at(pset, stamp)]).all()
    assert np.isnan(values).sum() == 2 * 264
    graph, sensors = pset.graph, pset.dataset.sensors
    assert graph is not None
    linked = {
        sensors[j] for j in np.nonzero(graph.weights[sensors.index("nyc_mobility/bike/161/in")])[0]
    }
    assert linked and all(s.startswith("nyc_mobility/bike/") and s.endswith("/in") for s in linked)


def test_melbourne_spring_forward_rows_and_graph(corpus: Loader) -> None:
    pset = corpus("MELBOURNE_PEDESTRIANS")
    values = pset.dataset.values[:, :, 0]
    assert np.isnan(values[at(pset, "2021-10-03T02:00")]).all()
    assert np.isnan(values).sum() == 12_393 + 2 * 55  # the -1 cells and the two rows
    index, weight = neighbours(pset.graph, 4) if pset.graph else (None, None)
    assert index is not None and weight is not None and (index[:, 0] >= 0).all()


def test_electricity_has_no_calendar_and_no_recording_gap(corpus: Loader) -> None:
    pset = corpus("ELECTRICITY_321")
    assert not pset.calendar and list(pset.dropped) == ["electricity_321/client_182/consumption"]
    gap = pset.dataset.values[673:696, :, 0]
    assert not (gap == 0).any() and pset.masked_cells == 24 * 23  # client_182 is one of 25


def test_eu_weather_impossible_values_are_missing(corpus: Loader) -> None:
    pset = corpus("EU_WEATHER")
    data = pset.dataset

    def series(name: str) -> np.ndarray:
        return data.values[:, data.sensors.index(f"eu_weather/{name}"), 0]

    assert np.nanmin(series("STOCKHOLM/cloud_cover")) >= 0
    assert (
        np.nanmin(series("STOCKHOLM/pressure")) > 0.9 and np.nanmin(series("TOURS/pressure")) > 0.9
    )
    assert np.nanmin(series("STOCKHOLM/sunshine")) >= 0
    november = slice(at(pset, "2006-11-12T00:00"), at(pset, "2006-12-07T00:00"))
    assert np.nanmax(series("OSLO/sunshine")[november], initial=0.0) < 8.0
    kassel = series("KASSEL/global_radiation")  # 63 days at the series mean from 2002-10-30
    assert np.isnan(kassel[at(pset, "2002-10-30T00:00") : at(pset, "2002-12-31T00:00")]).all()


def test_day_length() -> None:
    days = np.array([80.0, 172.0, 355.0])  # equinox, summer and winter solstice
    np.testing.assert_allclose(day_length_h(0.0, days), 12.0, atol=1e-9)
    # geometric day length (no refraction) at 60 N: 18.5 h at midsummer, 5.5 h at midwinter
    np.testing.assert_allclose(day_length_h(60.0, days), [12.0, 18.5, 5.5], atol=0.15)


def test_duplicates_merge_and_flat_series_drop() -> None:
    rain = np.zeros(100)
    rain[::9] = np.arange(12.0)
    other = np.roll(rain, 1)  # mostly zero too, but not the same series
    copy = rain.copy()
    copy[5] = np.nan
    rain_with_gap = rain.copy()
    rain_with_gap[9] = np.nan  # the copy's reading fills it
    values = np.column_stack([rain_with_gap, other, copy, np.full(100, 3.0), np.full(100, np.nan)])
    names = ["a/RAIN", "b/RAIN", "c/RAIN", "d/RAIN", "e/RAIN"]
    keep, dropped = _distinct_series(values, names)
    assert keep == [0, 1]
    assert dropped == {
        "c/RAIN": "duplicate of a/RAIN",
        "d/RAIN": "never varies",
        "e/RAIN": "no readings",
    }
    assert values[9, 0] == rain[9]


def test_the_pretraining_part_is_the_first_80_percent(corpus: Loader) -> None:
    pset = corpus("BIKE_DC")
    part = pretraining_part(pset)
    assert part.n_steps == pretraining_steps(17544) == 14035
    np.testing.assert_array_equal(part.values, pset.dataset.values[:14035], strict=True)
    assert (part.start, part.step_s, part.sensors) == (
        pset.dataset.start,
        3600,
        pset.dataset.sensors,
    )


def test_a_learned_graph_reads_only_the_pretraining_part(corpus: Loader) -> None:
    pset = corpus("BIKE_DC")
    graph = pretraining_graph(pset, k=1)
    assert graph.source == "correlation:top1" and graph.n_edges == 3
    # the test part is changed beyond recognition: the graph stays the same
    values = pset.dataset.values.copy()
    values[pretraining_steps(len(values)) :] = np.random.default_rng(0).normal(size=(1, 3, 1))
    changed = PretrainingSet(pset.name, _with(pset, values), None, True, "d", "n")
    assert np.array_equal(pretraining_graph(changed, k=1).weights, graph.weights)
    assert pretraining_graph(corpus("PEMS08")) is corpus("PEMS08").graph


def _with(pset: PretrainingSet, values: np.ndarray) -> GridDataset:
    data = pset.dataset
    return GridDataset(data.name, values, data.start, data.step_s, data.sensors, data.channels)


def test_manifest_is_json_ready(corpus: Loader) -> None:
    entries = manifest([corpus("PEMS08"), corpus("EU_WEATHER")])
    json.dumps(entries, allow_nan=False)
    first = entries[0]
    assert first["name"] == "PEMS08" and first["sensors"] == 170 and first["step_s"] == 300
    assert (first["start"], first["end"]) == ("2016-07-01T00:00:00Z", "2016-07-05T10:45:00Z")
    assert first["train_steps"] == 1025 and first["train_end"] == "2016-07-04T13:20:00Z"
    assert first["train_readings"] == 1025 * 170 - 557  # less the zero flows of those steps
    assert first["graph"] == "edges:inverse-distance:PEMS08.csv"
    assert entries[1]["graph"] is None and entries[1]["masked_cells"] > 0


@pytest.mark.parametrize(
    "folder",
    ["BEIJING_AIR", "AIR_ITALY", "BIKE_DC", "NYC_MOBILITY", "MELBOURNE_PEDESTRIANS",
     "ELECTRICITY_321", "WIND", "EU_WEATHER"],
)  # fmt: skip
def test_each_corpus_folder_loads_by_its_own_name(shared: Path, folder: str) -> None:
    # wide.csv says nothing of the network; stations.csv and adjacency.csv are not data
    data = load_dataset(shared / "corpus" / folder)
    assert data.name == folder.lower() and data.sensors[0].startswith(folder.lower() + "/")
