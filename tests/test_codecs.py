"""Ticks in every codec Kafka defines are forecast, and an undecodable batch never kills a worker.

Producers write record batches compressed with none, gzip, snappy, lz4 or zstd; two independent
clients do it here (aiokafka, and librdkafka through confluent-kafka). A batch that cannot be
decoded (here a corrupt CRC, which the embedded broker stores as it came) is stopped at or
skipped to the dead-letter topic, as ``STCAST_ON_UNREADABLE`` says.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from brokered import read_all, topics, worker_settings

from stream_app.kafka.unreadable import RawFetcher, split_frames
from stream_app.offline.datasets import GridDataset, bundled_dataset_path, load_dataset
from stream_app.settings import Settings
from stream_app.tools.broker import EmbeddedBroker
from stream_app.tools.replay import rfc3339
from stream_app.tools.services import WorkerProcess, scrape

pytestmark = pytest.mark.integration

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
SENSORS, STEPS, WINDOW = 4, 20, 12
Message = tuple[bytes, bytes]


@pytest.fixture(scope="module")
def pems08() -> GridDataset:
    return load_dataset(bundled_dataset_path())


def readings(dataset: GridDataset, name: str, columns: range, steps: range) -> list[Message]:
    """Single ticks of real PEMS08 flows for sensors ``name/n``, step by step."""
    start = int(dataset.start.timestamp())
    messages = []
    for t in steps:
        for n in columns:
            sensor = f"{name}/{n}"
            value = float(dataset.values[t, n, 0])
            tick = {"sensor": sensor, "ts": rfc3339(start + t * dataset.step_s), "value": value}
            messages.append((sensor.encode(), json.dumps(tick).encode()))
    return messages


async def produce_aiokafka(
    bootstrap: str, topic: str, messages: list[Message], codec: str, partition: int | None = None
) -> None:
    compression = None if codec == "none" else codec
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, compression_type=compression, linger_ms=20
    )
    await producer.start()
    try:
        sent = [await producer.send(topic, v, key=k, partition=partition) for k, v in messages]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def produce_librdkafka(bootstrap: str, topic: str, messages: list[Message], codec: str) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    errors: list[str] = []
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 20}
    )
    for key, value in messages:
        producer.produce(
            topic, value, key, on_delivery=lambda err, _msg: err and errors.append(str(err))
        )
    assert producer.flush(30) == 0
    assert errors == []


async def codecs_in(bootstrap: str, topic: str, partitions: int = 4) -> Counter[str]:
    """How many record batches of each codec ``topic`` holds, read from its raw bytes."""
    found: Counter[str] = Counter()
    async with RawFetcher(Settings(bootstrap_servers=bootstrap)) as fetcher:
        for partition in range(partitions):
            offset = 0
            while frames := split_frames(
                await fetcher.fetch(TopicPartition(topic, partition), offset, 1 << 20)
            ):
                found.update(frame.codec for frame in frames)
                offset = frames[-1].next_offset
    return found


def test_ticks_in_every_codec_from_two_clients_are_forecast_and_forecasts_go_out_compressed(
    broker: EmbeddedBroker, pems08: GridDataset, tmp_path: Path
) -> None:
    names = topics(broker)
    bootstrap = broker.bootstrap_servers
    runs = [f"{client}-{codec}" for codec in CODECS for client in ("aiokafka", "librdkafka")]
    settings = worker_settings(broker, names, compression="lz4", drift_feedback_gain=0.0)
    log_path = tmp_path / "worker.log"
    with WorkerProcess(settings, log_path=log_path) as worker:
        for codec in CODECS:
            stream = readings(pems08, f"aiokafka-{codec}", range(SENSORS), range(STEPS))
            asyncio.run(produce_aiokafka(bootstrap, names["ticks"], stream, codec))
            stream = readings(pems08, f"librdkafka-{codec}", range(SENSORS), range(STEPS))
            produce_librdkafka(bootstrap, names["ticks"], stream, codec)
        expected = len(runs) * SENSORS * (STEPS - WINDOW + 1)
        records = asyncio.run(read_all(bootstrap, names["forecasts"], expected, 120))
        samples = scrape(worker.metrics_url)
        alive = worker.poll() is None
        assert worker.stop() == 0

    assert alive
    forecasts = [json.loads(r.value) for r in records]
    per_sensor = Counter(f["sensor"] for f in forecasts)
    wanted = {f"{run}/{n}": STEPS - WINDOW + 1 for run in runs for n in range(SENSORS)}
    assert per_sensor == wanted  # every sensor of every codec and client, nothing more
    for f in forecasts:  # persistence: the tick's own value, whatever the codec carried
        n = int(f["sensor"].rsplit("/", 1)[1])
        step = int(np.datetime64(f["ts"][:-1], "s").astype(int)) - pems08.start.timestamp()
        assert f["values"] == [pems08.values[int(step) // 300, n, 0]] * 12
    assert samples['stcast_unreadable_batches_total{action="stop"}'] == 0
    assert "Traceback" not in log_path.read_text()
    ticks_codecs = asyncio.run(codecs_in(bootstrap, names["ticks"]))
    assert set(ticks_codecs) == set(CODECS)  # the producers really compressed
    assert set(asyncio.run(codecs_in(bootstrap, names["forecasts"]))) == {"lz4"}


def corrupt_batch(values: list[bytes]) -> bytes:
    """A record batch whose CRC does not match its content (a bit flipped on disk, say)."""
    builder = DefaultRecordBatchBuilder(2, 1, 0, -1, -1, -1, 1 << 20)  # gzip
    for delta, value in enumerate(values):
        builder.append(delta, timestamp=0, key=b"corrupt", value=value, headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])) ^ 0xFFFF)
    return bytes(data)


async def produce_raw(bootstrap: str, tp: TopicPartition, batch: bytes) -> None:
    """Write ``batch`` as it is: the embedded broker, unlike Kafka, does not check CRCs."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        client.add_topic(tp.topic)
        await client.force_metadata_update()
        node = client.cluster.leader_for_partition(tp)
        request = ProduceRequest(
            transactional_id=None,
            required_acks=1,
            timeout=5000,
            topics=[(tp.topic, [(tp.partition, batch)])],
        )
        response = await client.send(node, request)
        assert response.topics[0][1][0][1] == 0  # error code
    finally:
        await client.close()


@pytest.mark.parametrize("action", ["stop", "skip"])
def test_a_corrupt_batch_stops_its_partition_or_is_dead_lettered_and_the_worker_lives(
    broker: EmbeddedBroker, pems08: GridDataset, tmp_path: Path, action: str
) -> None:
    names = topics(broker)
    bootstrap, ticks = broker.bootstrap_servers, names["ticks"]
    before = readings(pems08, "behind", range(1), range(15))
    after = readings(pems08, "behind", range(1), range(15, STEPS))
    bad = corrupt_batch([b'{"sensor":"lost","ts":0,"value":1}'] * 3)
    settings = worker_settings(broker, names, on_unreadable=action, drift_feedback_gain=0.0)
    log_path = tmp_path / "worker.log"
    with WorkerProcess(settings, log_path=log_path) as worker:
        asyncio.run(produce_aiokafka(bootstrap, ticks, before, "none", partition=1))
        asyncio.run(produce_raw(bootstrap, TopicPartition(ticks, 1), bad))
        asyncio.run(produce_aiokafka(bootstrap, ticks, after, "zstd", partition=1))
        other = readings(pems08, "elsewhere", range(SENSORS), range(STEPS))
        asyncio.run(produce_aiokafka(bootstrap, ticks, other, "snappy", partition=0))
        behind = 15 - WINDOW + 1 + (len(after) if action == "skip" else 0)
        expected = SENSORS * (STEPS - WINDOW + 1) + behind
        records = asyncio.run(read_all(bootstrap, names["forecasts"], expected, 60))
        dead = asyncio.run(read_all(bootstrap, names["dlq"], int(action == "skip"), 10))
        samples = scrape(worker.metrics_url)
        alive = worker.poll() is None
        assert worker.stop() == 0

    assert alive
    per_sensor = Counter(json.loads(r.value)["sensor"] for r in records)
    assert per_sensor == {
        **{f"elsewhere/{n}": STEPS - WINDOW + 1 for n in range(SENSORS)},
        "behind/0": behind,  # stop: only what came before the batch
    }
    assert samples[f'stcast_unreadable_batches_total{{action="{action}"}}'] == 1
    log = log_path.read_text()
    assert "Traceback" not in log
    assert f"{ticks} partition 1, offsets " in log and "CorruptRecordException" in log
    if action == "stop":
        assert "stopped reading partition 1 there" in log and "STCAST_ON_UNREADABLE=skip" in log
        assert dead == []
    else:
        [letter] = [json.loads(r.value) for r in dead]
        assert letter["reason"] == "malformed" and letter["partition"] == 1
        raw = base64.b64decode(letter["raw"])
        assert raw[12:] == bad[12:]  # the broker assigned the base offset, the rest is as sent
        assert letter["offset"] == struct.unpack(">q", raw[:8])[0]
