"""Several networks per worker: declared in a file, each served on its own grid."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from brokered import read_all, topics, worker_settings

from stream_app.networks import NetworksError, NetworkSpec, load_networks
from stream_app.offline.datasets import (
    GridDataset,
    bundled_dataset_path,
    load_dataset,
    shared_data_dir,
)
from stream_app.settings import Settings
from stream_app.tools.broker import EmbeddedBroker
from stream_app.tools.replay import replay
from stream_app.tools.services import WorkerProcess

SHARED = shared_data_dir()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_toml_file_declares_networks_and_the_default_comes_first(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text("from,to,cost\n0,1,5.0\n")
    path = write(
        tmp_path,
        "networks.toml",
        '[[network]]\nname = "air"\nstep_s = 3600\n\n'
        '[[network]]\nname = "roads"\nstep_s = 300\ngraph = "g.csv"\nkeyed = "network"\n'
        "default = true\n",
    )
    assert load_networks(path) == [
        NetworkSpec("roads", 300, "", str(tmp_path / "g.csv"), "network", True),
        NetworkSpec("air", 3600),
    ]


def test_a_json_file_works_the_same(tmp_path: Path) -> None:
    text = json.dumps({"networks": [{"name": "a", "step_s": 60, "model": "none"}]})
    assert load_networks(write(tmp_path, "n.json", text)) == [NetworkSpec("a", 60, "none")]


def test_a_network_may_answer_its_tick_batches_with_forecast_batches(tmp_path: Path) -> None:
    text = json.dumps({"networks": [{"name": "a", "step_s": 60, "forecast_records": "batch"}]})
    (spec,) = load_networks(write(tmp_path, "n.json", text))
    assert spec.forecast_records == "batch"
    assert spec.settings(Settings()).forecast_records == "batch"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"networks": []}', "found none"),
        ('{"networks": [{"step_s": 300}]}', "'name' must be"),
        ('{"networks": [{"name": "a", "step_s": 0}]}', "'step_s' must be a positive"),
        ('{"networks": [{"name": "a", "step_s": "5m"}]}', "'step_s' must be a positive"),
        ('{"networks": [{"name": "a", "step_s": 60, "speed": 1}]}', "unknown keys ['speed']"),
        ('{"networks": [{"name": "a", "step_s": 60, "keyed": "zone"}]}', "'keyed' must be one"),
        (
            '{"networks": [{"name": "a", "step_s": 60, "forecast_records": "all"}]}',
            "'forecast_records' must be 'each' or 'batch'",
        ),
        (
            '{"networks": [{"name": "a", "step_s": 60, "graph": "no.csv", "keyed": "network"}]}',
            "does not exist",
        ),
        (
            '{"networks": [{"name": "a", "step_s": 60}, {"name": "a", "step_s": 60}]}',
            "more than once",
        ),
        (
            '{"networks": [{"name": "a", "step_s": 60, "default": true}, '
            '{"name": "b", "step_s": 60, "default": true}]}',
            "mark one",
        ),
        ('{"networks": [{"name": "a", "step_s": 60', "is not valid JSON"),
        (
            '{"networks": [{"name": "a", "step_s": 60, "timezone": "Pacific"}]}',
            "timezone='Pacific': not a time zone stcast knows",
        ),
        ('{"networks": [{"name": "a", "step_s": 60, "timezone": 8}]}', "'timezone' must be"),
    ],
)
def test_every_mistake_in_the_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(NetworksError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_networks(write(tmp_path, "networks.json", text))


def test_a_network_keeps_its_own_clock(tmp_path: Path) -> None:
    text = (
        '[[network]]\nname = "la"\nstep_s = 300\ntimezone = "America/Los_Angeles"\n'
        '[[network]]\nname = "utc"\nstep_s = 3600\n'
    )
    la, utc = load_networks(write(tmp_path, "n.toml", text))
    base = Settings(timezone="Europe/Paris")
    assert la.settings(base).timezone == "America/Los_Angeles"
    assert utc.settings(base).timezone == "Europe/Paris"  # the workers' own, where none is said


def test_a_graph_on_a_sensor_keyed_network_is_refused(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text("from,to\n0,1\n")
    text = '[[network]]\nname = "a"\nstep_s = 60\ngraph = "g.csv"\n'
    with pytest.raises(NetworksError, match="keyed = 'network'"):
        load_networks(write(tmp_path, "n.toml", text))
    with pytest.raises(NetworksError, match="not valid TOML"):
        load_networks(write(tmp_path, "bad.toml", "[[network]\n"))


def forecastable(dataset: GridDataset, steps: int) -> int:
    """Readings of the first ``steps`` that a universal model forecasts from: present, with at
    least 12 readings of the sensor up to them."""
    present = ~np.isnan(dataset.values[:steps, :, 0])
    return int((present & (np.cumsum(present, axis=0) >= 12)).sum())


@pytest.mark.integration
@pytest.mark.skipif(SHARED is None, reason="the PEMS08 graph and BIKE_DC are in ../shared/data")
def test_one_worker_serves_two_networks_each_on_its_own_grid(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    assert SHARED is not None
    pems08 = load_dataset(bundled_dataset_path())
    bikes = load_dataset(SHARED / "corpus" / "BIKE_DC" / "wide.csv")
    networks = [
        {
            "name": "pems08",
            "step_s": 300,
            "keyed": "network",
            "graph": str(SHARED / "PEMS08" / "PEMS08.csv"),
        },
        {"name": "bikes", "step_s": 3600},
    ]
    path = write(tmp_path, "networks.json", json.dumps({"networks": networks}))
    names = topics(broker)
    settings = worker_settings(broker, names, networks=str(path), model_dir="", network="")
    steps = {"pems08": 40, "bikes": 30}
    made = {"pems08": forecastable(pems08, 40), "bike_dc": forecastable(bikes, 30)}
    expected = sum(made.values())
    with WorkerProcess(settings, log_path=tmp_path / "worker.log") as worker:
        asyncio.run(
            replay(
                broker.bootstrap_servers,
                names["ticks"],
                pems08,
                batched=True,
                steps=steps["pems08"],
                network="pems08",
                progress=False,
            )
        )
        asyncio.run(
            replay(
                broker.bootstrap_servers,
                names["ticks"],
                bikes,
                steps=steps["bikes"],
                network="bikes",
                progress=False,
            )
        )
        asyncio.run(
            replay(
                broker.bootstrap_servers,
                names["ticks"],
                bikes,
                steps=1,
                network="rivers",
                progress=False,
            )
        )
        records = asyncio.run(read_all(broker.bootstrap_servers, names["forecasts"], expected, 120))
        dead = asyncio.run(read_all(broker.bootstrap_servers, names["dlq"], bikes.n_sensors, 20))
        assert worker.stop() == 0

    forecasts = [json.loads(r.value) for r in records]
    grids = Counter((f["sensor"].split("/")[0], f["step_s"]) for f in forecasts)
    assert grids == {("pems08", 300): made["pems08"], ("bike_dc", 3600): made["bike_dc"]}
    assert all(f["model"] == "universal@1" and "quantiles" in f for f in forecasts)
    reasons = [json.loads(r.value)["reason"] for r in dead]
    assert reasons == ["unknown_network"] * bikes.n_sensors
    log = (tmp_path / "worker.log").read_text()
    assert "network pems08: serving universal@1" in log and "neighbours of 170 sensors" in log
    assert "network bikes: serving universal@1" in log and "no neighbours" in log
    assert np.isfinite([v for f in forecasts for v in f["values"]]).all()
