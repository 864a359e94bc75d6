"""Publish a dataset to the ticks topic as Tick records (DESIGN.md), as fast as possible or paced.

Single ticks are keyed by sensor id; a batch (one message per step, ``{"ticks": [...]}``) is keyed
by the network id, so all of a network's state stays on one partition.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from stream_app.offline.datasets import GridDataset

# awaiting acks in chunks, not one by one, is what lets the producer batch
_ACK_CHUNK = 5000


@dataclass(frozen=True)
class ReplayReport:
    """What a replay sent: Kafka messages, ticks inside them, grid steps, and wall seconds."""

    messages: int
    ticks: int
    steps: int
    seconds: float

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def rfc3339(epoch_s: int) -> str:
    """UTC time with a ``Z`` suffix.

    >>> rfc3339(1467331500)
    '2016-07-01T00:05:00Z'
    """
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_step(
    dataset: GridDataset,
    t: int,
    *,
    channel: int = 0,
    batched: bool,
    network: str | None = None,
) -> list[tuple[bytes, bytes]]:
    """The (key, value) messages for grid step ``t``: one per sensor, or one batch."""
    ts = rfc3339(int(dataset.start.timestamp()) + t * dataset.step_s)
    readings = zip(dataset.sensors, dataset.values[t, :, channel].tolist(), strict=True)
    ticks = [_tick(sensor, ts, value, network) for sensor, value in readings]
    if batched:
        key = (network or dataset.name).encode()
        return [(key, _dumps({"ticks": ticks}))]
    return [(tick["sensor"].encode(), _dumps(tick)) for tick in ticks]


def _tick(sensor: str, ts: str, value: float, network: str | None) -> dict[str, Any]:
    # JSON has no NaN or infinity; a reading that is not a finite number is a missing one
    tick: dict[str, Any] = {"sensor": sensor, "ts": ts, "value": value}
    if not math.isfinite(value):
        tick["value"] = None
    if network is not None:
        tick["network"] = network
    return tick


def _dumps(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Plan:
    """Which steps go where, and how fast."""

    dataset: GridDataset
    topic: str
    steps: range
    channel: int
    batched: bool
    network: str | None
    speed: float

    def encode(self, t: int) -> list[tuple[bytes, bytes]]:
        return encode_step(
            self.dataset, t, channel=self.channel, batched=self.batched, network=self.network
        )

    async def wait_until_due(self, t: int, began: float) -> None:
        """Sleep until step ``t`` is due, the first step being due at ``began`` (monotonic)."""
        if self.speed > 0:
            data_s = (t - self.steps.start) * self.dataset.step_s
            await asyncio.sleep(max(0.0, began + data_s / self.speed - time.monotonic()))


async def replay(
    bootstrap_servers: str,
    topic: str,
    dataset: GridDataset,
    *,
    channel: int = 0,
    batched: bool = False,
    speed: float = 0.0,
    start_step: int = 0,
    steps: int | None = None,
    network: str | None = None,
    progress: bool = True,
    client_options: dict[str, Any] | None = None,
    hold: Callable[[int], Awaitable[float]] | None = None,
) -> ReplayReport:
    """Publish ``steps`` grid steps from ``start_step`` (all: None) at ``speed`` times real time.

    ``speed=0`` sends as fast as the broker takes them. ``hold``, awaited with each step's
    index before it is sent, may keep the stream waiting (the demo's, while a retrain runs)
    and returns the seconds it did; the pacing resumes from there. The producer is flushed and
    stopped on the way out, also when the task is cancelled.
    """
    span = _span(dataset, channel, speed, start_step, steps)
    plan = _Plan(dataset, topic, span, channel, batched, network, speed)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, linger_ms=5, acks=1, **(client_options or {})
    )
    await producer.start()
    began = time.monotonic()
    try:
        messages = await _publish(producer, plan, progress, hold)
        await producer.flush()
    finally:
        await producer.stop()
    seconds = time.monotonic() - began
    return ReplayReport(messages, len(span) * dataset.n_sensors, len(span), seconds)


def _span(
    dataset: GridDataset, channel: int, speed: float, start_step: int, steps: int | None
) -> range:
    if not 0 <= channel < len(dataset.channels):
        raise ValueError(f"channel {channel} out of range: {dataset.name} has {dataset.channels}")
    if speed < 0 or not 0 <= start_step < dataset.n_steps or (steps is not None and steps < 0):
        raise ValueError("speed and steps must not be negative, start_step must be in the data")
    end = dataset.n_steps if steps is None else min(dataset.n_steps, start_step + steps)
    return range(start_step, end)


async def _publish(
    producer: AIOKafkaProducer,
    plan: _Plan,
    progress: bool,
    hold: Callable[[int], Awaitable[float]] | None,
) -> int:
    sent = 0
    pending: list[asyncio.Future[Any]] = []
    began = time.monotonic()
    with tqdm(total=len(plan.steps), unit="step", file=sys.stderr, disable=not progress) as bar:
        for t in plan.steps:
            if hold is not None:
                began += await hold(t)  # the steps after a hold are due that much later
            await plan.wait_until_due(t, began)
            messages = plan.encode(t)
            for key, value in messages:
                pending.append(await producer.send(plan.topic, value, key=key))
            sent += len(messages)
            # when paced, each step is acknowledged before the next is due
            if plan.speed > 0 or len(pending) >= _ACK_CHUNK:
                await _acked(pending)
            bar.update()
    await _acked(pending)
    return sent


async def _acked(pending: list[asyncio.Future[Any]]) -> None:
    await asyncio.gather(*pending)
    pending.clear()
