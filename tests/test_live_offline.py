"""Live equals offline: a trained, exported model scores the same through a worker as in evaluate.

The PEMS08 test part (with the window before it) is replayed through the embedded broker to a
worker serving the model; the per-horizon MAE of the forecasts read back from the forecasts
topic must equal ``stcast evaluate``'s within 1 %. The universal model's interval, calibrated
online as it is served, covers the test part's readings live as ``evaluate`` says it does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from brokered import epoch_s, read_all, topics, worker_settings

from stream_app.offline.datasets import GridDataset, bundled_dataset_path, load_dataset
from stream_app.offline.eval_baselines import target_series
from stream_app.offline.evaluation import evaluate, mae_from_forecasts
from stream_app.offline.protocols import Split, split
from stream_app.tools.broker import EmbeddedBroker
from stream_app.tools.replay import replay
from stream_app.tools.services import WorkerProcess

pytestmark = pytest.mark.integration


def test_live_mae_per_horizon_equals_the_offline_evaluation(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from models.presets import get_preset
    from models.training import train

    pems08 = load_dataset(bundled_dataset_path())
    parts = split(pems08, "basicts")
    brief = get_preset("seed").but(max_epochs=2)
    model_dir = train(
        pems08, "basicts", tmp_path / "model", brief, threads=1, progress=False
    ).out_dir
    offline = evaluate(model_dir, pems08, "basicts").metrics["model"]["mae"]

    first = parts.test.start - parts.window  # the first test sample's window, and one step more
    steps = pems08.n_steps - first
    expected = (steps - parts.window + 1) * pems08.n_sensors
    names = topics(broker)
    settings = worker_settings(broker, names, model_dir=str(model_dir), step_s=0)
    with WorkerProcess(settings, log_path=tmp_path / "worker.log") as worker:
        asyncio.run(
            replay(
                broker.bootstrap_servers,
                names["ticks"],
                pems08,
                start_step=first,
                steps=steps,
                progress=False,
            )
        )
        records = asyncio.run(read_all(broker.bootstrap_servers, names["forecasts"], expected, 120))
        assert worker.stop() == 0

    forecasts = [json.loads(r.value) for r in records]
    assert len(forecasts) == expected
    live = mae_from_forecasts(
        pems08, parts, ((f["sensor"], epoch_s(f["ts"]), f["values"]) for f in forecasts)
    )
    assert len(live) == len(offline) == 12
    for step, (got, want) in enumerate(zip(live, offline, strict=True), start=1):
        assert got == pytest.approx(want, rel=0.01), f"H{step}"


@pytest.mark.parametrize("neighbours", [False, True], ids=["sensor-keyed", "network-keyed"])
def test_the_universal_model_live_equals_offline_with_and_without_neighbours(
    broker: EmbeddedBroker, tmp_path: Path, neighbours: bool
) -> None:
    """The bundled universal model: single ticks keyed by sensor (neighbour input masked), or a
    tick batch per step keyed by network with the PEMS08 graph (neighbours' context live)."""
    from stream_app.bundled import model_path
    from stream_app.offline.datasets import shared_data_dir
    from stream_app.offline.network_context import network_context

    shared = shared_data_dir()
    if neighbours and shared is None:
        pytest.skip("the PEMS08 graph is in ../shared/data")
    pems08 = load_dataset(bundled_dataset_path())
    parts = split(pems08, "basicts")
    universal = model_path("universal")
    graph = shared / "PEMS08" / "PEMS08.csv" if shared is not None and neighbours else None
    table = None
    if graph is not None:
        table, _, _ = network_context(pems08, shared / "PEMS08" if shared else "", graph)
    report = evaluate(universal, pems08, "basicts", neighbours=table)
    offline = report.metrics["model"]["mae"]
    assert report.coverage is not None
    model_coverage, served = report.coverage["overall"], report.coverage["served"]["overall"]
    assert served > model_coverage + 0.05  # the calibration matters on this network

    context = 288
    first = parts.test.start - context  # the first test sample's whole context
    steps = pems08.n_steps - first
    names = topics(broker)
    extra: dict[str, object] = {"graph": str(graph), "keyed": "network"} if graph else {}
    # the error feedback corrects drifting sensors' forecasts live, and re-anchoring moves their
    # contexts, which offline does not do
    extra["drift_feedback_gain"] = 0.0
    extra["drift_reanchor"] = "off"
    settings = worker_settings(broker, names, model_dir="universal", step_s=300, **extra)
    expected = (steps - 12 + 1) * pems08.n_sensors  # forecasts from the 12th reading on
    with WorkerProcess(settings, log_path=tmp_path / "worker.log") as worker:
        asyncio.run(
            replay(
                broker.bootstrap_servers,
                names["ticks"],
                pems08,
                start_step=first,
                steps=steps,
                batched=neighbours,
                network="pems08" if neighbours else None,
                progress=False,
            )
        )
        records = asyncio.run(read_all(broker.bootstrap_servers, names["forecasts"], expected, 180))
        assert worker.stop() == 0

    forecasts = [json.loads(r.value) for r in records]
    assert len(forecasts) == expected
    assert all(f["model"] == "universal@1" and "quantiles" in f for f in forecasts)
    live = mae_from_forecasts(
        pems08, parts, ((f["sensor"], epoch_s(f["ts"]), f["values"]) for f in forecasts)
    )
    for step, (got, want) in enumerate(zip(live, offline, strict=True), start=1):
        assert got == pytest.approx(want, rel=0.01), f"H{step}"
    # live, the calibration began with the stream (a day before the test part), offline with
    # the test part: the same coverage within a few points, far from the model's own
    assert live_coverage(pems08, parts, forecasts) == pytest.approx(served, abs=0.03)


def live_coverage(dataset: GridDataset, parts: Split, forecasts: list[dict[str, Any]]) -> float:
    """Share of the test part's scored targets inside the served 0.1-0.9 interval."""
    index = {sensor: i for i, sensor in enumerate(dataset.sensors)}
    series = target_series(dataset, parts)
    ends = set(parts.sample_ends(parts.test).tolist())
    start = int(dataset.start.timestamp())
    inside = scored = 0
    for forecast in forecasts:
        end = (epoch_s(forecast["ts"]) - start) // dataset.step_s
        if end not in ends:
            continue
        targets = series[end + 1 : end + 1 + parts.horizon, index[forecast["sensor"]]]
        low = np.array(forecast["quantiles"]["0.1"][: parts.horizon])
        high = np.array(forecast["quantiles"]["0.9"][: parts.horizon])
        known = np.isfinite(targets) & ((targets != 0) if parts.masked else True)
        inside += int(((targets >= low) & (targets <= high) & known).sum())
        scored += int(known.sum())
    return inside / scored
