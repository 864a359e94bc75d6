"""The embedded broker end to end: topics, a replay of real PEMS08 steps, a clean stop."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream_app.kafka.topics import ensure_topics, ensure_topics_sync
from stream_app.offline.datasets import GridDataset, bundled_dataset_path, load_dataset
from stream_app.tools.broker import BrokerError, EmbeddedBroker, free_port
from stream_app.tools.replay import encode_step, replay

pytestmark = pytest.mark.integration


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def _partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described}


async def _consume(
    bootstrap: str, topic: str, partitions: int, want: int
) -> list[tuple[int, bytes, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    await consumer.start()
    got: list[tuple[int, bytes, bytes]] = []
    try:
        async with asyncio.timeout(20):
            while len(got) < want:
                batches = await consumer.getmany(timeout_ms=500)
                got += [(r.partition, r.key, r.value) for rs in batches.values() for r in rs]
    finally:
        await consumer.stop()
    return got


def test_topics_replay_and_read_back(broker: EmbeddedBroker) -> None:
    bootstrap, topics = broker.bootstrap_servers, {"stcast.ticks": 3, "stcast.forecasts": 3}
    pems08: GridDataset = load_dataset(bundled_dataset_path())

    async def scenario() -> list[tuple[int, bytes, bytes]]:
        await ensure_topics(bootstrap, topics)
        await ensure_topics(bootstrap, topics)  # idempotent
        assert await _partition_counts(bootstrap, list(topics)) == topics
        report = await replay(bootstrap, "stcast.ticks", pems08, steps=3, progress=False)
        assert (report.messages, report.ticks, report.steps) == (510, 510, 3)
        return await _consume(bootstrap, "stcast.ticks", 3, 510)

    got = asyncio.run(scenario())
    expected = [m for t in range(3) for m in encode_step(pems08, t, batched=False)]
    assert sorted((k, v) for _, k, v in got) == sorted(expected)
    by_key: dict[bytes, list[tuple[int, bytes]]] = defaultdict(list)
    for partition, key, value in got:
        by_key[key].append((partition, value))
    for key, records in by_key.items():
        assert len({p for p, _ in records}) == 1, f"{key!r} spread over partitions"
        # in offset order within its partition, so in time order
        assert [v for _, v in records] == [v for k, v in expected if k == key]
    assert len({p for p, _, _ in got}) == 3


def test_stop_leaves_nothing_behind() -> None:
    broker = EmbeddedBroker()
    broker.start()
    port = int(broker.bootstrap_servers.rsplit(":", 1)[1])
    process = broker._process
    assert process is not None and not _port_free(port)
    ensure_topics_sync(broker.bootstrap_servers, {"t": 1})
    broker.stop()
    broker.stop()  # idempotent
    assert process.poll() is not None and not broker.running
    assert _port_free(port)


def test_taken_port_is_refused(broker: EmbeddedBroker) -> None:
    port = int(broker.bootstrap_servers.rsplit(":", 1)[1])
    with pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(port=port).start(timeout_s=5)


def test_serve_forever_stops_on_sigterm() -> None:
    port = free_port()
    code = "from stream_app.tools.broker import serve_forever; import sys; "
    code += "sys.exit(serve_forever(%d, %r))"
    code %= (port, "127.0.0.1")
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert f"127.0.0.1:{port}" in line and not _port_free(port)
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
    finally:
        if server.poll() is None:
            server.kill()
    assert _port_free(port)


async def _drain(bootstrap: str, topic: str) -> int:
    """How many messages partition 0 holds; Tansu's end offsets are not reliable, so read them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.start()
    count, idle_polls = 0, 0
    try:
        # stop after a second with nothing new, once something came (or after 10 empty polls)
        while idle_polls < (1 if count else 10):
            batches = await consumer.getmany(timeout_ms=1000)
            count += sum(len(records) for records in batches.values())
            idle_polls = 0 if batches else idle_polls + 1
    finally:
        await consumer.stop()
    return count


def test_cancelled_paced_replay_flushes_what_it_sent(broker: EmbeddedBroker) -> None:
    bootstrap = broker.bootstrap_servers
    pems08 = load_dataset(bundled_dataset_path())

    async def scenario() -> tuple[int, set[asyncio.Task[object]]]:
        await ensure_topics(bootstrap, {"paced": 1})
        # speed 600 with 5-minute steps: a step every 0.5 s, cancelled while waiting for one
        task = asyncio.create_task(replay(bootstrap, "paced", pems08, speed=600, progress=False))
        await asyncio.sleep(1.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        return await _drain(bootstrap, "paced"), leftover

    sent, leftover = asyncio.run(scenario())
    assert sent in (340, 510), "whole steps, each acknowledged before the next is due"
    assert not leftover, f"producer tasks still running: {leftover}"


def test_a_hold_keeps_a_paced_replay_waiting_and_the_pace_resumes_after_it(
    broker: EmbeddedBroker,
) -> None:
    bootstrap = broker.bootstrap_servers
    pems08 = load_dataset(bundled_dataset_path())
    held: list[float] = []  # when each step's hold was asked, from the replay's start

    async def scenario() -> tuple[int, float]:
        await ensure_topics(bootstrap, {"held": 1})
        began = time.monotonic()

        async def hold(step: int) -> float:
            held.append(time.monotonic() - began)
            assert step == len(held) - 1  # the index of the step about to go
            if len(held) != 2:
                return 0.0
            await asyncio.sleep(1.0)  # before the second step: as a retrain would
            return 1.0

        # speed 1200 with 5-minute steps: a step every 0.25 s, so 4 steps take 0.75 s unheld
        await replay(bootstrap, "held", pems08, speed=1200, steps=4, progress=False, hold=hold)
        seconds = time.monotonic() - began
        return await _drain(bootstrap, "held"), seconds

    sent, seconds = asyncio.run(scenario())
    assert sent == 4 * 170 and len(held) == 4
    assert 1.75 <= seconds < 5.0  # 0.75 s of pace plus the 1 s hold: no catching up after it
    assert held[2] - held[1] >= 1.0 + 0.25 - 0.05  # the step after the hold waits its turn
