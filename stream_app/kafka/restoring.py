"""Per-sensor state comes back by re-reading the input topic, never from a store of its own.

When a worker is assigned a partition it did not own, it reads that partition's ticks from a
little before the group's committed offset up to it, and feeds them to ``Pipeline.restore``:
windows, imputation and the forecasts still waiting for their actuals come back exactly as the
previous owner had them, without output and without being counted twice. Processing then goes
on from the committed offset.

How far back: windows, imputation and pending forecasts depend on the last ``window + horizon +
max_gap`` grid steps of event time; twice that is read, to allow for readings that arrive out
of order. The drift monitors learn from the scores of that time and of their warm-up before
it (``DriftSink.memory_steps``, a day with the defaults), so that much more is read: they come
back warm, not restarted. The
topic is not indexed by event time (and the embedded broker answers offset-for-time lookups
with 0), so the reader reads a block of offsets before the committed one and widens it four-fold
until the block spans that much event time, or reaches the partition's start.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ..core.records import Incoming, Rejected, TimestampParser, decode_json
from ..networks import Core
from ..settings import Settings
from .clients import client_options
from .unreadable import TolerantReader

log = logging.getLogger(__name__)

FIRST_BLOCK = 4096  # offsets read back at first, per partition


def history_span_ms(pipeline: Core) -> int:
    """Event time whose ticks determine a partition's state (``Pipeline.history_span_s``)."""
    return pipeline.history_span_s * 1000


async def restore_partition(
    pipeline: Core, settings: Settings, tp: TopicPartition, committed: int
) -> int:
    """Rebuild the state of ``tp``'s sensors from the ticks before ``committed``; return them."""
    started = time.perf_counter()
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **client_options(settings),
    )
    await reader.start()
    try:
        reader.assign([tp])
        tolerant = TolerantReader(reader, settings)
        messages = await read_history(tolerant, tp, committed, history_span_ms(pipeline))
    finally:
        await reader.stop()
    pipeline.restore(messages)
    log.info(
        "restored partition %d from %d ticks before offset %d in %.2f s",
        tp.partition,
        len(messages),
        committed,
        time.perf_counter() - started,
    )
    return len(messages)


async def read_history(
    reader: TolerantReader, tp: TopicPartition, end: int, span_ms: int
) -> list[Incoming]:
    """The messages before offset ``end`` that span ``span_ms`` of event time (or all of them)."""
    count = FIRST_BLOCK
    while True:
        start = max(0, end - count)
        messages = await read_range(reader, tp, start, end)
        if start == 0 or spans(messages, span_ms):
            return messages
        count *= 4


async def read_range(
    reader: TolerantReader, tp: TopicPartition, start: int, end: int
) -> list[Incoming]:
    """Every readable message of ``tp`` with ``start <= offset < end``."""
    consumer = reader.consumer
    consumer.seek(tp, start)
    reader.forget([tp])
    messages: list[Incoming] = []
    while await consumer.position(tp) < end:
        batch = (await reader.getmany_past_unreadable(tp, timeout_ms=1000)).get(tp, [])
        messages.extend(m for m in batch if m.offset < end)
        if not batch and await consumer.position(tp) < end:
            log.warning("partition %d: no record before offset %d yet", tp.partition, end)
    return messages


def spans(messages: list[Incoming], span_ms: int) -> bool:
    """Whether the oldest readable tick lies ``span_ms`` before the newest."""
    parse = TimestampParser()
    times = [t for t in (event_time_ms(m.value, parse) for m in messages) if t is not None]
    return bool(times) and max(times) - times[0] >= span_ms


def event_time_ms(value: bytes | None, parse: TimestampParser) -> int | None:
    """The ``ts`` of a tick, or of a tick batch's first tick; None when unreadable."""
    try:
        obj: Any = decode_json(value)
        if isinstance(obj, dict) and isinstance(obj.get("ticks"), list) and obj["ticks"]:
            obj = obj["ticks"][0]
        return parse.parse(obj["ts"]) if isinstance(obj, dict) and "ts" in obj else None
    except Rejected:
        return None
