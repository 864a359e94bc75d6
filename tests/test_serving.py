"""The serving shell: chunks produced in order, offsets committed only once acked, in order."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from stream_app.core.chunks import Output
from stream_app.core.forecasters import FloatArray, WindowBatch
from stream_app.core.metrics import Metrics
from stream_app.core.pipeline import Pipeline
from stream_app.core.records import Incoming
from stream_app.kafka.serving import Commits, ConsumerLag, OutputWriter, incoming, tick_consumer
from stream_app.kafka.topics import ensure_topics_sync
from stream_app.kafka.unreadable import TolerantReader
from stream_app.settings import Settings
from stream_app.tools.broker import EmbeddedBroker

SETTINGS = Settings(
    forecasts_topic="test.forecasts", dlq_topic="test.dlq", retrain_topic="test.retrain"
)
T0_S = 1_467_331_200
LATENCY_COUNT = "stcast_tick_to_forecast_seconds_count"


class FakeProducer:
    """Records ``send_many`` calls; acks now, after ``ack_after_s``, or fails with ``error``."""

    def __init__(self, ack_after_s: float | None = None, error: Exception | None = None) -> None:
        self.ack_after_s = ack_after_s
        self.error = error
        self.sent: list[tuple[str, list[tuple[bytes | None, bytes]]]] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")

    async def send_many(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes]]
    ) -> list[asyncio.Future[Any]]:
        self.sent.append((topic, list(records)))
        if not records:
            return []
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.ack_after_s is None:
            self.settle(future)
        else:
            asyncio.get_running_loop().call_later(self.ack_after_s, self.settle, future)
        self.futures.append(future)
        return [future]

    def settle(self, future: asyncio.Future[Any]) -> None:
        if self.error is not None:
            future.set_exception(self.error)
        else:
            future.set_result(None)


def writer(producer: FakeProducer) -> tuple[OutputWriter, CollectorRegistry]:
    registry = CollectorRegistry()
    output_writer = OutputWriter(SETTINGS, Metrics(registry))
    output_writer._producer = producer  # type: ignore[assignment]
    return output_writer, registry


def chunk(n: int, dead: int = 0, tag: str = "") -> Output:
    output = Output()
    for i in range(n):
        output.forecasts.append((f"s{i}".encode(), f"forecast {tag}{i}".encode()))
        output.consumed_at.append(time.perf_counter() - 1.0)  # consumed a second ago
    output.dead_letters = [(b"k", f"dead {tag}{i}".encode()) for i in range(dead)]
    return output


def test_write_sends_every_chunk_in_order_and_observes_latency() -> None:
    producer = FakeProducer()
    output_writer, registry = writer(producer)
    outputs = [chunk(3, 1, "a"), chunk(0, 2, "b"), chunk(2, 0, "c")]
    outputs[1].retrain_events = [(b"pems08", b"an event")]

    async def scenario() -> None:
        await (await output_writer.write(iter(outputs)))

    asyncio.run(scenario())
    assert producer.sent == [
        ("test.forecasts", outputs[0].forecasts),
        ("test.dlq", outputs[0].dead_letters),
        ("test.retrain", []),
        ("test.forecasts", []),
        ("test.dlq", outputs[1].dead_letters),
        ("test.retrain", outputs[1].retrain_events),
        ("test.forecasts", outputs[2].forecasts),
        ("test.dlq", []),
        ("test.retrain", []),
    ]
    assert registry.get_sample_value(LATENCY_COUNT) == 5.0
    assert 5.0 <= registry.get_sample_value("stcast_tick_to_forecast_seconds_sum") < 5.0 + 5 * 60


def test_write_returns_before_the_acks_and_its_future_resolves_after_all_of_them() -> None:
    producer = FakeProducer(ack_after_s=0.02)
    output_writer, registry = writer(producer)

    async def scenario() -> None:
        acked = await output_writer.write([chunk(2, 1), chunk(1)])
        assert not acked.done() and registry.get_sample_value(LATENCY_COUNT) == 0.0
        await acked
        assert len(producer.futures) == 3
        assert all(future.done() for future in producer.futures)
        assert registry.get_sample_value(LATENCY_COUNT) == 3.0

    asyncio.run(scenario())


def test_a_failed_ack_fails_the_future() -> None:
    producer = FakeProducer(ack_after_s=0.0, error=RuntimeError("broker said no"))
    output_writer, _ = writer(producer)

    async def scenario() -> None:
        await (await output_writer.write([chunk(1)]))

    with pytest.raises(RuntimeError, match="broker said no"):
        asyncio.run(scenario())


def test_the_pipeline_runs_ahead_of_the_sends_and_its_error_reaches_the_writer() -> None:
    """Chunks are computed on the writer's thread without waiting for each one to be sent."""
    computed: list[int] = []

    def outputs(fail: bool) -> Iterator[Output]:
        for i in range(4):
            computed.append(i)
            yield chunk(1, tag=str(i))
        if fail:
            raise ValueError("the pipeline broke")

    class SlowProducer(FakeProducer):
        async def send_many(
            self, topic: str, records: Sequence[tuple[bytes | None, bytes]]
        ) -> list[asyncio.Future[Any]]:
            if records and topic == "test.forecasts" and not self.sent:
                await asyncio.sleep(0.2)  # the loop is busy: the thread goes on meanwhile
                seen_at_first_send.extend(computed)
            return await super().send_many(topic, records)

    seen_at_first_send: list[int] = []
    producer = SlowProducer()
    output_writer, _ = writer(producer)

    async def scenario(fail: bool) -> None:
        await (await output_writer.write(outputs(fail)))

    asyncio.run(scenario(False))
    assert computed == [0, 1, 2, 3]
    assert seen_at_first_send == [0, 1, 2, 3]  # all computed while the first was being sent
    sent = [v for topic, records in producer.sent if topic == "test.forecasts" for _, v in records]
    assert sent == [b"forecast 00", b"forecast 10", b"forecast 20", b"forecast 30"]
    computed.clear()
    with pytest.raises(ValueError, match="the pipeline broke"):
        asyncio.run(scenario(True))
    assert computed == [0, 1, 2, 3]


def test_throttle_keeps_at_most_max_in_flight_and_stop_drains() -> None:
    producer = FakeProducer(ack_after_s=3600.0)  # acks only when the test settles them
    output_writer, _ = writer(producer)
    output_writer.max_in_flight = 1

    async def scenario() -> None:
        first = await output_writer.write([chunk(1)])
        await output_writer.throttle()  # one in flight is allowed: returns at once
        second = await output_writer.write([chunk(1)])
        throttled = asyncio.create_task(output_writer.throttle())
        await asyncio.sleep(0.01)
        assert not throttled.done()  # two in flight: waits for the oldest
        producer.settle(producer.futures[0])
        await throttled
        assert first.done() and not second.done()
        stopping = asyncio.create_task(output_writer.stop())
        await asyncio.sleep(0.01)
        assert not stopping.done()  # stop waits for the acks still due
        producer.settle(producer.futures[1])
        await stopping
        assert second.done()

    asyncio.run(scenario())


P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.owned = {P0, P1}

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


def test_offsets_are_committed_in_order_once_acked_and_never_after_a_failure() -> None:
    async def scenario() -> FakeConsumer:
        loop = asyncio.get_running_loop()
        consumer = FakeConsumer()
        commits = Commits(consumer, interval_s=0.0)  # type: ignore[arg-type]
        first, second, third = (loop.create_future() for _ in range(3))
        commits.add(first, {P0: 10})
        commits.add(second, {P0: 20, P1: 5})
        commits.add(third, {P1: 9})
        second.set_result(None)
        await commits.commit_due()  # the oldest is not acked: nothing may be committed yet
        first.set_result(None)
        await commits.commit_due()
        third.set_exception(RuntimeError("not written"))
        with pytest.raises(RuntimeError, match="not written"):
            await commits.commit_due()
        return consumer

    consumer = asyncio.run(scenario())
    assert consumer.commits == [{P0: 20, P1: 5}]


def test_commits_wait_for_the_interval() -> None:
    async def scenario() -> FakeConsumer:
        consumer = FakeConsumer()
        commits = Commits(consumer, interval_s=3600.0)  # type: ignore[arg-type]
        acked = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        commits.add(acked, {P0: 3})
        await commits.commit_due()  # too soon after the last
        assert consumer.commits == []
        await commits.commit_acked()  # on revocation and shutdown: at once
        return consumer

    assert asyncio.run(scenario()).commits == [{P0: 3}]


def test_offsets_of_partitions_no_longer_owned_are_not_committed() -> None:
    async def scenario() -> FakeConsumer:
        consumer = FakeConsumer()
        commits = Commits(consumer)  # type: ignore[arg-type]
        acked = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        commits.add(acked, {P0: 3, P1: 4})
        consumer.owned = {P1}  # P0 went to another worker, which reads its ticks again
        await commits.commit_acked()
        return consumer

    assert asyncio.run(scenario()).commits == [{P1: 4}]


def record(partition: int, offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t", partition, offset, 0, 0, b"k", value, None, 1, len(value), ())


def test_incoming_keeps_each_partitions_order_and_takes_the_partitions_in_turn() -> None:
    records = {
        P0: [record(0, 4, b"a"), record(0, 5, b"b"), record(0, 6, b"c")],
        P1: [record(1, 7, b"d")],
    }
    messages, offsets = incoming(records)
    assert [(m.partition, m.offset, m.value) for m in messages] == [
        (0, 4, b"a"),
        (1, 7, b"d"),
        (0, 5, b"b"),
        (0, 6, b"c"),
    ]
    assert offsets == {P0: 7, P1: 8}


def test_start_and_stop_once() -> None:
    producer = FakeProducer()
    output_writer, _ = writer(producer)

    async def scenario() -> None:
        await output_writer.start()
        await output_writer.start()
        await output_writer.stop()
        await output_writer.stop()

    asyncio.run(scenario())
    assert producer.events == ["start", "stop"]


class LastPlusOne:
    window, horizon, model_id, provider = 2, 1, "fake@1", "python"

    def forecast(self, windows: WindowBatch) -> FloatArray:
        return np.asarray(windows.values[:, -1:] + 1.0)


def test_pipeline_chunks_reach_their_topics() -> None:
    pipeline = Pipeline(LastPlusOne(), step_s=300, batch_size=2, clock=lambda: T0_S + 86_400)
    messages = []
    for step in range(2):
        ticks = [
            {"sensor": f"s{i}", "ts": (T0_S + 300 * step) * 1000, "value": i} for i in range(3)
        ]
        messages.append(Incoming("t", 0, step, b"net", json.dumps({"ticks": ticks}).encode()))
    messages.append(Incoming("t", 0, 2, b"bad", b"{"))
    producer = FakeProducer()
    output_writer, registry = writer(producer)

    async def scenario() -> None:
        await (await output_writer.write(pipeline.step(messages)))

    asyncio.run(scenario())
    forecasts = [
        (key, json.loads(value))
        for topic, records in producer.sent
        if topic == "test.forecasts"
        for key, value in records
    ]
    assert [(key, record["values"]) for key, record in forecasts] == [
        (b"s0", [1.0]),
        (b"s1", [2.0]),
        (b"s2", [3.0]),
    ]
    assert [len(records) for topic, records in producer.sent if topic == "test.forecasts"] == [2, 1]
    letters = [json.loads(v) for topic, rs in producer.sent if topic == "test.dlq" for _, v in rs]
    assert [(d["reason"], d["key"], d["offset"]) for d in letters] == [("malformed", "bad", 2)]
    assert registry.get_sample_value(LATENCY_COUNT) == 3.0


# -- consumer lag ---------------------------------------------------------------------------------

LAG = "stcast_consumer_lag_messages"


class LagConsumer:
    """What ``ConsumerLag`` reads: assignment, high watermarks (None: not fetched) and positions."""

    def __init__(self, partitions: dict[TopicPartition, tuple[int | None, int]]) -> None:
        self.partitions = partitions

    def assignment(self) -> set[TopicPartition]:
        return set(self.partitions)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.partitions[tp][0]

    async def position(self, tp: TopicPartition) -> int:
        return self.partitions[tp][1]


def lags(registry: CollectorRegistry) -> dict[str, float]:
    return {
        sample.labels["partition"]: sample.value
        for family in registry.collect()
        if family.name == LAG
        for sample in family.samples
    }


def test_consumer_lag_is_high_watermark_minus_position_per_owned_partition() -> None:
    registry = CollectorRegistry()
    consumer = LagConsumer({P0: (100, 40), P1: (None, 0)})  # P1 not fetched yet
    lag = ConsumerLag(consumer, Metrics(registry), interval_s=3600.0)  # type: ignore[arg-type]

    async def scenario() -> list[dict[str, float]]:
        seen = []
        await lag.update_due()  # the first is due at once
        seen.append(lags(registry))
        consumer.partitions = {P0: (120, 120), P1: (7, 3)}
        await lag.update_due()  # not due for an hour
        seen.append(lags(registry))
        await lag.update()
        seen.append(lags(registry))
        consumer.partitions = {P1: (9, 9)}  # P0 went to another worker
        await lag.update()
        seen.append(lags(registry))
        lag.forget([1])  # revoked, as the rebalance listener says
        seen.append(lags(registry))
        return seen

    assert asyncio.run(scenario()) == [
        {"0": 60.0},
        {"0": 60.0},
        {"0": 0.0, "1": 4.0},
        {"1": 0.0},
        {},
    ]


async def _write_per_partition(bootstrap: str, topic: str, written: dict[int, int]) -> None:
    """``written[p]`` records (``b"0"``, ``b"1"``...) into each partition ``p`` of ``topic``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition, count in written.items():
            for i in range(count):
                await producer.send(topic, f"{i}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.integration
def test_a_micro_batch_takes_an_equal_share_of_each_partition_waiting(
    broker: EmbeddedBroker,
) -> None:
    """A worker behind on three partitions reads them side by side: each micro-batch takes
    at most a third of ``max_records`` from a partition, each partition's records come in
    order, and every record is read once."""
    topic = f"share.{time.time_ns()}"
    ensure_topics_sync(broker.bootstrap_servers, {topic: 3})
    written = {0: 40, 1: 25, 2: 40}
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, group_id=f"{topic}.group")

    async def scenario() -> list[dict[int, list[int]]]:
        await _write_per_partition(broker.bootstrap_servers, topic, written)
        consumer = tick_consumer(settings)
        consumer.subscribe([topic])
        await consumer.start()
        reader = TolerantReader(consumer, settings)
        batches: list[dict[int, list[int]]] = []
        try:
            while sum(len(b) for batch in batches for b in batch.values()) < sum(written.values()):
                records, unreadable = await reader.getmany_side_by_side(500, max_records=12)
                assert unreadable == []
                batches.append({tp.partition: [m.offset for m in b] for tp, b in records.items()})
        finally:
            await consumer.stop()
        return batches

    batches = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert all(len(offsets) <= 4 for batch in batches for offsets in batch.values())
    for partition, count in written.items():
        read = [offset for batch in batches for offset in batch.get(partition, [])]
        assert read == list(range(count))
    assert sum(len(batch) == 3 for batch in batches) >= 3  # side by side, not one at a time


@pytest.mark.integration
def test_consumer_lag_against_the_embedded_broker(broker: EmbeddedBroker) -> None:
    """Tansu's fetch responses carry the high watermark that the lag is computed from."""
    topic = f"lag.{time.time_ns()}"
    ensure_topics_sync(broker.bootstrap_servers, {topic: 2})
    written = {0: 25, 1: 15}
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, group_id=f"{topic}.group")
    registry = CollectorRegistry()

    async def scenario() -> dict[int, int]:
        await _write_per_partition(broker.bootstrap_servers, topic, written)
        consumer = tick_consumer(settings)
        consumer.subscribe([topic])
        await consumer.start()
        lag = ConsumerLag(consumer, Metrics(registry))
        read = dict.fromkeys(written, 0)
        try:
            while sum(read.values()) < 12 or len(lags(registry)) < 2:
                for tp, batch in (await consumer.getmany(timeout_ms=500, max_records=4)).items():
                    read[tp.partition] += len(batch)
                await lag.update()
        finally:
            await consumer.stop()
        return read

    read = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert lags(registry) == {str(p): float(written[p] - read[p]) for p in written}
    assert sum(read.values()) < sum(written.values())  # some lag is left to see


def test_what_a_worker_built_before_serving_is_frozen_out_of_the_collector() -> None:
    from stream_app.kafka.worker import freeze_what_was_built

    built = {"state": [[index] for index in range(1_000)]}
    assert any(tracked is built for tracked in gc.get_objects())
    try:
        freeze_what_was_built()
        assert gc.get_freeze_count() >= 1_002
        assert not any(tracked is built for tracked in gc.get_objects())  # no collection sees it
    finally:
        gc.unfreeze()
