"""Live equals offline: a trained, exported model scores the same through a worker as in evaluate.

The PEMS08 test part (with the window before it) is replayed through the embedded broker to a
worker serving the model; the per-horizon MAE of the forecasts read back from the forecasts
topic must equal ``stcast evaluate``'s within 1 %.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from brokered import epoch_s, read_all, topics, worker_settings

from stream_app.offline.datasets import bundled_dataset_path, load_dataset
from stream_app.offline.evaluation import evaluate, mae_from_forecasts
from stream_app.offline.protocols import split
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
