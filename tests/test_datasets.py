"""Loading the real reference datasets, and CSV forms written from their leading rows."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as daytime
from pathlib import Path

import numpy as np
import pytest

from stream_app.offline.datasets import (
    DatasetError,
    GridDataset,
    bundled_dataset_path,
    load_dataset,
    shared_data_dir,
)


@pytest.fixture(scope="module")
def shared() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("shared/data is not beside the repository")
    return found


@pytest.fixture(scope="module")
def pems08() -> GridDataset:
    return load_dataset(bundled_dataset_path())


@pytest.mark.parametrize(
    ("folder", "name", "shape", "start", "step_s", "first_sensor", "channels"),
    [
        ("PEMS08", "pems08", (1282, 170, 3), datetime(2016, 7, 1, tzinfo=UTC), 300, "pems08/0",
         ("flow", "occupancy", "speed")),
        ("PEMS04", "pems04", (694, 307, 3), datetime(2018, 1, 1, tzinfo=UTC), 300, "pems04/0",
         ("flow", "occupancy", "speed")),
        ("LOS_LOOP", "los_loop", (2016, 207, 1), datetime(2012, 3, 1, tzinfo=UTC), 300,
         "los_loop/773869", ("speed",)),
        ("SZ_TAXI", "sz_taxi", (2976, 156, 1), datetime(2015, 1, 1, tzinfo=UTC), 900,
         "sz_taxi/0", ("speed",)),
    ],
)  # fmt: skip
def test_shared_datasets_load_as_documented(
    shared: Path,
    folder: str,
    name: str,
    shape: tuple[int, int, int],
    start: datetime,
    step_s: int,
    first_sensor: str,
    channels: tuple[str, ...],
) -> None:
    ds = load_dataset(shared / folder)
    assert (ds.name, ds.values.shape, ds.start, ds.step_s) == (name, shape, start, step_s)
    assert ds.sensors[0] == first_sensor and len(ds.sensors) == shape[1] == ds.n_sensors
    assert len(set(ds.sensors)) == ds.n_sensors
    assert ds.channels == channels and ds.n_steps == shape[0]
    assert ds.values.dtype == np.float64 and not np.isnan(ds.values).any()


def test_pems08_first_values_and_timestamps(pems08: GridDataset) -> None:
    assert pems08.values[0, 0].tolist() == [133.0, 0.0603, 65.8]
    stamps = pems08.timestamps()
    assert stamps.dtype == np.int64 and stamps.shape == (1282,)
    assert stamps[0] == 1467331200 and stamps[-1] == 1467331200 + 1281 * 300
    assert pems08.channel_index("speed") == 2 and pems08.channel_index(0) == 0
    with pytest.raises(DatasetError, match="no channel"):
        pems08.channel_index("density")


def test_bundled_slice_equals_the_shared_one(shared: Path, pems08: GridDataset) -> None:
    reference = load_dataset(shared / "PEMS08" / "PEMS08.npz")
    assert np.array_equal(pems08.values, reference.values)
    assert (pems08.sensors, pems08.start) == (reference.sensors, reference.start)


def test_a_directory_of_arrays_without_times_is_refused_with_the_reason(
    tmp_path: Path, pems08: GridDataset
) -> None:
    for stem in ("a", "b"):
        np.savez(tmp_path / f"{stem}.npz", data=pems08.values[:2])
    with pytest.raises(DatasetError, match=r"\['a.npz', 'b.npz'\] say no times; files read side"):
        load_dataset(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no data file"):
        load_dataset(empty)


def test_a_file_per_station_reads_side_by_side(tmp_path: Path, shared: Path) -> None:
    """The Beijing stations' original files, one per station (an hour a row, eleven numeric
    columns each), in a directory: one grid, each station's columns named after its file,
    a file that starts later placed at its own time."""
    folder = shared / "corpus" / "BEIJING_AIR" / "original" / "PRSA_Data_20130301-20170228"
    originals = sorted(folder.glob("*.csv"))[:3]
    stations = tmp_path / "stations"
    stations.mkdir()
    for n, original in enumerate(originals):
        lines = original.read_text(encoding="utf-8").splitlines()[:49]
        if n == 2:  # the third station's file starts five hours later
            lines = lines[:1] + lines[6:]
        (stations / original.name).write_text("\n".join(lines) + "\n")
    ds = load_dataset(stations)
    assert (ds.name, ds.start, ds.step_s) == ("stations", datetime(2013, 3, 1, tzinfo=UTC), 3600)
    assert ds.values.shape == (48, 33, 1)
    first = f"stations/{originals[0].stem}/PM2.5"
    assert ds.sensors[0] == first and ds.sensors[22] == f"stations/{originals[2].stem}/PM2.5"
    alone = load_dataset(stations / originals[2].name)
    assert np.isnan(ds.values[:5, 22:, 0]).all()
    assert np.array_equal(ds.values[5:, 22:, 0], alone.values[:, :, 0], equal_nan=True)


def _leading(pems08: GridDataset, steps: int = 30, sensors: int = 12) -> np.ndarray:
    return pems08.values[:steps, :sensors, 0]


def _iso(pems08: GridDataset, t: int) -> str:
    return (pems08.start + timedelta(seconds=t * pems08.step_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_wide_csv_with_time_column_round_trips(tmp_path: Path, pems08: GridDataset) -> None:
    grid = _leading(pems08)
    with (tmp_path / "wide.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["ts", *[s.split("/")[1] for s in pems08.sensors[:12]]])
        out.writerows([_iso(pems08, t), *map(repr, row.tolist())] for t, row in enumerate(grid))
    ds = load_dataset(tmp_path, name="pems08")
    assert np.array_equal(ds.values[:, :, 0], grid)
    assert (ds.start, ds.step_s, ds.sensors) == (pems08.start, 300, pems08.sensors[:12])


def test_wide_csv_without_times_reads_stcast_json(tmp_path: Path, pems08: GridDataset) -> None:
    grid = _leading(pems08)
    np.savetxt(tmp_path / "speeds.csv", grid, delimiter=",", header="a,b,c,d,e,f,g,h,i,j,k,l",
               comments="")  # fmt: skip
    meta = {"name": "net", "start": "2016-07-01T00:00:00Z", "step_s": 300, "channels": ["flow"]}
    (tmp_path / "stcast.json").write_text(json.dumps(meta))
    ds = load_dataset(tmp_path / "speeds.csv")
    assert np.array_equal(ds.values[:, :, 0], grid)
    assert (ds.name, ds.start, ds.step_s, ds.channels) == ("net", pems08.start, 300, ("flow",))
    assert ds.sensors[:2] == ("net/a", "net/b")


def test_long_csv_round_trips_with_gaps_as_nan(tmp_path: Path, pems08: GridDataset) -> None:
    grid = _leading(pems08)
    rows = [
        [sensor.split("/")[1], _iso(pems08, t) if n % 2 else str(1467331200_000 + t * 300_000), v]
        for t, row in enumerate(grid)
        for n, (sensor, v) in enumerate(zip(pems08.sensors, row.tolist(), strict=False))
        if (t, n) != (5, 3)  # one missing reading
    ]
    with (tmp_path / "long.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["sensor", "ts", "value"], *rows])
    ds = load_dataset(tmp_path / "long.csv", name="pems08")
    expected = grid.copy()
    expected[5, 3] = np.nan
    assert np.array_equal(ds.values[:, :, 0], expected, equal_nan=True)
    assert (ds.start, ds.step_s, ds.sensors) == (pems08.start, 300, pems08.sensors[:12])


def test_long_parquet_reads_like_the_long_csv(tmp_path: Path, pems08: GridDataset) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    grid = _leading(pems08)
    steps, sensors = np.nonzero(~np.isnan(grid))
    keep = ~((steps == 5) & (sensors == 3))  # one missing reading
    steps, sensors = steps[keep], sensors[keep]
    stamps = [pems08.start + timedelta(seconds=300 * int(t)) for t in steps]
    table = pa.table(
        {
            "sensor": [str(n) for n in sensors],
            "ts": pa.array(stamps, type=pa.timestamp("s", tz="UTC")),
            "value": grid[steps, sensors],
        }
    )
    pq.write_table(table, tmp_path / "long.parquet")
    ds = load_dataset(tmp_path, name="pems08")
    expected = grid.copy()
    expected[5, 3] = np.nan
    assert np.array_equal(ds.values[:, :, 0], expected, equal_nan=True)
    assert (ds.start, ds.step_s, ds.sensors) == (pems08.start, 300, pems08.sensors[:12])


def test_parquet_times_without_a_zone_are_the_files_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    naive = [datetime(2016, 7, 1, 0, 5 * i) for i in range(3)]  # noqa: DTZ001
    table = pa.table({"sensor": ["a"] * 3, "ts": naive, "value": [1.0, 2.0, 3.0]})
    pq.write_table(table, tmp_path / "naive.parquet")
    ds = load_dataset(tmp_path / "naive.parquet")
    assert (ds.start, ds.step_s) == (datetime(2016, 7, 1, tzinfo=UTC), 300)
    assert "no UTC offset; read as UTC" in caplog.text


def test_pandas_frames_in_hdf5_as_metr_la_and_pems_bay_come(
    tmp_path: Path, pems08: GridDataset, caplog: pytest.LogCaptureFixture
) -> None:
    """METR-LA (key ``df``) and PEMS-BAY (``speed``) are pandas frames written by ``to_hdf``:
    a row per time (a naive index), a column per sensor. Written here by pandas itself."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("tables")
    h5py = pytest.importorskip("h5py")
    flows = _leading(pems08, steps=30, sensors=12)
    index = pd.date_range("2016-07-01", periods=30, freq="5min")
    frame = pd.DataFrame(flows, index=index, columns=[f"7{i:05d}" for i in range(12)])
    frame.to_hdf(tmp_path / "metr.h5", key="df")
    ds = load_dataset(tmp_path / "metr.h5")
    assert (ds.start, ds.step_s, ds.sensors[0]) == (pems08.start, 300, "metr/700000")
    np.testing.assert_array_equal(ds.values[:, :, 0], flows)
    assert "no UTC offset" in caplog.text
    # a text column is left out; a zone-aware index gives UTC times; a dropped row is a gap
    frame = frame.drop(index[3]).tz_localize("America/Los_Angeles")
    frame.insert(2, "district", "4")
    frame.to_hdf(tmp_path / "bay.h5", key="speed")
    caplog.clear()
    ds = load_dataset(tmp_path / "bay.h5")
    assert ds.start == datetime(2016, 7, 1, 7, tzinfo=UTC) and ds.n_sensors == 12
    assert np.isnan(ds.values[3]).all() and ds.values[4, 0, 0] == flows[4, 0]
    assert "['district'] are not numbers: left out" in caplog.text
    assert "no UTC offset" not in caplog.text
    # pandas before 2 wrote its index as "datetime64", in nanoseconds
    with h5py.File(tmp_path / "metr.h5", "r+") as h5:
        axis = h5["df/axis1"]
        unit = axis.attrs["kind"].decode()
        scale = {"datetime64[us]": 1_000, "datetime64[ms]": 1_000_000}.get(unit, 1)
        times_ns = axis[()] * scale
        del h5["df/axis1"]
        h5["df/axis1"] = times_ns
        h5["df/axis1"].attrs["kind"] = b"datetime64"
    assert load_dataset(tmp_path / "metr.h5").start == pems08.start
    with h5py.File(tmp_path / "plain.h5", "w") as h5:  # an array, as the .npz files hold
        h5["data"] = flows
    ds = load_dataset(tmp_path / "plain.h5", start=pems08.start, step_s=300)
    np.testing.assert_array_equal(ds.values[:, :, 0], flows)
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["speeds"] = flows
    with pytest.raises(DatasetError, match=r"neither one pandas frame .* found \['speeds'\]"):
        load_dataset(tmp_path / "other.h5")


def test_missing_start_and_step_names_the_flag(tmp_path: Path, pems08: GridDataset) -> None:
    np.savez(tmp_path / "mystery.npz", data=pems08.values[:4, :5, 0])
    with pytest.raises(DatasetError, match=r"--start .* --dataset-step-s.*stcast\.json"):
        load_dataset(tmp_path / "mystery.npz")
    ds = load_dataset(tmp_path / "mystery.npz", start=pems08.start, step_s=60)
    assert ds.values.shape == (4, 5, 1) and ds.sensors[0] == "mystery/0"
    naive = datetime(2016, 7, 1)  # noqa: DTZ001 (--start without an offset: UTC, as in files)
    ds = load_dataset(tmp_path / "mystery.npz", start=naive, step_s=60)
    assert ds.start == datetime(2016, 7, 1, tzinfo=UTC)
    (tmp_path / "stcast.json").write_text('{"start": "2016-07-01 00:00", "step_s": 300}')
    assert load_dataset(tmp_path / "mystery.npz").start == datetime(2016, 7, 1, tzinfo=UTC)


def test_times_without_an_offset_are_the_files_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Most exports write local times without an offset: they are read as UTC, so that the
    calendar the model sees is the file's own clock, as in its pre-training corpus."""
    (tmp_path / "t.csv").write_text("ts,a\n2016-07-01 00:00:00,1\n2016-07-01 00:05:00,2\n")
    ds = load_dataset(tmp_path / "t.csv")
    assert (ds.start, ds.step_s) == (datetime(2016, 7, 1, tzinfo=UTC), 300)
    assert "t.csv: times carry no UTC offset; read as UTC" in caplog.text
    (tmp_path / "mixed.csv").write_text("ts,a\n2016-07-01T00:00Z,1\n2016-07-01T00:05,2\n")
    with pytest.raises(DatasetError, match=r"'2016-07-01T00:05' \(data row 2\) lacks a UTC"):
        load_dataset(tmp_path / "mixed.csv")


@pytest.mark.parametrize(
    ("first", "second", "start", "step_s"),
    [
        (
            "2020/1/1 0:00",
            "2020/1/1 0:15",
            datetime(2020, 1, 1, tzinfo=UTC),
            900,
        ),  # the WIND original
        ("2020-1-1 23:00", "2020-1-2 0:00", datetime(2020, 1, 1, 23, tzinfo=UTC), 3600),
        (
            "13/01/2020 00:00",
            "13/01/2020 01:00",
            datetime(2020, 1, 13, tzinfo=UTC),
            3600,
        ),  # day first
        (
            "01/13/2020 00:00",
            "01/13/2020 01:00",
            datetime(2020, 1, 13, tzinfo=UTC),
            3600,
        ),  # month first
        ("31.12.2004", "01.01.2005", datetime(2004, 12, 31, tzinfo=UTC), 86400),
        (
            "2004/03/10 18:00:00+01:00",
            "2004/03/10 19:00:00+01:00",
            datetime(2004, 3, 10, 17, tzinfo=UTC),
            3600,
        ),
        ("1467331200000", "1467331500000", datetime(2016, 7, 1, tzinfo=UTC), 300),
    ],
)
def test_times_as_exports_write_them(
    tmp_path: Path, first: str, second: str, start: datetime, step_s: int
) -> None:
    (tmp_path / "t.csv").write_text(f"date,a\n{first},1\n{second},2\n")
    ds = load_dataset(tmp_path / "t.csv")
    assert (ds.start, ds.step_s) == (start, step_s)


def test_day_or_month_first_is_the_reading_on_a_regular_grid(tmp_path: Path) -> None:
    """No day above 12: day first gives 1-3 February, daily; month first the 2nd of January,
    February and March, a month apart (not even that, by days): day first is chosen."""
    rows = ["date,a", "01/02/2020,1", "02/02/2020,2", "03/02/2020,3", "04/02/2020,4"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "t.csv")
    assert (ds.start, ds.step_s, ds.n_steps) == (datetime(2020, 2, 1, tzinfo=UTC), 86400, 4)
    rows = ["date,a", "02/01/2020,1", "02/02/2020,2", "02/03/2020,3", "02/04/2020,4"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")  # month first is daily here
    ds = load_dataset(tmp_path / "t.csv")
    assert (ds.start, ds.step_s, ds.n_steps) == (datetime(2020, 2, 1, tzinfo=UTC), 86400, 4)


def test_uci_layouts_year_month_day_hour_columns_row_numbers_and_text(
    tmp_path: Path, shared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The Beijing stations' original files: a ``No`` column numbering the rows, the time in
    ``year``, ``month``, ``day``, ``hour`` columns, and two columns of text (wind direction,
    station name), which are left out with a warning."""
    folder = shared / "corpus" / "BEIJING_AIR" / "original" / "PRSA_Data_20130301-20170228"
    original = sorted(folder.glob("*.csv"))[0]
    lines = original.read_text(encoding="utf-8").splitlines()[:49]
    (tmp_path / "station.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path / "station.csv")
    assert (ds.start, ds.step_s, ds.n_steps) == (datetime(2013, 3, 1, tzinfo=UTC), 3600, 48)
    assert [s.split("/")[1] for s in ds.sensors][:3] == ["PM2.5", "PM10", "SO2"]
    assert ds.n_sensors == 11 and "['wd', 'station'] hold no number: left out" in caplog.text
    first = next(csv.reader([lines[1]]))
    assert ds.values[0, 0, 0] == float(first[5])  # PM2.5 of the first hour
    # pandas' to_csv writes its index first, unnamed
    (tmp_path / "pandas.csv").write_text(",date,a\n0,2016-07-01,1\n1,2016-07-02,2\n")
    ds = load_dataset(tmp_path / "pandas.csv")
    assert (ds.sensors, ds.step_s) == (("pandas/a",), 86400)
    # a date without its hour repeats: refused, not overwritten
    (tmp_path / "days.csv").write_text("day,a\n2016-07-01,1\n2016-07-01,2\n2016-07-02,3\n")
    with pytest.raises(DatasetError, match=r"data rows 1 and 2 have the same time"):
        load_dataset(tmp_path / "days.csv")


def test_a_date_with_its_hour_elsewhere_compact_dates_and_calendar_columns(
    tmp_path: Path, shared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The UCI bike hours' original: ``instant`` numbering the rows, the date in ``dteday`` and
    the hour in ``hr``, calendar columns (season, yr, mnth, holiday, weekday, workingday) that
    are left out with a warning. The European weather set's original: dates as ``20000101``
    and a ``MONTH`` column."""
    bikes = shared / "corpus" / "BIKE_DC" / "original" / "Bike-Sharing-Dataset" / "hour.csv"
    lines = bikes.read_text(encoding="utf-8").splitlines()[:49]
    (tmp_path / "hour.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path / "hour.csv")
    assert (ds.start, ds.step_s) == (datetime(2011, 1, 1, tzinfo=UTC), 3600)
    assert [s.split("/")[1] for s in ds.sensors] == [
        "weathersit", "temp", "atemp", "hum", "windspeed", "casual", "registered", "cnt",
    ]  # fmt: skip
    assert "calendar columns ['season', 'yr', 'mnth', 'holiday', 'weekday', 'workingday']" in (
        caplog.text
    )
    rows = [next(csv.reader([line])) for line in lines[1:]]  # 1 Jan, 2 Jan less an hour, 3 Jan
    assert ds.n_steps == 49 and np.isnan(ds.values[:, -1, 0]).sum() == 1  # the hour missing
    for row in rows:  # each count at its date and hour
        step = (date.fromisoformat(row[1]) - date(2011, 1, 1)).days * 24 + int(row[5])
        assert ds.values[step, -1, 0] == float(row[16])
    # the whole original, whose row numbers hold a stray byte in data row 160, as published
    whole = load_dataset(bikes)
    assert (whole.n_steps, whole.n_sensors) == (2 * 365 * 24 + 24, 8)  # 2011-2012, a leap day
    assert "(instant) unreadable in data rows [(160, '\\x1160')]" in caplog.text
    assert whole.values[-1, -1, 0] == float(bikes.read_text().splitlines()[-1].split(",")[-1])
    weather = shared / "corpus" / "EU_WEATHER" / "original" / "weather_prediction_dataset.csv"
    lines = weather.read_text(encoding="utf-8").splitlines()[:11]
    (tmp_path / "weather.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path / "weather.csv")
    assert (ds.start, ds.step_s, ds.n_steps) == (datetime(2000, 1, 1, tzinfo=UTC), 86400, 10)
    assert ds.sensors[0] == "weather/BASEL_cloud_cover" and ds.n_sensors == 163
    assert ds.values[0, 0, 0] == float(lines[1].split(",")[2])
    # an epoch-ms column is never read as compact dates
    (tmp_path / "ms.csv").write_text("ts,a\n1467331200000,1\n1467331500000,2\n")
    assert load_dataset(tmp_path / "ms.csv").step_s == 300


def test_monthly_times_are_refused_with_the_reason(tmp_path: Path) -> None:
    rows = ["date,a", "2004-01-01,1", "2004-02-01,2", "2004-03-01,3", "2004-04-01,4"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match="a calendar month apart, whose length varies"):
        load_dataset(tmp_path / "m.csv")


def test_a_time_that_is_none_says_what_is_read(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("ts,a\n2016-07-01 00:00,1\nyesterday,2\n")
    with pytest.raises(DatasetError, match=r"'yesterday' \(data row 2\) is not a time: RFC 3339"):
        load_dataset(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("ts,a\n2016/07/01 00:00,1\n01.07.2016,2\n")
    with pytest.raises(DatasetError, match=r"'01.07.2016' \(data row 2\) is not written like"):
        load_dataset(tmp_path / "t.csv")


def test_a_date_and_a_time_of_day_in_two_columns_are_one_time(tmp_path: Path) -> None:
    """Spreadsheet exports (the UCI air-quality file among them) split the time in two."""
    rows = ["Date,Time,CO,NO2", "2004-03-10,18:00:00Z,2.6,113", "2004-03-10,19.00.00Z,2.0,92"]
    rows += ["2004-03-10,20:00Z,,94"]
    (tmp_path / "air.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "air.csv")
    assert ds.sensors == ("air/CO", "air/NO2") and ds.step_s == 3600
    assert ds.start == datetime(2004, 3, 10, 18, tzinfo=UTC)
    np.testing.assert_array_equal(ds.values[:, :, 0], [[2.6, 113], [2.0, 92], [np.nan, 94]])
    # as the original UCI file writes them: day first, dotted clock, decimal commas, and -200
    # for a missing reading (a code, named by a flag or in stcast.json)
    rows = ["Date;Time;CO;NO2", "10/03/2004;18.00.00;2,6;113", "10/03/2004;19.00.00;2;-200"]
    (tmp_path / "air.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "air.csv")
    assert (ds.start, ds.step_s) == (datetime(2004, 3, 10, 18, tzinfo=UTC), 3600)
    np.testing.assert_array_equal(ds.values[:, :, 0], [[2.6, 113], [2.0, -200]])
    ds = load_dataset(tmp_path / "air.csv", missing=[-200.0])
    np.testing.assert_array_equal(ds.values[:, :, 0], [[2.6, 113], [2.0, np.nan]])
    (tmp_path / "stcast.json").write_text('{"missing": -200}')
    np.testing.assert_array_equal(load_dataset(tmp_path / "air.csv").values, ds.values)
    (tmp_path / "stcast.json").write_text('{"missing": ["none"]}')
    with pytest.raises(DatasetError, match=r"stcast\.json: could not convert"):
        load_dataset(tmp_path / "air.csv")
    (tmp_path / "stcast.json").unlink()
    # a reading that looks like 12:50 is a reading: a number has one dot at most
    (tmp_path / "daily.csv").write_text("Date,a,b\n2004-03-10,12.50,1\n2004-03-11,13.10,2\n")
    ds = load_dataset(tmp_path / "daily.csv")
    assert ds.sensors == ("daily/a", "daily/b") and ds.step_s == 86400


def test_missing_readings_as_spreadsheets_r_and_stations_write_them(tmp_path: Path) -> None:
    rows = ["ts,a,b", "2016-07-01T00:00:00Z,1,NA", "2016-07-01T00:05:00Z, null ,2.5"]
    rows += ["2016-07-01T00:10:00Z,N/A,", "2016-07-01T00:15:00Z,NaN,-"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    values = load_dataset(tmp_path / "t.csv").values[:, :, 0]
    np.testing.assert_array_equal(
        values, [[1.0, np.nan], [np.nan, 2.5], [np.nan, np.nan], [np.nan, np.nan]]
    )
    # Excel's errors, a station's dashes and words, infinity: no reading either
    rows = ["ts,a,b", "2016-07-01T00:00:00Z,#N/A,#DIV/0!", "2016-07-01T00:05:00Z,--,No Data"]
    rows += ["2016-07-01T00:10:00Z,inf,-Infinity", "2016-07-01T00:15:00Z,1e999,4"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    values = load_dataset(tmp_path / "t.csv").values[:, :, 0]
    np.testing.assert_array_equal(values, [[np.nan, np.nan]] * 3 + [[np.nan, 4.0]])
    (tmp_path / "t.csv").write_text("ts,a,b\n2016-07-01T00:00:00Z,1,2\n2016-07-01T00:05:00Z,3,x7\n")
    with pytest.raises(DatasetError, match=r"'x7' \(data row 2, value column 2\) is not a number"):
        load_dataset(tmp_path / "t.csv")


def test_graph_files_are_ignored_in_a_directory(shared: Path) -> None:
    # PEMS08.csv (from,to,cost) and LOS_LOOP's adjacency and location files sit beside the data
    assert load_dataset(shared / "LOS_LOOP").n_sensors == 207
    assert load_dataset(shared / "PEMS08").n_sensors == 170


def test_semicolons_tabs_and_any_time_header(tmp_path: Path) -> None:
    """European exports: ';' or tabs between cells; a first column of times whatever its name."""
    rows = [
        ["Zeit", "a", "b"],
        ["2016-07-01T00:00:00Z", "1", "2"],
        ["2016-07-01T00:05:00Z", "3", ""],
    ]
    for delimiter, name in ((";", "semi.csv"), ("\t", "tabs.csv"), ("\t", "tabs.tsv")):
        (tmp_path / name).write_text("\n".join(delimiter.join(r) for r in rows) + "\n")
        ds = load_dataset(tmp_path / name)
        assert ds.sensors == (f"{name[:4]}/a", f"{name[:4]}/b") and ds.step_s == 300
        np.testing.assert_array_equal(ds.values[:, :, 0], [[1.0, 2.0], [3.0, np.nan]])
    (tmp_path / "decimal.csv").write_text(
        "ts;a;b\n2016-07-01T00:00:00Z;2,6;-1,5\n2016-07-01T00:05:00Z;3;NA\n"
    )  # a decimal comma, as the Italian air sensors' original file writes them
    np.testing.assert_array_equal(
        load_dataset(tmp_path / "decimal.csv").values[:, :, 0], [[2.6, -1.5], [3.0, np.nan]]
    )
    (tmp_path / "naive.csv").write_text("When,a\n2016-07-01 00:00:00,1\n2016-07-01 00:05:00,2\n")
    assert load_dataset(tmp_path / "naive.csv").sensors == ("naive/a",)  # When: the times


def test_npy_arrays_and_an_array_stored_sensors_first(tmp_path: Path, shared: Path) -> None:
    """ELECTRICITY's original is a (321 clients, 840 hours) array, as transdim stores its
    data: ``"sensors_first": true`` in ``stcast.json`` says so."""
    original = shared / "corpus" / "ELECTRICITY_321" / "original" / "electricity35.npy"
    array = np.load(original)
    (tmp_path / "clients.npy").write_bytes(original.read_bytes())
    meta = {"start": "2012-01-01T00:00:00Z", "step_s": 3600, "sensors_first": True}
    (tmp_path / "stcast.json").write_text(json.dumps(meta))
    ds = load_dataset(tmp_path / "clients.npy")
    assert (ds.n_steps, ds.n_sensors, ds.step_s) == (840, 321, 3600)
    assert np.array_equal(ds.values[:, :, 0], array.T, equal_nan=True)
    assert ds.sensors[:2] == ("clients/0", "clients/1")
    (tmp_path / "stcast.json").write_text(json.dumps({**meta, "sensors_first": False}))
    assert load_dataset(tmp_path / "clients.npy").n_steps == 321  # as stored: (T, N)
    (tmp_path / "stcast.json").write_text(json.dumps({**meta, "sensors_first": "yes"}))
    with pytest.raises(DatasetError, match="sensors_first must be true or false"):
        load_dataset(tmp_path / "clients.npy")
    (tmp_path / "stcast.json").write_text(json.dumps(meta))
    assert load_dataset(tmp_path).n_sensors == 321  # a folder holding it, as any data file


def test_an_npz_of_one_array_whatever_its_name(tmp_path: Path, shared: Path) -> None:
    """``np.savez(file, array)`` names the array ``arr_0``, as NYC's taxi flows come."""
    original = (
        shared / "corpus" / "NYC_MOBILITY" / "original" / "201901-202012-NYCtaxi-inoutflow.npz"
    )
    with np.load(original) as archive:
        flows = archive["arr_0"][:48]  # two days of (zone in, zone out) hourly flows
    np.savez(tmp_path / "taxi.npz", flows)
    ds = load_dataset(tmp_path, start=datetime(2019, 1, 1, tzinfo=UTC), step_s=3600)
    assert (ds.n_steps, ds.n_sensors, len(ds.channels)) == (48, 69, 2)
    assert np.array_equal(ds.values, flows)
    np.savez(tmp_path / "taxi.npz", flows, flows)  # two arrays, neither named data
    with pytest.raises(DatasetError, match=r"no array named 'data' \(found \['arr_0', 'arr_1'\]\)"):
        load_dataset(tmp_path / "taxi.npz", start=datetime(2019, 1, 1, tzinfo=UTC), step_s=3600)


def test_times_jittering_around_a_step_are_placed_as_a_worker_places_ticks(
    tmp_path: Path, pems08: GridDataset
) -> None:
    """A logger's times a few seconds off a 5-minute grid: each reading goes to the nearest
    slot (whole steps since the epoch, as the pipeline's), the first of two for one slot is
    kept (a worker dead-letters the second), with a warning; readings all over the place are
    refused rather than smeared onto a grid."""
    grid = _leading(pems08, steps=200)
    jitter = np.random.default_rng(5).integers(-40, 41, size=len(grid))
    jitter[0] = 0
    epoch_s = int(pems08.start.timestamp())
    times = [epoch_s + t * 300 + int(j) for t, j in enumerate(jitter)]
    times[50] = times[49] + 20  # two readings for slot 49: the first is kept, slot 50 is a hole
    rows = [[str(s), *map(repr, row.tolist())] for s, row in zip(times, grid, strict=True)]
    with (tmp_path / "jitter.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["timestamp", *"abcdefghijkl"], *rows])
    ds = load_dataset(tmp_path / "jitter.csv", name="net")
    expected = grid.copy()
    expected[50] = np.nan
    assert (ds.start, ds.step_s) == (pems08.start, 300)
    assert np.array_equal(ds.values[:, :, 0], expected, equal_nan=True)
    # daily readings taken at 13:00, give or take 20 minutes: they stay at 13:00, on their day
    days = [epoch_s + 13 * 3600 + t * 86400 + (0, 1200, -1200)[t % 3] for t in range(30)]
    (tmp_path / "daily.csv").write_text(
        "ts,a\n" + "".join(f"{s},{n}\n" for n, s in enumerate(days))
    )
    ds = load_dataset(tmp_path / "daily.csv")
    assert (ds.start, ds.step_s) == (pems08.start + timedelta(hours=13), 86400)
    assert ds.values[:, 0, 0].tolist() == list(range(30))
    wild = [epoch_s + t * 300 + (0 if t % 2 else 160) for t in range(40)]
    (tmp_path / "wild.csv").write_text("ts,a\n" + "".join(f"{s},{s % 7}\n" for s in wild))
    with pytest.raises(DatasetError, match=r"not on a regular grid .*--dataset-step-s 300"):
        load_dataset(tmp_path / "wild.csv")


def test_times_on_no_grid_are_averaged_into_the_step_given(
    tmp_path: Path, pems08: GridDataset, caplog: pytest.LogCaptureFixture
) -> None:
    """Readings at irregular times (an event logger's), wide or long: with a step given, each
    slot of it on the hour is the mean of its readings, empty where it has none."""
    epoch_s = int(pems08.start.timestamp())
    offsets = [0, 130, 610, 1500, 1790, 2411, 3599, 3700, 11000]  # seconds from the start
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    lines = ["ts,a"] + [f"{epoch_s + o},{v:g}" for o, v in zip(offsets, values, strict=True)]
    (tmp_path / "events.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="not on a regular grid"):
        load_dataset(tmp_path / "events.csv")
    hourly = load_dataset(tmp_path / "events.csv", step_s=3600)
    assert (hourly.start, hourly.step_s) == (pems08.start, 3600)
    np.testing.assert_array_equal(hourly.values[:, 0, 0], [4.0, 8.0, np.nan, 9.0])
    assert "readings averaged into slots of 1 h" in caplog.text
    rows = ["sensor,ts,value"] + [
        f"{name},{epoch_s + o + shift},{v:g}"
        for name, shift in (("x", 0), ("y", 45))
        for o, v in zip(offsets, values, strict=True)
    ]
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    long = load_dataset(tmp_path / "tags.csv", step_s=1800)
    assert (long.start, long.step_s, long.sensors) == (pems08.start, 1800, ("tags/x", "tags/y"))
    np.testing.assert_array_equal(
        long.values[:, :, 0].T,
        [
            [3.0, 6.5, 8.0, np.nan, np.nan, np.nan, 9.0],
            [2.5, 5.5, 7.5, np.nan, np.nan, np.nan, 9.0],
        ],
    )


def test_epoch_seconds_and_gzip_compressed_csv(tmp_path: Path, pems08: GridDataset) -> None:
    """Unix times in seconds read as such (milliseconds still do), and a ``.csv.gz`` reads as
    its CSV, named without its suffixes."""
    import gzip

    grid = _leading(pems08)
    epoch_s = int(pems08.start.timestamp())
    for unit, scale in (("seconds", 1), ("ms", 1000)):
        rows = enumerate(grid.tolist())
        lines = ["time,a,b"] + [f"{(epoch_s + t * 300) * scale},{r[0]},{r[1]}" for t, r in rows]
        text = "\n".join(lines) + "\n"
        (tmp_path / f"{unit}.csv").write_text(text)
        with gzip.open(tmp_path / f"{unit}.csv.gz", "wt") as f:
            f.write(text)
        for name in (f"{unit}.csv", f"{unit}.csv.gz"):
            ds = load_dataset(tmp_path / name)
            assert (ds.name, ds.start, ds.step_s) == (unit, pems08.start, 300)
            assert np.array_equal(ds.values[:, :, 0], grid[:, :2])


def test_a_long_csv_with_its_own_column_names(
    tmp_path: Path, pems08: GridDataset, caplog: pytest.LogCaptureFixture
) -> None:
    """``station,datetime,pm25,pm10`` is a long file: the times repeat, one column names the
    sensor, each column of numbers is a channel, the first the one forecast (named in a
    warning), as ``sensor,ts,value`` reads."""
    grid = _leading(pems08, sensors=3)
    rows = [
        [_iso(pems08, t), f"st{n}", repr(v), repr(2 * v)]
        for t, row in enumerate(grid.tolist())
        for n, v in enumerate(row)
    ]
    with (tmp_path / "stations.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["datetime", "station", "pm25", "pm10"], *rows])
    ds = load_dataset(tmp_path / "stations.csv")
    assert (ds.name, ds.start, ds.step_s) == ("stations", pems08.start, 300)
    assert ds.sensors == ("stations/st0", "stations/st1", "stations/st2")
    assert ds.channels == ("pm25", "pm10")
    assert np.array_equal(ds.values, np.stack([grid, 2 * grid], axis=2))
    assert "of 2 channels ['pm25', 'pm10']; the first, 'pm25', is the one forecast" in caplog.text


def test_an_hour_a_local_clock_repeats_is_read_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Naive local times repeat an hour when summer time ends: the first of each time is read,
    with a warning; a file whose times repeat often is still refused."""
    start = datetime(2016, 10, 29, tzinfo=UTC)
    times = [start + timedelta(hours=t) for t in range(200)]
    times.insert(27, times[26])  # 02:00 on the 30th, twice
    lines = [f"{t:%Y-%m-%d %H:%M},{n}" for n, t in enumerate(times)]
    (tmp_path / "local.csv").write_text("time,a\n" + "\n".join(lines) + "\n")
    ds = load_dataset(tmp_path / "local.csv")
    assert (ds.n_steps, ds.step_s) == (200, 3600)
    assert ds.values[26, 0, 0] == 26 and ds.values[27, 0, 0] == 28
    assert "1 rows repeat an earlier row's time (data rows 27 and 28" in caplog.text
    lines = [f"{t:%Y-%m-%d %H:%M},{n}" for n, t in enumerate(times[:27] * 2)]
    (tmp_path / "twice.csv").write_text("time,a\n" + "\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"data rows 1 and 28 have the same time"):
        load_dataset(tmp_path / "twice.csv")


def test_ticks_recorded_from_a_topic_read_as_a_dataset(
    tmp_path: Path, pems08: GridDataset, caplog: pytest.LogCaptureFixture
) -> None:
    """A JSON-lines file of ticks as `stcast replay` sends them, single or in batches, plain or
    gzipped, is the grid they came from; a line or tick a worker would dead-letter is left
    out and counted."""
    import gzip

    from stream_app.tools.replay import encode_step

    steps = 40
    for batched in (False, True):
        lines = [
            value.decode()
            for t in range(steps)
            for _, value in encode_step(pems08, t, batched=batched)
        ]
        lines.insert(3, '{"sensor": "x", "ts": "yesterday", "value": 1}')
        lines.insert(7, "not json")
        text = "\n".join(lines) + "\n"
        (tmp_path / "ticks.jsonl").write_text(text)
        with gzip.open(tmp_path / "ticks.jsonl.gz", "wt") as f:
            f.write(text)
        for name in ("ticks.jsonl", "ticks.jsonl.gz"):
            ds = load_dataset(tmp_path / name)  # named after the network its sensors name
            assert (ds.name, ds.start, ds.step_s) == ("pems08", pems08.start, 300)
            assert ds.sensors == pems08.sensors
            assert np.array_equal(ds.values[:, :, 0], pems08.values[:steps, :, 0], equal_nan=True)
        assert "2 ticks or lines left out, as a worker would dead-letter them" in caplog.text
        caplog.clear()


def test_csv_as_spreadsheets_save_it_utf16_latin1_and_a_byte_order_mark(
    tmp_path: Path, pems08: GridDataset, caplog: pytest.LogCaptureFixture
) -> None:
    """Excel's "Unicode text" (UTF-16 with its mark), UTF-8 with a mark, and a European
    export in Windows-1252 ("°C", "µg/m³") read as the same grid, with the sensors' names
    right; the last with a warning that it was not UTF-8."""
    grid = _leading(pems08, sensors=2)
    lines = ["time,Temperatur (°C),PM2.5 µg/m³"]
    lines += [f"{_iso(pems08, t)},{a},{b}" for t, (a, b) in enumerate(grid.tolist())]
    text = "\n".join(lines) + "\n"
    for name, encoding in (("u16", "utf-16"), ("sig", "utf-8-sig"), ("win", "cp1252")):
        (tmp_path / f"{name}.csv").write_bytes(text.encode(encoding))
        ds = load_dataset(tmp_path / f"{name}.csv")
        assert ds.sensors == (f"{name}/Temperatur (°C)", f"{name}/PM2.5 µg/m³")
        assert np.array_equal(ds.values[:, :, 0], grid) and ds.step_s == 300
    assert caplog.text.count("not UTF-8") == 1 and "win.csv: not UTF-8 (byte 0xb0" in caplog.text


def test_thousands_separators_as_us_and_german_exports_write_them(
    tmp_path: Path, pems08: GridDataset
) -> None:
    """A quoted ``"12,345.6"`` in a comma file groups thousands; in a ``;`` file ``12.345,6``
    does, and a lone comma is the decimal point (``2,6``); a fraction ``0,125`` is never a
    group of thousands."""
    grid = _leading(pems08, sensors=2) * 37.5  # flows into the thousands
    rows = [[_iso(pems08, t), f"{a:,.1f}", f"{b:,.1f}"] for t, (a, b) in enumerate(grid)]
    assert any("," in row[1] for row in rows)
    with (tmp_path / "us.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["ts", "a", "b"], *rows])
    np.testing.assert_allclose(load_dataset(tmp_path / "us.csv").values[:, :, 0], grid)
    german = [[t, a.replace(",", "_").replace(".", ",").replace("_", "."), b] for t, a, b in rows]
    german = [[t, a, b.replace(",", "")] for t, a, b in german]  # b: 12345.6 with a point
    (tmp_path / "de.csv").write_text("\n".join(";".join(r) for r in [["ts", "a", "b"], *german]))
    np.testing.assert_allclose(load_dataset(tmp_path / "de.csv").values[:, :, 0], grid)
    (tmp_path / "fractions.csv").write_text('ts,a\n2016-07-01T00:00:00Z,"0,125"\n'
                                            '2016-07-01T00:05:00Z,"2,5"\n')  # fmt: skip
    assert load_dataset(tmp_path / "fractions.csv").values[:, 0, 0].tolist() == [0.125, 2.5]


def test_epoch_seconds_with_a_fraction_as_loggers_write_them(
    tmp_path: Path, pems08: GridDataset
) -> None:
    """``time.time()`` stamps (``1467331200.013``), jittering by milliseconds: each reading on
    its 5-minute slot."""
    grid = _leading(pems08, sensors=2)
    epoch_s = pems08.start.timestamp()
    jitter = [0.013, 0.5, -0.25, 1.75, 0.0]
    lines = ["time,a,b"] + [
        f"{epoch_s + t * 300 + jitter[t % 5]:.3f},{a},{b}" for t, (a, b) in enumerate(grid)
    ]
    (tmp_path / "logged.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path / "logged.csv")
    assert (ds.start, ds.step_s) == (pems08.start, 300)
    np.testing.assert_array_equal(ds.values[:, :, 0], grid)


def test_missing_codes_are_found_in_the_data(
    tmp_path: Path, shared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The UCI air file's -200 is read as missing without being named, exactly where the
    corpus's cleaned copy has empty cells; -1 among counts is too, but not among temperatures
    that go below zero; codes the user names replace the guess."""
    original = load_dataset(shared / "corpus" / "AIR_ITALY" / "original" / "AirQuality.csv")
    cleaned = load_dataset(shared / "corpus" / "AIR_ITALY" / "wide.csv")
    assert "16701 readings of -200 read as missing" in caplog.text
    np.testing.assert_array_equal(original.values, cleaned.values)  # NaN where NaN
    rows = ["ts,counts,celsius,level,state"]
    cells = [(5, 0.4, -200, 1), (-1, -1.0, -200, -1), (0, -0.3, -200, 0), (-1, 2.0, 3.5, -1),
             (17, -1.0, 2, 1)]  # fmt: skip
    for t, (count, celsius, level, state) in enumerate(cells):
        rows.append(f"2016-07-01T00:{5 * t:02d}:00Z,{count},{celsius},{level},{state}")
    (tmp_path / "coded.csv").write_text("\n".join(rows) + "\n")
    values = load_dataset(tmp_path / "coded.csv").values[:, :, 0]
    np.testing.assert_array_equal(values[:, 0], [5, np.nan, 0, np.nan, 17])  # -1 among counts
    np.testing.assert_array_equal(values[:, 3], [1, -1, 0, -1, 1])  # a -1/0/1 state
    np.testing.assert_array_equal(values[:, 1], [0.4, -1.0, -0.3, 2.0, -1.0])  # a temperature
    np.testing.assert_array_equal(values[:, 2], [np.nan, np.nan, np.nan, 3.5, 2])
    named = load_dataset(tmp_path / "coded.csv", missing=[-1]).values[:, :, 0]
    np.testing.assert_array_equal(named[:, 1], [0.4, np.nan, -0.3, 2.0, np.nan])
    assert named[0, 2] == -200  # named codes replace the guess


def test_a_zip_as_downloads_ship_data(tmp_path: Path, shared: Path) -> None:
    """UCTB's pedestrian archive (a zip of one pickled dict: counts, stations, time range, step)
    reads as the corpus's cleaned copy, its -1 code found; a zip of a folder of station files
    (with a readme and macOS's leftovers) reads side by side; ``stcast.json`` beside a zip of
    an untimed array applies; a pickle that would run code is refused."""
    import pickle
    import zipfile

    original = shared / "corpus" / "MELBOURNE_PEDESTRIANS" / "original" / "Pedestrian_Melbourne.zip"
    zipped = load_dataset(original)
    cleaned = load_dataset(shared / "corpus" / "MELBOURNE_PEDESTRIANS" / "wide.csv")
    assert (zipped.name, zipped.start, zipped.step_s) == (
        "pedestrian_melbourne", cleaned.start, 3600,
    )  # fmt: skip
    assert zipped.sensors[0] == "pedestrian_melbourne/Bou292_T"
    np.testing.assert_array_equal(zipped.values, cleaned.values)
    rows = ["ts,a", "2016-07-01T00:00:00Z,1", "2016-07-01T00:05:00Z,2"]
    with zipfile.ZipFile(tmp_path / "stations.zip", "w") as z:
        z.writestr("stations/north.csv", "\n".join(rows))
        z.writestr("stations/south.csv", "\n".join([*rows, "2016-07-01T00:15:00Z,5"]))
        z.writestr("stations/README.txt", "two stations")
        z.writestr("__MACOSX/stations/._north.csv", "resource fork")
    ds = load_dataset(tmp_path / "stations.zip")
    assert (ds.name, ds.sensors, ds.step_s) == (
        "stations",
        ("stations/north", "stations/south"),
        300,
    )
    np.testing.assert_array_equal(ds.values[:, :, 0], [[1, 1], [2, 2], [np.nan] * 2, [np.nan, 5]])
    folder = tmp_path / "untimed"
    folder.mkdir()
    buffer = __import__("io").BytesIO()
    np.save(buffer, np.arange(6.0).reshape(3, 2))
    with zipfile.ZipFile(folder / "flows.zip", "w") as z:
        z.writestr("flows.npy", buffer.getvalue())
    (folder / "stcast.json").write_text('{"start": "2016-07-01T00:00:00Z", "step_s": 60}')
    untimed = load_dataset(folder / "flows.zip")
    assert (untimed.name, untimed.step_s, untimed.values.shape) == ("flows", 60, (3, 2, 1))

    class Runs:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("ran",))

    (tmp_path / "code.pkl").write_bytes(pickle.dumps({"data": Runs()}))
    with pytest.raises(DatasetError, match=r"not a pickled dataset .*builtins.print"):
        load_dataset(tmp_path / "code.pkl")


def test_a_long_file_of_stations_as_exports_concatenate_them(
    tmp_path: Path, shared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The Beijing stations' files concatenated (``No``, year..hour, eleven numbers, a wind
    direction, the station): one grid of the stations with the eleven as channels, equal to
    the files read side by side; a long file whose sensors are numbered (``station_id``)
    reads too."""
    folder = shared / "corpus" / "BEIJING_AIR" / "original" / "PRSA_Data_20130301-20170228"
    originals = sorted(folder.glob("*.csv"))[:3]
    lines = originals[0].read_text(encoding="utf-8").splitlines()[:1]
    for original in originals:
        lines += original.read_text(encoding="utf-8").splitlines()[1:49]
    (tmp_path / "beijing.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path / "beijing.csv")
    assert ds.sensors == ("beijing/Aotizhongxin", "beijing/Changping", "beijing/Dingling")
    assert ds.channels[:2] == ("PM2.5", "PM10") and len(ds.channels) == 11
    assert (ds.start, ds.step_s, ds.values.shape) == (datetime(2013, 3, 1, tzinfo=UTC), 3600,
                                                      (48, 3, 11))  # fmt: skip
    assert "columns ['wd'] left out: text" in caplog.text
    noaa = ["STATION,DATE,LATITUDE,LONGITUDE,NAME,PM2.5,TEMP"]  # as NOAA's exports repeat them
    for n, original in enumerate(originals):
        for line in original.read_text(encoding="utf-8").splitlines()[1:49]:
            cells = line.split(",")
            when = f"{cells[1]}-{int(cells[2]):02d}-{int(cells[3]):02d}T{int(cells[4]):02d}:00"
            noaa.append(f"{cells[-1]},{when},{39.9 + n / 10},{116.4 - n / 10},"
                        f"{cells[-1]} CN,{cells[5]},{cells[11]}")  # fmt: skip
    (tmp_path / "noaa.csv").write_text("\n".join(noaa) + "\n")
    exported = load_dataset(tmp_path / "noaa.csv")
    assert exported.sensors == ("noaa/Aotizhongxin", "noaa/Changping", "noaa/Dingling")
    assert exported.channels == ("PM2.5", "TEMP")
    temp = ds.channels.index("TEMP")
    np.testing.assert_array_equal(exported.values, ds.values[:, :, [0, temp]])
    assert "['NAME', 'LATITUDE', 'LONGITUDE'] left out" in caplog.text
    openaq = ["location_id,sensors_id,location,datetime,lat,lon,parameter,units,value"]
    for n, original in enumerate(originals):  # OpenAQ's archive: a row per reading
        for line in original.read_text(encoding="utf-8").splitlines()[1:49]:
            cells = line.split(",")
            when = f"{cells[1]}-{int(cells[2]):02d}-{int(cells[3]):02d}T{int(cells[4]):02d}:00Z"
            for k, (name, unit) in enumerate((("pm25", "µg/m³"), ("temperature", "c"))):
                reading = cells[5] if k == 0 else cells[11]
                where = f"{39.9 + n / 10},{116.4 - n / 10}"
                openaq.append(f"{100 + n},{1000 + 10 * n + k},{cells[-1]},{when},{where},"
                              f"{name},{unit},{reading}")  # fmt: skip
    (tmp_path / "openaq.csv").write_text("\n".join(openaq) + "\n")
    melted = load_dataset(tmp_path / "openaq.csv")
    assert melted.sensors == ("openaq/100", "openaq/101", "openaq/102")  # a location each
    assert sorted(melted.channels) == ["pm25", "temperature"]
    for f, name in enumerate(melted.channels):
        np.testing.assert_array_equal(
            melted.values[:, :, f], ds.values[:, :, 0 if name == "pm25" else temp]
        )
    assert "['sensors_id', 'location', 'lat', 'lon', 'units'] left out" in caplog.text
    stations = tmp_path / "stations"
    stations.mkdir()
    for original in originals:
        text = original.read_text(encoding="utf-8").splitlines()[:49]
        (stations / original.name).write_text("\n".join(text) + "\n")
    side = load_dataset(stations)  # each station's columns as sensors
    for n in range(3):
        np.testing.assert_array_equal(ds.values[:, n, :], side.values[:, 11 * n : 11 * n + 11, 0])
    rows = ["station_id,time,flow"] + [
        f"{400 + n},2016-07-01T00:{5 * t:02d}:00Z,{10 * t + n}" for t in range(4) for n in range(3)
    ]
    (tmp_path / "numbered.csv").write_text("\n".join(rows) + "\n")
    numbered = load_dataset(tmp_path / "numbered.csv")
    assert numbered.sensors == ("numbered/400", "numbered/401", "numbered/402")
    np.testing.assert_array_equal(numbered.values[:, :, 0], [[10 * t + n for n in range(3)]
                                                             for t in range(4)])  # fmt: skip


@pytest.mark.parametrize("suffix", [".xlsx", ".xls"])
def test_an_excel_workbook_as_domain_experts_keep_readings(
    tmp_path: Path, shared: Path, caplog: pytest.LogCaptureFixture, suffix: str
) -> None:
    """The UCI air file's first 100 hours in a workbook as Excel types them (a date, a time of
    day, numbers, -200 for a missing reading) under a title: the same grid as the CSV; a
    second sheet is named in a warning. Excel 2007's format and 97-2003's."""
    original = shared / "corpus" / "AIR_ITALY" / "original" / "AirQuality.csv"
    lines = original.read_text(encoding="utf-8").splitlines()[:101]
    (tmp_path / "air.csv").write_text("\n".join(lines) + "\n")
    rows = list(csv.reader(lines))
    table: list[list[object]] = [["Air quality, Italian city, hourly"], [], list(rows[0])]
    for row in rows[1:]:  # a title, then an empty row
        when = datetime.fromisoformat(f"{row[0]}T{row[1]}")
        table.append([when.date(), when.time(), *(float(cell) for cell in row[2:])])
    notes: list[list[object]] = [["sensor", "unit"], ["CO(GT)", "mg/m3"]]
    first = _workbook(tmp_path / f"air{suffix}", {"Sheet": table, "notes": notes})
    from_csv, from_sheet = load_dataset(tmp_path / "air.csv"), load_dataset(first)
    assert (from_sheet.start, from_sheet.step_s) == (datetime(2004, 3, 10, 18, tzinfo=UTC), 3600)
    assert from_sheet.sensors == from_csv.sensors
    np.testing.assert_allclose(from_sheet.values, from_csv.values, rtol=1e-14)  # Excel's digits
    assert np.isnan(from_sheet.values).any()  # the -200 codes
    assert "sheet 'Sheet' read; the sheets ['notes'] are not" in caplog.text
    (tmp_path / f"broken{suffix}").write_text("not a workbook")
    with pytest.raises(DatasetError, match="not an Excel workbook stcast reads"):
        load_dataset(tmp_path / f"broken{suffix}")


def _workbook(path: Path, sheets: dict[str, list[list[object]]]) -> Path:
    """``sheets`` (title: rows) saved as Excel saves them: ``.xlsx`` by openpyxl, ``.xls``
    (Excel 97-2003) by xlwt, dates and times as date cells."""
    if path.suffix == ".xlsx":
        from openpyxl import Workbook

        book = Workbook()
        book.remove(book.active)
        for title, rows in sheets.items():
            sheet = book.create_sheet(title)
            for row in rows:
                sheet.append(row)
        book.save(path)
        return path
    import xlwt

    book97 = xlwt.Workbook()
    styles = {date: xlwt.easyxf(num_format_str="YYYY-MM-DD"),
              daytime: xlwt.easyxf(num_format_str="HH:MM:SS")}  # fmt: skip
    for title, rows in sheets.items():
        sheet = book97.add_sheet(title)
        for r, row in enumerate(rows):
            for c, cell in enumerate(row):
                style = styles.get(type(cell))
                sheet.write(r, c, cell, *([style] if style else []))
    book97.save(str(path))
    return path


def test_a_coarser_step_asked_for_averages_the_readings(
    tmp_path: Path, pems08: GridDataset
) -> None:
    """``--dataset-step-s 3600`` on five-minute flows: hourly means on the hour (the first
    hour of a file that starts at 00:05 has eleven readings), missing where an hour has none,
    codes left out before averaging; a step that is not a whole number of the data's is
    refused with the reason."""
    hourly = load_dataset(bundled_dataset_path(), step_s=3600)
    assert (hourly.start, hourly.step_s, hourly.values.shape) == (pems08.start, 3600, (107, 170, 3))
    np.testing.assert_allclose(hourly.values[0], pems08.values[:12].mean(axis=0))
    np.testing.assert_allclose(hourly.values[-1], pems08.values[1272:].mean(axis=0))  # 10 left
    grid = _leading(pems08, steps=30, sensors=2).copy()
    grid[12:24, 1] = np.nan  # the second hour of the second sensor: nothing read
    grid[[2, 20], 0] = -200  # a missing code: left out of the means, not averaged in
    rows = [f"{_iso(pems08, t)},{a:g},{b:g}" for t, (a, b) in enumerate(grid) if t > 0]
    (tmp_path / "late.csv").write_text("\n".join(["ts,a,b", *rows]).replace("nan", "") + "\n")
    late = load_dataset(tmp_path / "late.csv", step_s=3600)
    assert (late.start, late.values.shape) == (pems08.start, (3, 2, 1))
    first = np.delete(grid[1:12, 0], 1)  # 00:05 to 00:55, without the code at 00:10
    np.testing.assert_allclose(
        late.values[:2, 0, 0], [first.mean(), np.delete(grid[12:24, 0], 8).mean()]
    )
    np.testing.assert_allclose(
        late.values[:, 1, 0], [grid[1:12, 1].mean(), np.nan, grid[24:, 1].mean()]
    )
    with pytest.raises(DatasetError, match="not a whole number of the data's steps of 300 s"):
        load_dataset(tmp_path / "late.csv", step_s=420)


def test_files_as_loggers_and_services_write_them(
    tmp_path: Path, pems08: GridDataset, caplog: pytest.LogCaptureFixture
) -> None:
    """A PEMS08 excerpt written as loggers and exports write files reads as written plainly:
    ``#`` comments and a title line before the header, a Campbell-style table (a title row of
    another width, units and a processing row under the header, a RECORD column), US times
    with AM and PM (month first), epoch seconds under ``epoch``, the times in the last
    column, a delimiter after each row's last cell, times that name their zone UTC
    (BigQuery's), month names (``01-Jul-2016``, SQL Server's ``Jul  1 2016 12:05AM``)."""
    grid = _leading(pems08, steps=30, sensors=2)
    start = pems08.start.timestamp()
    stamps = [datetime.fromtimestamp(start + 300 * t, tz=UTC) for t in range(len(grid))]
    cells = [(f"{a:g}", f"{b:g}") for a, b in grid]
    rows = list(zip(stamps, cells, strict=True))

    def timed(when: Callable[[datetime], str], trail: str = "") -> list[str]:
        """The excerpt's rows, each its time as ``when`` writes it, then the readings."""
        return [f"{when(s)},{a},{b}{trail}" for s, (a, b) in rows]

    forms = {
        "commented": ["# station: North bridge", "# units: vehicles per 5 minutes", "ts,a,b",
                      *timed(lambda s: f"{s:%Y-%m-%dT%H:%M:%SZ}")],
        "campbell": ['"TOA5","CR1000","CR1000","1234","Std.22","CPU:prog.CR1","1234","Table1"',
                     '"TIMESTAMP","RECORD","a","b"', '"TS","RN","veh","veh"', '"","","Tot","Tot"',
                     *(f'"{s:%Y-%m-%d %H:%M:%S}",{t},{a},{b}'
                       for t, (s, (a, b)) in enumerate(rows))],
        "us": ["Date,a,b", *timed(lambda s: f"{s:%m/%d/%Y %I:%M %p}")],
        "epoch": ["epoch,a,b", *timed(lambda s: str(int(s.timestamp())))],
        "last": ["a,b,time", *(f"{a},{b},{s:%Y-%m-%d %H:%M}" for s, (a, b) in rows)],
        "trailing": ["ts,a,b", *timed(lambda s: f"{s:%Y-%m-%dT%H:%M:%SZ}", trail=",")],
        "bigquery": ["timestamp,a,b", *timed(lambda s: f"{s:%Y-%m-%d %H:%M:%S} UTC")],
        "months": ["Date,a,b", *timed(lambda s: f"{s:%d-%b-%Y %H:%M}")],
        # SQL Server's default: the day padded with a space
        "sqlserver": ["Date,a,b", *timed(lambda s: f"{s:%b} {s.day:2d} {s:%Y %I:%M%p}")],
    }  # fmt: skip
    for name, lines in forms.items():
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
        ds = load_dataset(tmp_path / f"{name}.csv")
        assert (ds.sensors, ds.start, ds.step_s) == ((f"{name}/a", f"{name}/b"), pems08.start, 300)
        np.testing.assert_array_equal(ds.values[:, :, 0], grid, err_msg=name)
    assert "3 lines before the table's rows left out (the first: 'TOA5,CR1000" in caplog.text
    long = ["station,ts,flow"] + [  # a long file whose rows end in a delimiter too
        f"{name},{s:%Y-%m-%dT%H:%M:%SZ},{cell}," for s, row in rows
        for name, cell in zip("ab", row, strict=True)
    ]  # fmt: skip
    (tmp_path / "long_trailing.csv").write_text("\n".join(long) + "\n")
    ds = load_dataset(tmp_path / "long_trailing.csv")
    assert ds.sensors == ("long_trailing/a", "long_trailing/b")
    np.testing.assert_array_equal(ds.values[:, :, 0], grid)


def test_tables_in_plain_text_files(tmp_path: Path, pems08: GridDataset) -> None:
    """A PEMS08 excerpt as ``.txt`` and ``.dat`` tables: LSTNet's headerless comma rows (the
    start and step given), UCI's LD2011_2014.txt (``;``, quoted names under an empty first
    one, decimal commas), ``np.savetxt``'s columns between runs of spaces under a header, a
    Campbell logger's TOA5 ``.dat``; a README or notes beside the data are not read as data."""
    grid = _leading(pems08, steps=30, sensors=2)
    stamps = [pems08.start + timedelta(seconds=300 * t) for t in range(len(grid))]
    forms = {
        "lstnet.txt": [f"{a:g},{b:g}" for a, b in grid],
        "uci.txt": ['"";"a";"b"', *(f'"{s:%Y-%m-%d %H:%M:%S}";{a:g};{b:g}'.replace(".", ",")
                                  for s, (a, b) in zip(stamps, grid, strict=True))],
        "savetxt.dat": ["a b", *(f"{a:12.4f} {b:12.4f}" for a, b in grid)],
        "toa5.dat": ['"TOA5","CR1000","CR1000","1234","Std.22","CPU:prog.CR1","1234","Table1"',
                     '"TIMESTAMP","RECORD","a","b"', '"TS","RN","veh","veh"', '"","","Tot","Tot"',
                     *(f'"{s:%Y-%m-%d %H:%M:%S}",{t},{a:g},{b:g}'
                       for t, (s, (a, b)) in enumerate(zip(stamps, grid, strict=True)))],
    }  # fmt: skip
    for name, lines in forms.items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_text("\n".join(lines) + "\n")
        (folder / "README.txt").write_text("Flows of two detectors.\nSource: PeMS, district 8.\n")
        (folder / "notes.txt").write_text("a and b are\nthe two detectors\n")
        ds = load_dataset(folder, start=pems08.start, step_s=300)
        assert (ds.start, ds.step_s, ds.n_sensors) == (pems08.start, 300, 2), name
        np.testing.assert_array_equal(ds.values[:, :, 0], grid, err_msg=name)
    # whole counts from the first line: a header only where they number the columns
    (tmp_path / "one.txt").write_text("\n".join(f"{a:g}" for a, _ in grid) + "\n")
    (tmp_path / "numbered.txt").write_text("\n".join(["0,1", *forms["lstnet.txt"]]) + "\n")
    for name, sensors in (("one", ("one/0",)), ("numbered", ("numbered/0", "numbered/1"))):
        ds = load_dataset(tmp_path / f"{name}.txt", start=pems08.start, step_s=300)
        assert ds.sensors == sensors
        np.testing.assert_array_equal(ds.values[:, :, 0], grid[:, : len(sensors)], err_msg=name)


def test_the_pems_siblings_as_the_literature_ships_them(tmp_path: Path, shared: Path) -> None:
    """A ``PEMS03`` folder as ASTGCN ships it (its flows in ``PEMS03.npz`` without times, its
    detectors' ids in ``PEMS03.txt``, a graph of ``from,to,distance`` between those ids): the
    published start and step, the sensors named by the listed ids, and the graph beside it
    found and read by them. PEMS08's real flows and road graph stand in for PEMS03's."""
    from stream_app.offline.network_context import network_context

    pems08 = load_dataset(shared / "PEMS08")
    folder = tmp_path / "PEMS03"
    folder.mkdir()
    np.savez(folder / "PEMS03.npz", data=pems08.values[:400, :, :1])
    ids = [str(310000 + 7 * i) for i in range(pems08.n_sensors)]
    (folder / "PEMS03.txt").write_text("\n".join(ids) + "\n")
    edges = list(csv.reader((shared / "PEMS08" / "PEMS08.csv").read_text().splitlines()))
    lines = ["from,to,distance"] + [f"{ids[int(a)]},{ids[int(b)]},{d}" for a, b, d in edges[1:]]
    (folder / "PEMS03.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(folder)
    assert (ds.name, ds.start, ds.step_s, ds.channels) == (
        "pems03", datetime(2018, 9, 1, tzinfo=UTC), 300, ("flow",),
    )  # fmt: skip
    assert ds.sensors[:2] == ("pems03/310000", "pems03/310007")
    table, _, source = network_context(ds, folder)
    assert source == "edges:inverse-distance:PEMS03.csv"
    first = int(edges[1][0]), int(edges[1][1])
    assert table is not None and first[1] in table[0][first[0]].tolist()


def test_a_csv_without_a_header_row_as_pemsd7_ships_it(
    tmp_path: Path, pems08: GridDataset, caplog: pytest.LogCaptureFixture
) -> None:
    """PeMSD7(M)'s ``V_228.csv`` holds readings from its first line: no row is taken for
    names (the columns are numbered, as its matrix graph counts them); a header of sensor
    ids, whole numbers each once (Los-loop's), is still a header."""
    speeds = pems08.values[:40, :6, 2]
    lines = [",".join(f"{v:g}" for v in row) for row in speeds]
    (tmp_path / "V_6.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path / "V_6.csv", start=pems08.start, step_s=300)
    assert ds.sensors == tuple(f"v_6/{i}" for i in range(6))
    np.testing.assert_array_equal(ds.values[:, :, 0], speeds)
    assert "no header row (the first holds readings)" in caplog.text
    ids = ",".join(str(773869 + i) for i in range(6))
    (tmp_path / "ids.csv").write_text(ids + "\n" + "\n".join(lines) + "\n")
    named = load_dataset(tmp_path / "ids.csv", start=pems08.start, step_s=300)
    assert named.sensors[0] == "ids/773869"
    np.testing.assert_array_equal(named.values[:, :, 0], speeds)


def test_a_melted_file_of_stations_names_and_readings(
    tmp_path: Path, pems08: GridDataset, caplog: pytest.LogCaptureFixture
) -> None:
    """``station,date,element,value`` (GHCN's form, tidy data's): a channel per variable, the
    one with the most readings first and forecast (named in a warning), a reading repeated at
    a time averaged."""
    grid = _leading(pems08, sensors=3)
    rows = [
        [f"st{n}", _iso(pems08, t), element, repr(float(scale * v))]
        for t, row in enumerate(grid.tolist())
        for n, v in enumerate(row)
        for element, scale in (("TMIN", 0.5), ("TMAX", 2.0))
        if element == "TMAX" or t % 2 == 0  # TMIN every other step: TMAX is read most
    ]
    rows.append(["st1", _iso(pems08, 4), "TMAX", repr(float(2 * grid[4, 1] + 10))])  # read twice
    with (tmp_path / "ghcn.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["station", "date", "element", "value"], *rows])
    ds = load_dataset(tmp_path / "ghcn.csv")
    assert (ds.start, ds.step_s, ds.channels) == (pems08.start, 300, ("TMAX", "TMIN"))
    assert ds.sensors == ("ghcn/st0", "ghcn/st1", "ghcn/st2")
    want_max = 2.0 * grid
    want_max[4, 1] += 5.0  # the mean of the two readings
    np.testing.assert_allclose(ds.values[:, :, 0], want_max, rtol=1e-12)
    np.testing.assert_allclose(ds.values[::2, :, 1], 0.5 * grid[::2], rtol=1e-12)
    assert np.isnan(ds.values[1::2, :, 1]).all()
    assert "variable 'element', readings 'value') of 2 channels; 'TMAX'" in caplog.text


def test_elapsed_times_count_from_the_start_given(tmp_path: Path, pems08: GridDataset) -> None:
    """A column of times named ``minutes`` (``hours``, ``seconds``, ``days``) counts from a
    moment the data does not say: ``--start`` says it, and without it the message asks. Files
    side by side (a file per stay) are placed by their own minutes."""
    grid = _leading(pems08, sensors=2)
    (tmp_path / "stays").mkdir()
    for n in range(2):  # the second stay's readings begin 10 minutes later
        with (tmp_path / "stays" / f"p{n}.csv").open("w", newline="") as f:
            csv.writer(f).writerows(
                [["hr", "minutes"], *[[repr(r[n]), str(5 * t + 10 * n)]
                                      for t, r in enumerate(grid.tolist())]]
            )  # fmt: skip
    with pytest.raises(DatasetError, match="'minutes' elapsed since a moment it does not say"):
        load_dataset(tmp_path / "stays" / "p1.csv")
    start = datetime(2024, 3, 1, 6, tzinfo=UTC)
    one = load_dataset(tmp_path / "stays" / "p1.csv", start=start)
    assert (one.start, one.step_s, one.sensors) == (start + timedelta(minutes=10), 300, ("p1/hr",))
    assert np.array_equal(one.values[:, 0, 0], grid[:, 1])
    both = load_dataset(tmp_path / "stays", start=start)
    assert (both.start, both.sensors, both.n_steps) == (start, ("stays/p0", "stays/p1"), 32)
    assert np.array_equal(both.values[:30, 0, 0], grid[:, 0])
    assert (
        np.array_equal(both.values[2:, 1, 0], grid[:, 1]) and np.isnan(both.values[:2, 1, 0]).all()
    )


def test_icu_vitals_as_physionet_writes_them(shared: Path) -> None:
    """The ICU stays (``patient,minutes,parameter,value``, each on its own clock from
    admission): a patient per sensor, a vital sign per channel, heart rate (the most read)
    forecast; an hour's readings averaged, as the patient's own file says."""
    folder = shared / "corpus" / "ICU_VITALS"
    start = datetime(2012, 1, 1, tzinfo=UTC)
    ds = load_dataset(folder, start=start, step_s=3600)
    assert (ds.values.shape, ds.start, ds.step_s) == ((49, 300, 42), start, 3600)
    assert ds.sensors[0] == "icu_vitals/132539" and ds.channels[0] == "HR"
    own = folder / "original" / "set-a" / "132540.txt"
    heart: dict[int, list[float]] = {}
    for line in own.read_text().splitlines()[1:]:
        clock, name, value = line.split(",")
        hours, minutes = (int(x) for x in clock.split(":"))
        if name == "HR":
            heart.setdefault((60 * hours + minutes) // 60, []).append(float(value))
    got = ds.values[:, 1, 0]
    assert len(heart) > 40 and np.isnan(got).sum() == 49 - len(heart)
    for hour, readings in heart.items():
        assert got[hour] == pytest.approx(np.mean(readings), rel=1e-12)


def test_a_wide_file_with_a_column_of_states_is_not_melted(
    tmp_path: Path, pems08: GridDataset
) -> None:
    """``ts,a,status,b``: a column of two names beside readings is no variable's when each
    time is one row; it is left out, as text columns are."""
    grid = _leading(pems08, sensors=2)
    with (tmp_path / "states.csv").open("w", newline="") as f:
        csv.writer(f).writerows(
            [["ts", "a", "status", "b"],
             *[[_iso(pems08, t), repr(r[0]), "OK" if t % 3 else "FAIL", repr(r[1])]
               for t, r in enumerate(grid.tolist())]]
        )  # fmt: skip
    ds = load_dataset(tmp_path / "states.csv")
    assert ds.sensors == ("states/a", "states/b")
    assert np.array_equal(ds.values[:, :, 0], grid)
