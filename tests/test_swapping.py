"""Hot swap: a model update is checked and warmed off the hot path, then served from the next
micro-batch; anything wrong with it leaves the old model serving, with the reason counted."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from brokered import epoch_s, read_all, topics, worker_settings
from conftest import PEMS08_SENSORS
from prometheus_client import CollectorRegistry

from export.onnx_graphs import build_seed_lstm
from stream_app.core.forecasters import Persistence, WindowBatch
from stream_app.core.metrics import Metrics
from stream_app.core.onnx_forecaster import OnnxForecaster
from stream_app.core.pipeline import Pipeline
from stream_app.kafka.swapping import ModelUpdate, ModelUpdateError, _apply, open_update
from stream_app.kafka.topics import ensure_topics_sync
from stream_app.offline.datasets import bundled_dataset_path, load_dataset
from stream_app.settings import Settings
from stream_app.tools.broker import EmbeddedBroker
from stream_app.tools.replay import replay
from stream_app.tools.services import WorkerProcess, scrape, wait_until

SETTINGS = Settings(provider="cpu")


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 2: the seed architecture with other weights."""
    return build_seed_lstm(
        tmp_path_factory.mktemp("v2"), sensors=PEMS08_SENSORS, mean=214.8, std=138.0, seed=1,
        version="2",
    )  # fmt: skip


def update_for(model_dir: Path) -> ModelUpdate:
    card = json.loads((model_dir / "card.json").read_text())
    return ModelUpdate(f"{card['name']}@{card['version']}", str(model_dir), card["onnx_sha256"])


def test_a_good_update_opens_checked_and_warm(second_model: Path) -> None:
    forecaster = open_update(update_for(second_model), SETTINGS)
    assert forecaster.model_id == "seed-lstm@2"


def test_an_update_whose_hash_differs_is_refused(second_model: Path) -> None:
    update = update_for(second_model)
    wrong = ModelUpdate(update.model, update.uri, "0" * 64)
    with pytest.raises(ModelUpdateError, match="sha256") as refused:
        open_update(wrong, SETTINGS)
    assert refused.value.reason == "sha256"


def test_a_tampered_model_file_is_refused(second_model: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(second_model, tmp_path / "m"))
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ModelUpdateError) as refused:
        open_update(update_for(copy), SETTINGS)
    assert refused.value.reason == "contract"


def test_a_refused_update_keeps_the_old_model_and_counts_the_reason(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    pipeline = Pipeline(Persistence(), step_s=300, metrics=metrics)
    swaps: list[object] = []

    async def swap(forecaster: OnnxForecaster, update: ModelUpdate) -> None:
        swaps.append(forecaster)

    missing = ModelUpdate("x@9", str(tmp_path / "nowhere"), "0" * 64).encode()
    asyncio.run(_apply(missing, SETTINGS, metrics, swap))
    asyncio.run(_apply(b"{not json", SETTINGS, metrics, swap))
    assert swaps == [] and pipeline.forecaster.model_id == "persistence@1"
    failures = "stcast_model_swap_failures_total"
    assert registry.get_sample_value(failures, {"reason": "contract"}) == 1.0
    assert registry.get_sample_value(failures, {"reason": "malformed"}) == 1.0


def test_an_update_announced_longer_ago_than_a_canary_lasts_is_served_without_one(
    second_model: Path,
) -> None:
    """A worker that starts after a version's trial ended elsewhere does not judge it again."""
    judged: list[bool] = []

    async def swap(forecaster: OnnxForecaster, update: ModelUpdate) -> None:
        judged.append(update.canary)

    settings = Settings(provider="cpu", canary_s=3600.0)
    raw = update_for(second_model).encode()
    for age_s in (10.0, 3599.0, 3601.0):
        asyncio.run(_apply(raw, settings, Metrics(CollectorRegistry()), swap, age_s))
    assert judged == [True, True, False]


def test_swap_stamps_the_new_model_and_refuses_another_window(
    seed_model_dir: Path, second_model: Path, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    pipeline = Pipeline(OnnxForecaster(seed_model_dir), step_s=300, metrics=Metrics(registry))
    pipeline.swap(OnnxForecaster(second_model))
    assert pipeline.forecaster.model_id == "seed-lstm@2"
    assert registry.get_sample_value("stcast_model_swaps_total") == 1.0
    labels = {"model": "seed-lstm", "version": "2", "provider": "CPUExecutionProvider"}
    assert registry.get_sample_value("stcast_model_info", labels) == 1.0
    short = build_seed_lstm(tmp_path / "w4", sensors=PEMS08_SENSORS, window=4, version="3")
    with pytest.raises(ValueError, match="window 4"):
        pipeline.swap(OnnxForecaster(short))
    assert pipeline.forecaster.model_id == "seed-lstm@2"


@pytest.mark.integration
def test_a_model_announced_mid_replay_serves_from_then_on_and_no_tick_is_lost(
    broker: EmbeddedBroker, seed_model_dir: Path, second_model: Path, tmp_path: Path
) -> None:
    pems08 = load_dataset(bundled_dataset_path())
    names = topics(broker)
    models_topic = f"{names['ticks']}.models"
    ensure_topics_sync(broker.bootstrap_servers, {models_topic: 1})
    settings = worker_settings(
        broker, names, model_dir=str(seed_model_dir), step_s=0, models_topic=models_topic,
        canary_s=0.0,  # the two seed models have random weights: a canary would roll back
    )  # fmt: skip
    steps = 400
    expected = (steps - 11) * pems08.n_sensors
    log_path = tmp_path / "worker.log"
    with WorkerProcess(settings, log_path=log_path) as worker:
        assert wait_until(lambda: "assigned partitions [0" in log_path.read_text(), 60)
        thread = threading.Thread(
            target=lambda: asyncio.run(
                replay(broker.bootstrap_servers, names["ticks"], pems08, steps=steps,
                       speed=300 * 40.0, progress=False)
            )
        )  # fmt: skip
        thread.start()  # 400 steps in 10 s
        time.sleep(4.0)
        asyncio.run(_announce(broker.bootstrap_servers, models_topic, update_for(second_model)))
        thread.join(60)
        records = asyncio.run(read_all(broker.bootstrap_servers, names["forecasts"], expected, 120))
        assert wait_until(
            lambda: scrape(worker.metrics_url).get("stcast_model_swaps_total") == 1.0, 10
        )
        assert worker.stop() == 0

    forecasts = [json.loads(r.value) for r in records]
    assert len({(f["sensor"], f["ts"]) for f in forecasts}) == len(forecasts) == expected
    by_model = {
        m: [f for f in forecasts if f["model"] == m] for m in ("seed-lstm@1", "seed-lstm@2")
    }
    assert by_model["seed-lstm@1"] and by_model["seed-lstm@2"]
    last_old = {f["sensor"]: epoch_s(f["ts"]) for f in by_model["seed-lstm@1"]}
    first_new = {}
    for f in by_model["seed-lstm@2"]:
        first_new[f["sensor"]] = min(first_new.get(f["sensor"], 2**62), epoch_s(f["ts"]))
    # per sensor, every forecast before the swap is older than every forecast after it
    assert all(last_old[s] < first_new[s] for s in last_old.keys() & first_new.keys())
    check = OnnxForecaster(second_model)  # the stamped model really made the values
    sample = by_model["seed-lstm@2"][-1]
    end = (epoch_s(sample["ts"]) - int(pems08.start.timestamp())) // 300
    column = pems08.sensors.index(sample["sensor"])
    window = pems08.values[end - 11 : end + 1, column, 0][None, :]
    want = check.forecast(WindowBatch(window, pems08.timestamps()[[end]], (sample["sensor"],)))
    assert sample["values"] == pytest.approx(want[0].tolist(), rel=1e-6)


async def _announce(bootstrap: str, topic: str, update: ModelUpdate) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, update.encode(), key=b"pems08")
    finally:
        await producer.stop()


def test_an_announced_rollback_names_the_model_it_replaces() -> None:
    plain = ModelUpdate("m@2", "file:///r/m/2", "a" * 64).encode(validation={"wins": True})
    assert (ModelUpdate.decode(plain).rolls_back, ModelUpdate.decode(plain).canary) == ("", True)
    verdict = {"decision": "rollback", "served": "m@2", "previous": "m@1"}
    rollback = ModelUpdate("m@1", "file:///r/m/1", "b" * 64).encode(
        validation={"rollback": verdict}
    )
    decoded = ModelUpdate.decode(rollback)
    assert (decoded.rolls_back, decoded.canary) == ("m@2", False)
    by_hand = ModelUpdate("m@1", "file:///r/m/1", "b" * 64).encode(
        validation={"by": "stcast models use", "canary": False}
    )
    assert ModelUpdate.decode(by_hand).canary is False
