"""Writing records to Kafka in per-partition batches, without waiting for the broker.

The hot path produces one forecast per tick (or one forecast batch record per tick batch).
aiokafka's ``send`` costs about 10 us of Python per message; appending to a ``BatchBuilder`` per
partition and sending whole batches is four times cheaper on this machine, so forecasts go out
that way. Records keep Kafka's default key partitioning (murmur2), so a consumer keyed by sensor
sees each sensor on one partition.

aiokafka takes a partition's next batch only once its previous one is drained (sent and, with
ordering kept, acknowledged), and ``send_batch`` waits for that. Awaited in the tick path, that
made every micro-batch chunk wait a broker round trip per partition before the next chunk was
computed: a worker on tick batches ran at 39k ticks/s, at 60k with producing left out. So each
partition has an outbox: ``send_many`` appends to its open batch and returns at once, and one
task per partition hands the batches to aiokafka in order; what arrives while a batch is on its
way gathers in the next one, as Kafka's own producer does with ``linger.ms``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

Record = tuple[bytes | None, bytes]
# Bytes of a batch before the next one is begun: large enough that a chunk's forecasts for a
# partition travel in one request, under the 1 MB that brokers accept by default.
MAX_BATCH_BYTES = 512 * 1024


class BatchProducer:
    """An aiokafka producer whose ``send_many`` returns one future per partition batch, and
    never waits for the broker."""

    def __init__(self, bootstrap_servers: str, **client_options: Any) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_options = client_options
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._partition_of: dict[tuple[str, bytes], int] = {}
        self._outboxes: dict[tuple[str, int], Outbox] = {}

    async def start(self) -> None:
        """Connect (aiokafka binds its producer to the running loop, so it is made here)."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            linger_ms=0,
            acks=1,
            max_batch_size=MAX_BATCH_BYTES,
            **self.client_options,
        )
        await self._producer.start()

    async def stop(self) -> None:
        """Hand over what the outboxes hold, flush it and disconnect."""
        if self._producer is not None:
            try:
                await self.flush()
            finally:
                await self._producer.stop()
                self._producer = None
                self._outboxes.clear()

    async def flush(self) -> None:
        """Wait until every record sent so far is handed to aiokafka (not acknowledged)."""
        await asyncio.gather(*(outbox.handed_over() for outbox in self._outboxes.values()))

    @property
    def _client(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("BatchProducer used before start()")
        return self._producer

    async def send_many(self, topic: str, records: Sequence[Record]) -> list[asyncio.Future[Any]]:
        """Queue ``records`` in order; the futures resolve when the broker has them."""
        if not records:
            return []
        partitions = self._partitions.get(topic) or await self._load_partitions(topic)
        futures: dict[int, asyncio.Future[Any]] = {}  # by id: a batch's future once, in order
        touched: dict[int, Outbox] = {}
        for key, value in records:
            partition = self._partition(topic, key, partitions)
            outbox = touched.get(partition)
            if outbox is None:
                outbox = touched[partition] = self._outbox(topic, partition)
            future = outbox.append(key, value)
            futures.setdefault(id(future), future)
        for outbox in touched.values():
            outbox.hand_over()
        return list(futures.values())

    def _outbox(self, topic: str, partition: int) -> Outbox:
        outbox = self._outboxes.get((topic, partition))
        if outbox is None:
            outbox = self._outboxes[(topic, partition)] = Outbox(self._client, topic, partition)
        return outbox

    def _partition(self, topic: str, key: bytes | None, partitions: list[int]) -> int:
        if key is None:
            return partitions[0]
        cached = self._partition_of.get((topic, key))
        if cached is None:
            cached = self._partition_of[(topic, key)] = self._partitioner(
                key, partitions, partitions
            )
        return cached

    async def _load_partitions(self, topic: str) -> list[int]:
        found = await self._client.partitions_for(topic)
        self._partitions[topic] = partitions = sorted(found)
        return partitions


class Outbox:
    """One topic partition's records not yet handed to aiokafka, as batches, and the task that
    hands them over one at a time, in order. Each batch has a future of ours that follows
    aiokafka's delivery future once the batch is handed over."""

    def __init__(self, client: AIOKafkaProducer, topic: str, partition: int) -> None:
        self.client = client
        self.topic = topic
        self.partition = partition
        self._batches: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self._task: asyncio.Task[None] | None = None

    def append(self, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        """Add a record to the open batch (a new one when it is full); its batch's future."""
        if self._batches:
            builder, delivered = self._batches[-1]
            if builder.append(key=key, value=value, timestamp=None) is not None:
                return delivered
        builder = self.client.create_batch()
        builder.append(key=key, value=value, timestamp=None)  # an empty batch takes any record
        delivered = asyncio.get_running_loop().create_future()
        self._batches.append((builder, delivered))
        return delivered

    def hand_over(self) -> None:
        """Start handing the batches over, unless that is under way."""
        if self._batches and self._task is None:
            self._task = asyncio.create_task(self._hand_over())

    async def handed_over(self) -> None:
        """Wait until every batch so far is handed over."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _hand_over(self) -> None:
        try:
            while self._batches:
                builder, delivered = self._batches.popleft()  # closed to appends from here
                try:
                    sent = await self.client.send_batch(
                        builder, self.topic, partition=self.partition
                    )
                except Exception as exc:  # the producer is closed or timed out: say so
                    if not delivered.done():
                        delivered.set_exception(exc)
                    continue
                sent.add_done_callback(lambda done, ours=delivered: _follow(done, ours))
        finally:
            self._task = None


def _follow(theirs: asyncio.Future[Any], ours: asyncio.Future[Any]) -> None:
    if ours.done():
        return
    if theirs.cancelled():
        ours.cancel()
    elif (exc := theirs.exception()) is not None:
        ours.set_exception(exc)
    else:
        ours.set_result(theirs.result())
