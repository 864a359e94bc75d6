"""The asyncio shell around the pipeline core: consume ticks, step, produce, commit.

The tick path is a plain aiokafka consumer group member, not a faust agent. Measured on the
development machine, a faust agent tops out at 8-12k events/s from its per-event machinery
alone (``stcast bench`` row b), while aiokafka hands over raw records at ~300k/s; a per-tick
forecaster cannot afford faust's share. Group membership, rebalancing and offsets are Kafka's
own, through aiokafka.

A second, group-less consumer follows ``stcast.models`` and swaps new models in between
micro-batches (``swapping``).

When partitions change hands, the leaving owner commits what it has produced and the new one
rebuilds its sensors' state from the input topic (``restoring``) before reading on.

Consumer lag is exported per owned partition every ``LAG_INTERVAL_S``: the high watermark that
the last fetch response carried minus the consumer's position. Both are known locally, so it
costs no request (Tansu's answers to ListOffsets are unreliable anyway).

Each micro-batch is at most ``micro_batch_messages`` records (eight inference batches by
default, so that one is inferred while the next is placed: ``Pipeline``), waiting at most
``batch_wait_s`` for them.
Delivery is at-least-once: a micro-batch's offsets are committed only once the broker has
acknowledged every forecast and dead letter it caused, and in consumption order. Up to
``max_in_flight`` micro-batches await their acks while the next ones are processed. A failed
produce stops the worker without committing, so the ticks are read again after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import chain, zip_longest
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError
from aiokafka.structs import OffsetAndMetadata

from ..core.chunks import Output
from ..core.forecasters import Forecaster
from ..core.metrics import Metrics, observe_many
from ..core.records import Incoming
from ..networks import Core
from ..settings import Settings
from .clients import client_options, producer_options
from .producing import BatchProducer
from .restoring import restore_partition
from .swapping import ModelUpdate, follow_models
from .unreadable import TolerantReader, UnreadablePolicy

log = logging.getLogger(__name__)

Offsets = dict[TopicPartition, int]
COMMIT_INTERVAL_S = 0.5
LAG_INTERVAL_S = 1.0
POST_INTERVAL_S = 0.005  # the pipeline wakes the loop at most this often while it computes


async def serve(settings: Settings, pipeline: Core, metrics: Metrics, stop: asyncio.Event) -> None:
    """Turn ``settings.ticks_topic`` into forecasts until ``stop`` is set; then drain and commit."""
    output = OutputWriter(settings, metrics)
    consumer = tick_consumer(settings)
    reader = TolerantReader(consumer, settings)
    policy = UnreadablePolicy(settings, reader, metrics)
    commits = Commits(consumer)
    lag = ConsumerLag(consumer, metrics)
    core = asyncio.Lock()  # the pipeline is stepped, restored or trimmed by one task at a time
    consumer.subscribe(
        [settings.ticks_topic],
        listener=_HandOver(settings, pipeline, consumer, reader, output, commits, core, lag),
    )
    await output.start()
    await consumer.start()

    async def swap(forecaster: Forecaster, update: ModelUpdate) -> None:
        async with core:  # between two micro-batches
            pipeline.swap(forecaster, canary=update.canary, replacing=update.rolls_back)

    models = asyncio.create_task(follow_models(settings, metrics, swap, stop))
    try:
        while not stop.is_set():
            records, unreadable = await reader.getmany_side_by_side(
                timeout_ms=int(settings.batch_wait_s * 1000),
                max_records=settings.micro_batch_messages,
            )
            if records or unreadable:
                messages, offsets = incoming(records)
                letters = policy.apply(unreadable, offsets)
                async with core:
                    outputs = chain(pipeline.step(messages), letters)
                    commits.add(await output.write(outputs), offsets)
                await output.throttle()
            await commits.commit_due()
            await lag.update_due()
    finally:
        await _stop(models)
        try:
            await output.stop()
            await commits.commit_acked()
        finally:
            await consumer.stop()


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a helper task and wait for it, logging (not raising) what went wrong in it."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:  # the worker is stopping anyway: the failure is only worth a log line
        log.exception("the model-update follower failed")


def tick_consumer(settings: Settings) -> AIOKafkaConsumer:
    """The group member that reads raw tick records; offsets are committed by ``Commits``."""
    session_ms = int(settings.session_timeout_s * 1000)
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # The group join waits on the session timeout on Tansu: with Kafka's 45 s default a
        # worker would idle for half a minute before its first tick.
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(100, session_ms // 10),
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **client_options(settings),
    )


def incoming(records: Mapping[TopicPartition, list[Incoming]]) -> tuple[list[Incoming], Offsets]:
    """The micro-batch's messages, and the offsets to commit once its output is acked.

    Each partition's messages stay in order; the partitions' are interleaved, one message of
    each in turn, so that an inference chunk holds many sensors a few times each rather than a
    few sensors many times: each sensor's ticks come in the same order, and are settled in
    fewer generations (``core.pipeline``)."""
    batches = [batch for batch in records.values() if batch]
    if len(batches) == 1:
        messages = list(batches[0])
    else:
        messages = [m for turn in zip_longest(*batches) for m in turn if m is not None]
    return messages, {tp: batch[-1].offset + 1 for tp, batch in records.items() if batch}


class Commits:
    """Offsets of acknowledged micro-batches, committed in consumption order."""

    def __init__(self, consumer: AIOKafkaConsumer, interval_s: float = COMMIT_INTERVAL_S) -> None:
        self.consumer = consumer
        self.interval_s = interval_s
        self._pending: deque[tuple[asyncio.Future[Any], Offsets]] = deque()
        self._last_commit = time.monotonic()

    def add(self, acked: asyncio.Future[Any], offsets: Offsets) -> None:
        self._pending.append((acked, offsets))

    def acked(self) -> Offsets:
        """Pop the leading micro-batches whose output is acked; raise if a produce failed."""
        ready: Offsets = {}
        while self._pending and self._pending[0][0].done():
            acked, offsets = self._pending.popleft()
            acked.result()  # a failed produce: stop here, so none of it is committed
            ready.update(offsets)
        return ready

    async def commit_due(self) -> None:
        """Commit what is acked, at most every ``interval_s`` (a commit is a round trip)."""
        if time.monotonic() - self._last_commit >= self.interval_s:
            await self.commit_acked()

    async def commit_acked(self) -> None:
        """Commit every acknowledged offset of a partition this member still owns."""
        owned = self.consumer.assignment()
        ready = {tp: offset for tp, offset in self.acked().items() if tp in owned}
        self._last_commit = time.monotonic()
        if ready:
            await self.consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in ready.items()})


class ConsumerLag:
    """Exports, per owned partition, how many messages are still to be read.

    The lag is the high watermark of the partition's last fetch response minus the consumer's
    position (the next offset it will hand over). A partition not fetched since it was assigned
    has no high watermark yet, so it is left out until it has one.
    """

    def __init__(
        self, consumer: AIOKafkaConsumer, metrics: Metrics, interval_s: float = LAG_INTERVAL_S
    ) -> None:
        self.consumer = consumer
        self.metrics = metrics
        self.interval_s = interval_s
        self._shown: set[int] = set()
        self._last_update = time.monotonic() - interval_s

    async def update_due(self) -> None:
        if time.monotonic() - self._last_update >= self.interval_s:
            await self.update()

    async def update(self) -> None:
        self._last_update = time.monotonic()
        owned = self.consumer.assignment()
        self.forget(self._shown - {tp.partition for tp in owned})
        for tp in sorted(owned):
            if tp not in self.consumer.assignment():  # revoked while we awaited
                continue
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            try:  # a partition with a high watermark has a position: this does not wait
                position = await self.consumer.position(tp)
            except IllegalStateError:  # revoked meanwhile
                continue
            self.metrics.set_consumer_lag(tp.partition, max(0, highwater - position))
            self._shown.add(tp.partition)

    def forget(self, partitions: Collection[int]) -> None:
        """Stop exporting the lag of partitions this worker no longer owns."""
        self.metrics.forget_partitions(partitions)
        self._shown -= set(partitions)


class _HandOver(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions change hands with their output committed and their sensors' state rebuilt.

    Before partitions are taken away, the batch in hand is finished, its output acknowledged
    and committed. A partition this worker did not own before gets its sensors' state back from
    the ticks before the committed offset (``restoring``); state of partitions it lost is dropped.
    """

    def __init__(
        self,
        settings: Settings,
        pipeline: Core,
        consumer: AIOKafkaConsumer,
        reader: TolerantReader,
        output: OutputWriter,
        commits: Commits,
        core: asyncio.Lock,
        lag: ConsumerLag,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.consumer = consumer
        self.reader = reader
        self.output = output
        self.commits = commits
        self.core = core
        self.lag = lag
        self.owned: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.core:
            await self.output.drain()
            await self.commits.commit_acked()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
        new, lost = set(assigned) - self.owned, self.owned - set(assigned)
        self.lag.forget({tp.partition for tp in lost})
        self.reader.forget(self.owned | set(assigned))  # positions are the group's again
        async with self.core:
            self.pipeline.forget({tp.partition for tp in new | lost})
            for tp in sorted(new):
                committed = await self.consumer.committed(tp)
                if committed:
                    await restore_partition(self.pipeline, self.settings, tp, committed)
        self.owned = set(assigned)


class OutputWriter:
    """Produces micro-batches' outputs; keeps at most ``max_in_flight`` of them unacknowledged."""

    def __init__(self, settings: Settings, metrics: Metrics, max_in_flight: int = 4) -> None:
        self.settings = settings
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self._producer = BatchProducer(settings.bootstrap_servers, **producer_options(settings))
        self._in_flight: deque[asyncio.Future[Any]] = deque()
        self._started = False
        self._pipeline = ThreadPoolExecutor(1, thread_name_prefix="stcast-pipeline")

    async def start(self) -> None:
        if not self._started:
            await self._producer.start()
            self._started = True

    async def stop(self) -> None:
        """Wait for every acknowledgement still due, then flush and disconnect the producer."""
        try:
            await self.drain()
        finally:
            self._pipeline.shutdown(wait=False)  # idle: every write waited for its thread
            if self._started:
                await self._producer.stop()
                self._started = False

    async def write(self, outputs: Iterable[Output]) -> asyncio.Future[Any]:
        """Send each chunk as soon as it is ready; return a future for all their acks.

        The chunks are computed on the writer's pipeline thread, which runs through them
        without waiting for this loop: it posts them here as they are done and goes on with the
        next, while the loop sends them and keeps aiokafka fetching and producing (onnxruntime
        and socket calls release the GIL). Handing each chunk back and forth instead left the
        pipeline idle while the loop was busy (docs/performance.md, 2026-12-06). A post wakes
        the loop, and the pipeline then waits for the GIL back: chunks done within
        ``POST_INTERVAL_S`` of the last post wait for the next one (or the micro-batch's end).
        Each chunk's latency is observed when its last ack arrives.
        """
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[Output | Exception | None] = asyncio.Queue()
        stop = threading.Event()

        def post(items: list[Output | Exception | None]) -> None:
            for item in items:
                ready.put_nowait(item)

        def compute() -> None:
            held: list[Output | Exception | None] = []
            posted = 0.0
            try:
                for output in outputs:
                    held.append(output)
                    if (now := time.perf_counter()) - posted >= POST_INTERVAL_S:
                        loop.call_soon_threadsafe(post, held)
                        held, posted = [], now
                    if stop.is_set():  # the write was cancelled: leave the rest unread
                        break
            except Exception as exc:  # raised in the loop, where the worker handles it
                held.append(exc)
            else:
                held.append(None)
            loop.call_soon_threadsafe(post, held)

        computing = loop.run_in_executor(self._pipeline, compute)
        pending: list[asyncio.Future[Any]] = []
        try:
            while (output := await ready.get()) is not None:
                if isinstance(output, Exception):
                    raise output
                pending.append(await self._send(output))
        except BaseException:
            stop.set()  # the pipeline is not stepped by two at once: wait for the thread
            await asyncio.shield(computing)
            raise
        await computing
        everything = asyncio.gather(*pending)
        self._in_flight.append(everything)
        return everything

    async def _send(self, output: Output) -> asyncio.Future[Any]:
        """Queue one chunk's records; a future for all their acks, observing its latency."""
        futures = await self._producer.send_many(self.settings.forecasts_topic, output.forecasts)
        futures += await self._producer.send_many(self.settings.dlq_topic, output.dead_letters)
        futures += await self._producer.send_many(
            self.settings.retrain_topic, output.retrain_events
        )
        acked = asyncio.gather(*futures)
        acked.add_done_callback(partial(self._observe_latency, output.consumed_at))
        return acked

    async def throttle(self) -> None:
        """Wait while more than ``max_in_flight`` micro-batches await their acks."""
        while len(self._in_flight) > self.max_in_flight or (
            self._in_flight and self._in_flight[0].done()
        ):
            await self._in_flight.popleft()

    async def drain(self) -> None:
        """Wait for every acknowledgement still due."""
        while self._in_flight:
            await self._in_flight.popleft()

    def _observe_latency(self, consumed_at: list[float], acked: asyncio.Future[Any]) -> None:
        if acked.cancelled() or acked.exception() is not None:
            return
        latencies = time.perf_counter() - np.asarray(consumed_at, dtype=np.float64)
        observe_many(self.metrics.tick_to_forecast_seconds, latencies)
