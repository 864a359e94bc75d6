"""The thin faust shell around the pipeline core.

One agent reads raw tick messages in micro-batches (``take_events``: at most ``batch_size``
messages, waiting at most ``batch_wait_s``), hands them to ``Pipeline.step`` and produces what
comes back.

Delivery is at-least-once: an offset becomes committable only when the broker has acknowledged
every forecast and dead letter its tick caused. Waiting for those acks inside the loop would
leave the agent idle for a broker round trip per micro-batch, so the agent holds each event
(faust's message refcount, the mechanism faust uses for a message read by several streams):
``take_events``' own ack then only drops the hold count, and the final ack is given when the
batch's output is acknowledged. Up to ``max_in_flight`` micro-batches overlap this way.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from functools import partial
from typing import Any

import faust

from .metrics import Metrics
from .pipeline import Output, Pipeline
from .producing import BatchProducer
from .records import Incoming
from .settings import Settings


def faust_app(settings: Settings, app_id: str | None = None) -> tuple[faust.App, Any]:
    """The faust app and its raw-bytes ticks topic, as every stcast consumer configures them."""
    app = faust.App(
        app_id or settings.group_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        web_enabled=False,
        datadir=settings.data_dir or tempfile.mkdtemp(prefix="stcast-faust-"),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        # The group join waits on the session timeout on Tansu: 60 s (faust's default) means a
        # worker idles for half a minute before its first tick.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 10,
    )
    ticks = app.topic(
        settings.ticks_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    return app, ticks


def build_app(settings: Settings, pipeline: Pipeline, metrics: Metrics) -> faust.App:
    """A faust app whose one agent turns ``settings.ticks_topic`` into forecasts."""
    app, ticks = faust_app(settings)
    output = OutputWriter(settings, metrics)

    @app.agent(ticks, name="stcast.forecast")
    async def forecast(stream: Any) -> None:
        await output.start()
        try:
            async for events in stream.take_events(settings.batch_size, settings.batch_wait_s):
                for event in events:
                    event.message.incref()  # released by _release once the output is acked
                acked = await output.write(pipeline.step([_incoming(event) for event in events]))
                acked.add_done_callback(partial(_release, events))
                await output.throttle()
        finally:
            await output.stop()

    return app


class OutputWriter:
    """Produces micro-batches' outputs; keeps at most ``max_in_flight`` of them unacknowledged."""

    def __init__(self, settings: Settings, metrics: Metrics, max_in_flight: int = 4) -> None:
        self.settings = settings
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self._producer = BatchProducer(settings.bootstrap_servers)
        self._in_flight: deque[asyncio.Future[Any]] = deque()
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._producer.start()
            self._started = True

    async def stop(self) -> None:
        """Wait for every acknowledgement still due, then flush and disconnect the producer."""
        await self.drain()
        if self._started:
            await self._producer.stop()
            self._started = False

    async def write(self, outputs: Iterable[Output]) -> asyncio.Future[Any]:
        """Send each chunk as soon as it is ready; return a future for all their acks.

        Chunks are computed in a worker thread, one at a time: meanwhile the loop keeps faust
        filling the next micro-batch and aiokafka sending the previous chunk, which overlaps
        with inference (onnxruntime releases the GIL). Each chunk's latency is observed when its
        last ack arrives.
        """
        chunks = iter(outputs)
        pending: list[asyncio.Future[Any]] = []
        while (output := await asyncio.to_thread(next, chunks, None)) is not None:
            futures = await self._producer.send_many(
                self.settings.forecasts_topic, output.forecasts
            )
            futures += await self._producer.send_many(self.settings.dlq_topic, output.dead_letters)
            acked = asyncio.gather(*futures)
            acked.add_done_callback(partial(self._observe_latency, output.consumed_at))
            pending.append(acked)
        everything = asyncio.gather(*pending)
        self._in_flight.append(everything)
        return everything

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
        now = time.perf_counter()
        observe = self.metrics.tick_to_forecast_seconds.observe
        for started in consumed_at:
            observe(now - started)


def _release(events: list[Any], acked: asyncio.Future[Any]) -> None:
    """Give the final ack (offsets become committable) only if all the output was acked."""
    if acked.cancelled() or acked.exception() is not None:
        return  # never committed: another worker (or this one, restarted) reads them again
    for event in events:
        event.ack()


def _incoming(event: Any) -> Incoming:
    message = event.message
    return Incoming(message.topic, message.partition, message.offset, message.key, message.value)
