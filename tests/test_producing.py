"""The batch producer: `send_many` never waits for the broker; nothing is lost or reordered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from stream_app.kafka.producing import MAX_BATCH_BYTES, BatchProducer
from stream_app.kafka.topics import ensure_topics_sync
from stream_app.tools.broker import EmbeddedBroker


class HeldClient:
    """aiokafka's producer as ``Outbox`` uses it; a batch is taken only when the test says so,
    as aiokafka takes a partition's next batch only once the previous one is drained."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.taken: list[tuple[int, list[bytes]]] = []  # partition, values of each batch
        self.delivered: list[asyncio.Future[Any]] = []
        self.gate = asyncio.Event()

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(MAX_BATCH_BYTES, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        await self.gate.wait()
        self.gate.clear()
        if self.fail is not None:
            raise self.fail
        self.taken.append((partition, [bytes(r.value) for r in _records(batch)]))
        future = asyncio.get_running_loop().create_future()
        self.delivered.append(future)
        return future

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}


def _records(batch: BatchBuilder) -> list[Any]:
    """The records of a built batch, read back as a consumer would."""
    return list(DefaultRecordBatch(bytes(batch._build())))


def producer_with(client: HeldClient) -> BatchProducer:
    producer = BatchProducer("unused:9092")
    producer._producer = client  # type: ignore[assignment]
    return producer


def test_send_many_returns_at_once_and_what_comes_meanwhile_travels_in_one_batch() -> None:
    async def scenario() -> HeldClient:
        client = HeldClient()
        producer = producer_with(client)
        first = await producer.send_many("t", [(None, b"a")])
        await asyncio.sleep(0)  # the outbox's task starts and waits for the client
        second = await producer.send_many("t", [(None, b"b"), (None, b"c")])
        third = await producer.send_many("t", [(None, b"d")])
        assert client.taken == []  # every send_many returned while nothing was taken
        assert second == third  # b, c and d wait in one open batch
        client.gate.set()  # "a" is taken
        await asyncio.sleep(0)
        client.gate.set()  # the next batch: b, c, d together
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert client.taken == [(0, [b"a"]), (0, [b"b", b"c", b"d"])]
        assert not first[0].done()
        client.delivered[0].set_result("acked a")
        client.delivered[1].set_exception(RuntimeError("broker said no"))
        assert await first[0] == "acked a"
        with pytest.raises(RuntimeError, match="broker said no"):
            await second[0]
        return client

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_a_batch_the_client_refuses_fails_its_future_and_the_next_still_goes() -> None:
    async def scenario() -> None:
        client = HeldClient(fail=RuntimeError("producer closed"))
        producer = producer_with(client)
        refused = await producer.send_many("t", [(None, b"a")])
        client.gate.set()
        with pytest.raises(RuntimeError, match="producer closed"):
            await refused[0]
        client.fail = None
        taken = await producer.send_many("t", [(None, b"b")])
        client.gate.set()
        await producer.flush()
        assert client.taken == [(0, [b"b"])]
        client.delivered[0].set_result(None)
        await taken[0]

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_records_reach_the_broker_complete_and_in_order_per_partition(
    broker: EmbeddedBroker,
) -> None:
    topic = "test.producing.order"
    ensure_topics_sync(broker.bootstrap_servers, {topic: 3})
    sent = [(f"k{i % 7}".encode(), f"{i}".encode() * (1 + i % 50)) for i in range(3000)]

    async def produce() -> None:
        producer = BatchProducer(broker.bootstrap_servers)
        await producer.start()
        futures = []
        for i in range(0, len(sent), 100):  # without waiting between calls
            futures += await producer.send_many(topic, sent[i : i + 100])
        await asyncio.gather(*futures)
        await producer.stop()

    async def consume() -> list[tuple[int, bytes, bytes]]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=broker.bootstrap_servers, auto_offset_reset="earliest"
        )
        await consumer.start()
        got: list[tuple[int, bytes, bytes]] = []
        try:
            while len(got) < len(sent):
                batches = await consumer.getmany(timeout_ms=2000)
                if not batches:
                    break
                for records in batches.values():
                    got += [(r.partition, r.key, r.value) for r in records]
        finally:
            await consumer.stop()
        return got

    asyncio.run(produce())
    got = asyncio.run(consume())
    assert len(got) == len(sent)
    by_key: dict[bytes, list[bytes]] = {}
    partition_of: dict[bytes, set[int]] = {}
    for partition, key, value in got:
        by_key.setdefault(key, []).append(value)
        partition_of.setdefault(key, set()).add(partition)
    for key, values in by_key.items():
        assert values == [v for k, v in sent if k == key]  # a key's records in the order sent
        assert len(partition_of[key]) == 1
