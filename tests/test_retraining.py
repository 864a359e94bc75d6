"""The retrain side of the loop: registry, history, fine-tuning without peeking, the worker.

The last test runs the whole loop through the embedded broker: a level shift on real PEMS08
readings -> drift -> retrain event -> the retrain worker fine-tunes, validates and publishes
version 2 -> the worker swaps -> forecasts carry version 2; then a tampered version 3 is
announced and refused.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from brokered import epoch_s, read_all, topics, worker_settings

from stream_app.core.card import CARD_FILE, MODEL_FILE, ModelContractError
from stream_app.core.forecasters import WindowBatch
from stream_app.core.onnx_forecaster import OnnxForecaster
from stream_app.core.records import Incoming
from stream_app.core.retrain_events import RetrainEvent
from stream_app.kafka.topics import ensure_topics_sync
from stream_app.loop.history import History
from stream_app.loop.registry import Registry, RegistryError
from stream_app.loop.retraining import RetrainWorker, history_span_s
from stream_app.offline.datasets import GridDataset, bundled_dataset_path, load_dataset
from stream_app.settings import Settings
from stream_app.tools.broker import EmbeddedBroker
from stream_app.tools.replay import replay
from stream_app.tools.services import WorkerProcess, scrape, wait_until

torch = pytest.importorskip("torch")

from models.finetuning import FineTuneError, fine_tune  # noqa: E402
from models.presets import get_preset  # noqa: E402
from models.training import train  # noqa: E402


@pytest.fixture(scope="module")
def pems08() -> GridDataset:
    return load_dataset(bundled_dataset_path())


@pytest.fixture(scope="module")
def serving_dir(pems08: GridDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real but briefly trained model (one epoch of the seed preset on the first 400 steps,
    large batches), with its checkpoint: weak on purpose, so that fine-tuning has work to do."""
    out = tmp_path_factory.mktemp("serving") / "model"
    first_days = replace(pems08, values=pems08.values[:400])
    brief = get_preset("seed").but(max_epochs=1, batch_size=512)
    return train(first_days, "basicts", out, brief, threads=1, progress=False).out_dir


def recent_part(dataset: GridDataset, start: int, stop: int) -> GridDataset:
    """Steps ``start..stop-1`` of the flow channel, as the retrain worker's history gives it."""
    return dataset.target_steps(start, stop)


# --- registry -------------------------------------------------------------------------------


def test_publish_makes_versions_current_and_rollback_points_back(
    serving_dir: Path, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    assert registry.current("pems08-lstm") is None and registry.next_version("pems08-lstm") == "1"
    first = registry.publish(serving_dir)
    assert first.model_id == "pems08-lstm@1"
    assert (first.path / MODEL_FILE).is_file() and (first.path / "checkpoint.pt").is_file()
    second_dir = _relabel(serving_dir, tmp_path / "v2", "2")
    registry.publish(second_dir)
    assert registry.versions("pems08-lstm") == ["1", "2"]
    assert registry.current("pems08-lstm").version == "2"  # type: ignore[union-attr]
    registry.set_current("pems08-lstm", "1")  # rollback
    assert registry.current("pems08-lstm").version == "1"  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="already published"):
        registry.publish(second_dir)
    with pytest.raises(RegistryError, match="versions: 1, 2"):
        registry.set_current("pems08-lstm", "7")
    update = registry.get("pems08-lstm", "2").announcement(champion_mae=1.0)
    assert update["model"] == "pems08-lstm@2" and update["uri"].startswith("file:///")
    assert update["card"]["version"] == "2" and update["validation"] == {"champion_mae": 1.0}


def test_publish_refuses_a_model_its_card_does_not_describe(
    serving_dir: Path, tmp_path: Path
) -> None:
    tampered = _relabel(serving_dir, tmp_path / "bad", "2")
    (tampered / MODEL_FILE).write_bytes((tampered / MODEL_FILE).read_bytes() + b"\0")
    registry = Registry(tmp_path / "registry")
    with pytest.raises(ModelContractError, match="sha256"):
        registry.publish(tampered)
    assert registry.versions("pems08-lstm") == []


# --- history --------------------------------------------------------------------------------


def _tick(sensor: str, ts: str, value: float | None) -> Incoming:
    raw = json.dumps({"sensor": sensor, "ts": ts, "value": value}).encode()
    return Incoming("t", 0, 0, sensor.encode(), raw)


def test_history_grids_the_readings_it_kept() -> None:
    history = History(span_s=3 * 300)
    history.add_message(_tick("a", "2016-07-01T00:00:00Z", 1.0))  # falls out of the span
    history.add_message(_tick("a", "2016-07-01T00:05:00Z", 2.0))
    history.add_message(_tick("b", "2016-07-01T00:10:00Z", 3.0))
    history.add_message(_tick("a", "2016-07-01T00:12:00Z", 9.0))  # between grid steps
    history.add_message(_tick("a", "2016-07-01T00:15:00Z", None))  # known missing
    history.add_message(_tick("b", "2016-07-01T00:15:00Z", 5.0))
    batch = {"ticks": [{"sensor": "a", "ts": "2016-07-01T00:15:00Z", "value": 4.0}, {"bad": 1}]}
    assert history.add_message(Incoming("t", 0, 1, b"n", json.dumps(batch).encode())) == 1
    grid = history.grid("net", ("a", "b", "c"), 300)
    assert grid.start.isoformat() == "2016-07-01T00:05:00+00:00" and grid.step_s == 300
    np.testing.assert_array_equal(
        grid.values[:, :, 0],
        [[2.0, np.nan, np.nan], [np.nan, 3.0, np.nan], [4.0, 5.0, np.nan]],
    )


def test_each_network_keeps_its_own_span_of_history() -> None:
    """A daily network keeps as many steps as a 5-minute one, not as many seconds."""
    history = History(span_s=3 * 300, spans={"daily": 3 * 86_400})
    for day in range(1, 6):
        tick = {"sensor": "d", "ts": f"2016-07-0{day}T00:00:00Z", "value": day, "network": "daily"}
        history.add_message(Incoming("t", 0, day, b"d", json.dumps(tick).encode()))
    for ts, value in (("2016-07-04T23:40:00Z", 1.0), ("2016-07-04T23:50:00Z", 2.0)):
        history.add_message(_tick("a", ts, value))
    history.add_message(_tick("a", "2016-07-05T00:00:00Z", 3.0))
    history.prune()
    daily = history.grid("daily", ("d",), 86_400, "daily")
    assert daily.values[:, 0, 0].tolist() == [3.0, 4.0, 5.0]  # three days, not 900 s
    fine = history.grid("net", ("a",), 300)  # 23:40 fell out of its 900 s
    np.testing.assert_array_equal(fine.values[:, 0, 0], [2.0, np.nan, 3.0])
    settings = Settings()
    assert history_span_s(settings, 300) == 259_200  # the setting: three days at 5 minutes
    assert history_span_s(settings, 3_600) == 864 * 3_600
    assert history_span_s(settings, 86_400) == 864 * 86_400


# --- fine-tuning ----------------------------------------------------------------------------


def test_fine_tuning_never_reads_the_holdout(
    serving_dir: Path, pems08: GridDataset, tmp_path: Path
) -> None:
    recent = recent_part(pems08, 300, 560)
    holdout_from = recent.n_steps - 36
    garbled = recent.values.copy()
    garbled[holdout_from:] = 1e4  # the holdout's readings, made absurd
    states = []
    for name, data in (("plain", recent), ("garbled", replace(recent, values=garbled))):
        tuned = fine_tune(serving_dir, data, holdout_from, tmp_path / name, "2", max_epochs=2)
        assert tuned.card.model_id == "pems08-lstm@2" and tuned.epochs == 2
        states.append(torch.load(tmp_path / name / "checkpoint.pt", weights_only=True))
    for key, value in states[0]["state_dict"].items():
        assert torch.equal(value, states[1]["state_dict"][key]), key
    assert states[0]["training"]["fine_tuned_from"] == "pems08-lstm@1"


def test_fine_tuning_says_when_there_is_too_little_history(
    serving_dir: Path, pems08: GridDataset, tmp_path: Path
) -> None:
    with pytest.raises(FineTuneError, match="wait for more history"):
        fine_tune(serving_dir, recent_part(pems08, 0, 40), 30, tmp_path / "c", "2")


# --- the retrain worker's decisions -------------------------------------------------------


def _event(model: str) -> bytes:
    return RetrainEvent(
        "e1", "pems08", "drift", ("pems08/0",), "2016-07-02T12:00:00Z", model, {}
    ).encode()


class _NoProducer:
    async def send_and_wait(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may be announced")


def test_a_challenger_that_does_not_win_is_not_published(
    serving_dir: Path, pems08: GridDataset, tmp_path: Path
) -> None:
    settings = Settings(
        model_registry=str(tmp_path / "registry"),
        retrain_min_gain=0.99,  # no fine-tuning makes the MAE 99 % smaller
        retrain_max_s=5.0,
    )
    worker = RetrainWorker(settings)
    worker.registry.publish(serving_dir)
    for step, ts in enumerate(pems08.timestamps()[:300].tolist()):
        for column, sensor in enumerate(pems08.sensors):
            worker.history.add(sensor, ts, float(pems08.values[step, column, 0]))
    stale = asyncio.run(worker.handle(_event("pems08-lstm@0"), _NoProducer()))  # type: ignore[arg-type]
    assert stale.result == "skipped" and "no longer serves" in stale.detail
    outcome = asyncio.run(worker.handle(_event("pems08-lstm@1"), _NoProducer()))  # type: ignore[arg-type]
    assert outcome.result == "rejected", outcome.detail
    assert outcome.validation is not None and outcome.validation["wins"] is False
    assert outcome.validation["holdout_pairs"] == 25 * 170  # windows ending 263..287
    # the hours it was judged on, and how the fine-tuning went, are in the outcome's line
    assert "from 2016-07-01T22:00:00Z to 2016-07-02T00:55:00Z" in outcome.detail
    assert f"fine-tuned {outcome.validation['epochs']} epoch" in outcome.detail
    assert worker.registry.versions("pems08-lstm") == ["1"]


def test_drift_of_universal_on_a_network_with_its_own_version_is_answered(tmp_path: Path) -> None:
    """Drift events raised under the shared universal model before the network's own version
    (here on trial) reached the workers: that version answered them, none is fine-tuned again;
    another network, still on universal, is retrained."""
    from stream_app.bundled import UNIVERSAL, model_path

    worker = RetrainWorker(Settings(model_registry=str(tmp_path / "registry")))
    worker.registry.publish(model_path(UNIVERSAL))
    own = tmp_path / "own"
    shutil.copytree(model_path(UNIVERSAL), own)
    card = json.loads((own / CARD_FILE).read_text())
    (own / CARD_FILE).write_text(json.dumps({**card, "name": "pems08-universal", "version": "1"}))
    worker.registry.publish(own)
    event = _event("universal@1")  # network pems08
    answered = asyncio.run(worker.handle(event, _NoProducer()))  # type: ignore[arg-type]
    assert answered.result == "skipped"
    assert answered.detail == "pems08 has its own pems08-universal@1: a retrain answered it"
    other = RetrainEvent.decode(event)
    assert worker._serving(replace(other, network="metr-la"))[0] is not None


def test_without_a_holdout_the_challenger_goes_to_its_trial(
    serving_dir: Path, pems08: GridDataset, tmp_path: Path
) -> None:
    settings = Settings(
        model_registry=str(tmp_path / "registry"), retrain_holdout_steps=0, retrain_max_s=5.0,
    )  # fmt: skip
    worker = RetrainWorker(settings)
    worker.registry.publish(serving_dir)
    for step, ts in enumerate(pems08.timestamps()[:300].tolist()):
        for column, sensor in enumerate(pems08.sensors):
            worker.history.add(sensor, ts, float(pems08.values[step, column, 0]))
    announced = _Announcements()
    outcome = asyncio.run(worker.handle(_event("pems08-lstm@1"), announced))  # type: ignore[arg-type]
    assert (outcome.result, outcome.published) == ("published", "pems08-lstm@2"), outcome.detail
    assert outcome.validation is not None and outcome.validation["holdout"] is None
    assert "no holdout: the workers' trial judges it" in outcome.detail
    [update] = announced
    assert update["model"] == "pems08-lstm@2" and update["validation"]["holdout"] is None
    tuned = json.loads((worker.registry.get("pems08-lstm", "2").path / CARD_FILE).read_text())
    fitted = tuned["training"]["fine_tuning"]
    assert fitted["holdout_from"] == fitted["recent_steps"] == 300  # every step was fitted on


def test_no_holdout_needs_a_trial() -> None:
    with pytest.raises(ValueError, match="STCAST_CANARY_MODE=before"):
        Settings(retrain_holdout_steps=0, canary_mode="after").validated()
    with pytest.raises(ValueError, match="STCAST_CANARY_S above 0"):
        Settings(retrain_holdout_steps=0, canary_s=0.0).validated()
    with pytest.raises(ValueError, match="0 or more"):
        Settings(retrain_holdout_steps=-1).validated()


class _Announcements(list[dict[str, object]]):
    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.append(json.loads(value))


def test_a_canary_rollback_makes_the_previous_version_current_once(
    serving_dir: Path, tmp_path: Path
) -> None:
    worker = RetrainWorker(Settings(model_registry=str(tmp_path / "registry")))
    worker.registry.publish(serving_dir)
    worker.registry.publish(_relabel(serving_dir, tmp_path / "v2", "2"))
    verdict = {"decision": "rollback", "served": "pems08-lstm@2", "previous": "pems08-lstm@1",
               "served_mae": 30.0, "previous_mae": 27.0, "pairs": 900}  # fmt: skip
    raw = RetrainEvent(
        "r1", "pems08", "rollback", (), "2016-07-02T12:00:00Z", "pems08-lstm@2", verdict
    ).encode()
    announced = _Announcements()
    outcome = asyncio.run(worker.handle(raw, announced))  # type: ignore[arg-type]
    assert (outcome.result, outcome.published) == ("rolled back", "pems08-lstm@1")
    current = worker.registry.current("pems08-lstm")
    assert current is not None and current.version == "1"
    [update] = announced
    assert update["model"] == "pems08-lstm@1" and update["validation"] == {"rollback": verdict}
    again = asyncio.run(worker.handle(raw, announced))  # type: ignore[arg-type]
    assert again.result == "skipped" and "no longer current" in again.detail
    assert len(announced) == 1


def _relabel(source: Path, target: Path, version: str) -> Path:
    shutil.copytree(source, target)
    card = json.loads((target / CARD_FILE).read_text())
    card["version"] = version
    (target / CARD_FILE).write_text(json.dumps(card))
    return target


# --- the whole loop through the broker --------------------------------------------------------


@pytest.mark.integration
def test_drift_retrain_publish_swap_and_a_refused_tampered_model(
    broker: EmbeddedBroker, serving_dir: Path, pems08: GridDataset, tmp_path: Path
) -> None:
    names = topics(broker)
    loop_topics = {kind: f"{names['ticks']}.{kind}" for kind in ("retrain", "models")}
    ensure_topics_sync(broker.bootstrap_servers, dict.fromkeys(loop_topics.values(), 1))
    registry = Registry(tmp_path / "registry")
    registry.publish(serving_dir)
    shifted = _level_shift(pems08, onset=150, share=0.3, seed=0)
    common = {
        "retrain_topic": loop_topics["retrain"],
        "models_topic": loop_topics["models"],
        "model_registry": str(registry.root),
    }
    worker_env = worker_settings(
        broker,
        names,
        model_dir=str(registry.current("pems08-lstm").path),  # type: ignore[union-attr]
        step_s=0,
        drift_warmup=36,
        canary_mode="after",  # the new version serves at once (a trial is test_canary's)
        **common,
    )
    retrain_env = {
        **worker_env,
        "retrain_max_s": 20.0,
        "retrain_group_id": f"it-retrain-{names['ticks']}",
    }
    with (
        WorkerProcess(worker_env, log_path=tmp_path / "worker.log") as worker,
        WorkerProcess(retrain_env, tmp_path / "retrain.log", verb="retrain-worker") as retrainer,
    ):
        asyncio.run(_replay(broker, names["ticks"], shifted, 0, 240))
        published = wait_until(lambda: registry.current("pems08-lstm").version == "2", 150)  # type: ignore[union-attr]
        assert published, (tmp_path / "retrain.log").read_text()[-3000:]
        assert wait_until(
            lambda: scrape(worker.metrics_url).get("stcast_model_swaps_total") == 1.0, 30
        )
        tampered = _relabel(registry.get("pems08-lstm", "2").path, tmp_path / "v3", "3")
        (tampered / MODEL_FILE).write_bytes((tampered / MODEL_FILE).read_bytes()[::-1])
        asyncio.run(_announce_raw(broker, loop_topics["models"], tampered))
        assert wait_until(
            lambda: (
                scrape(worker.metrics_url).get(
                    'stcast_model_swap_failures_total{reason="contract"}'
                )
                == 1.0
            ),
            30,
        ), (tmp_path / "worker.log").read_text()[-3000:]
        asyncio.run(_replay(broker, names["ticks"], shifted, 240, 60))
        expected = (300 - 11) * pems08.n_sensors
        records = asyncio.run(read_all(broker.bootstrap_servers, names["forecasts"], expected, 60))
        assert worker.stop() == 0 and retrainer.stop() == 0

    events = asyncio.run(read_all(broker.bootstrap_servers, loop_topics["retrain"], 1, 10))
    event = RetrainEvent.decode(events[0].value)
    assert event.model == "pems08-lstm@1" and len(event.sensors) >= 3
    update = json.loads(
        asyncio.run(read_all(broker.bootstrap_servers, loop_topics["models"], 1, 10))[0].value
    )
    assert update["model"] == "pems08-lstm@2"
    assert update["validation"]["challenger_mae"] < update["validation"]["champion_mae"]
    forecasts = [json.loads(r.value) for r in records]
    assert len(forecasts) == expected
    assert {f["model"] for f in forecasts} == {"pems08-lstm@1", "pems08-lstm@2"}
    last = [f for f in forecasts if epoch_s(f["ts"]) == int(shifted.timestamps()[299])]
    assert last and all(f["model"] == "pems08-lstm@2" for f in last)  # not the tampered @3
    check = OnnxForecaster(registry.get("pems08-lstm", "2").path)
    sample = last[0]
    column = shifted.sensors.index(sample["sensor"])
    window = shifted.values[288:300, column, 0][None, :]
    want = check.forecast(WindowBatch(window, shifted.timestamps()[[299]], (sample["sensor"],)))
    assert sample["values"] == pytest.approx(want[0].tolist(), rel=1e-5)


def _level_shift(dataset: GridDataset, onset: int, share: float, seed: int) -> GridDataset:
    """+3 standard deviations of each chosen sensor's flow from ``onset`` on."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(dataset.n_sensors, round(share * dataset.n_sensors), replace=False)
    values = dataset.values.copy()
    flow = values[:, chosen, 0]
    values[onset:, chosen, 0] += 3 * np.nanstd(flow[:onset], axis=0)
    return replace(dataset, values=values)


async def _replay(
    broker: EmbeddedBroker, topic: str, data: GridDataset, start: int, steps: int
) -> None:
    await replay(
        broker.bootstrap_servers,
        topic,
        data,
        start_step=start,
        steps=steps,
        speed=300 * 40.0,
        progress=False,
    )


async def _announce_raw(broker: EmbeddedBroker, topic: str, model_dir: Path) -> None:
    from aiokafka import AIOKafkaProducer

    card = json.loads((model_dir / CARD_FILE).read_text())
    record = {
        "model": f"{card['name']}@{card['version']}",
        "uri": model_dir.resolve().as_uri(),
        "sha256": card["onnx_sha256"],
        "card": card,
        "validation": {},
    }
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, json.dumps(record).encode(), key=b"pems08-lstm")
    finally:
        await producer.stop()
