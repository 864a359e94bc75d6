"""Helpers of the broker-backed tests: topics, worker settings, publishing and reading back."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_app.kafka.topics import ensure_topics_sync
from stream_app.tools.broker import EmbeddedBroker


def topics(broker: EmbeddedBroker) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    names = {kind: f"it.{run}.{kind}" for kind in ("ticks", "forecasts", "dlq")}
    ensure_topics_sync(broker.bootstrap_servers, dict.fromkeys(names.values(), 4))
    return names


def worker_settings(broker: EmbeddedBroker, names: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap_servers": broker.bootstrap_servers,
        "ticks_topic": names["ticks"],
        "forecasts_topic": names["forecasts"],
        "dlq_topic": names["dlq"],
        "group_id": f"it-{names['ticks']}",
        "network": "pems08",
        "step_s": 300,
        "log_level": "info",
        "model_dir": "none",  # the persistence baseline, unless a test names a model
        **extra,
    }


async def publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        pending = []
        for key, value in messages:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float) -> list[Any]:
    """Every record of ``topic`` (counted, never from end offsets: Tansu's are unreliable)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while len(records) < expected and loop.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        more = await consumer.getmany(timeout_ms=1000)  # nothing beyond what was expected
        records.extend(r for batch in more.values() for r in batch)
    finally:
        await consumer.stop()
    return records


def epoch_s(ts: str) -> int:
    """Epoch seconds of an RFC 3339 time."""
    return int(datetime.fromisoformat(ts).timestamp())
