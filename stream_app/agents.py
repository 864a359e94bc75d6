"""The thin faust shell around the pipeline core.

One agent reads raw tick messages in micro-batches (``take_events``: at most ``batch_size``
messages, waiting at most ``batch_wait_s``), hands them to ``Pipeline.step`` and produces what
comes back. faust acks a micro-batch's events only after the loop body returns, and the body
returns only after the broker has acknowledged every forecast and dead letter of the batch, so a
committed offset never runs ahead of the output it caused.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
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
                await output.write(pipeline.step([_incoming(event) for event in events]))
        finally:
            await output.stop()

    return app


class OutputWriter:
    """Produces a micro-batch's outputs and waits until the broker has all of them."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._producer = BatchProducer(settings.bootstrap_servers)
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._producer.start()
            self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._producer.stop()
            self._started = False

    async def write(self, outputs: Iterable[Output]) -> None:
        """Send each chunk as soon as it is ready, then wait until the broker has all of them.

        Between chunks the loop gets control, so aiokafka puts the chunk on the wire while the
        next one is computed, and each chunk's latency is observed when its last ack arrives.
        """
        pending: list[asyncio.Future[Any]] = []
        for output in outputs:
            futures = await self._producer.send_many(
                self.settings.forecasts_topic, output.forecasts
            )
            futures += await self._producer.send_many(self.settings.dlq_topic, output.dead_letters)
            acked = asyncio.gather(*futures)
            acked.add_done_callback(partial(self._observe_latency, output.consumed_at))
            pending.append(acked)
            await asyncio.sleep(0)
        await asyncio.gather(*pending)

    def _observe_latency(self, consumed_at: list[float], acked: asyncio.Future[Any]) -> None:
        now = time.perf_counter()
        observe = self.metrics.tick_to_forecast_seconds.observe
        for started in consumed_at:
            observe(now - started)


def _incoming(event: Any) -> Incoming:
    message = event.message
    return Incoming(message.topic, message.partition, message.offset, message.key, message.value)
