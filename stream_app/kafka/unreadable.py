"""Record batches that cannot be decoded: found, reported, and stopped at or stepped over.

aiokafka decodes a fetched record batch while handing its records over. A batch it cannot
decode (a codec it has no library for, one a future Kafka defines, a corrupt batch) raises out
of ``getmany`` for every partition of the call, and the records it had already taken from the
other partitions are lost with the exception while their positions have moved on. A consumer
that simply retried would skip those records and then fail on the same batch forever.

``TolerantReader`` wraps a consumer's ``getmany``. It remembers, per partition, the next offset
it has handed over. When a decoding error comes out, it moves every partition back to that
offset, fetches each partition's next bytes itself (a plain Fetch request, no decoding),
splits them into record batches by their headers, which are never compressed, and decodes each
with aiokafka's own decoder until one fails. The records before that batch are handed over as
usual; the batch itself comes back as an ``UnreadableBatch`` (partition, offsets, the error and
its raw bytes) for the caller's policy: stop at it (pause the partition) or step over it. A
decoding error that no partition's bytes reproduce is raised as it came.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cramjam
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from ..core.chunks import Output
from ..core.metrics import Metrics
from ..core.records import Incoming, Reason, encode_dead_letter
from ..settings import Settings
from .clients import client_options

log = logging.getLogger(__name__)

# What decoding a batch raises: aiokafka's own errors, and the decompressors' (gzip: OSError,
# EOFError, zlib.error; cramjam, behind snappy, lz4 and zstd: DecompressionError).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    CorruptRecordException,
    UnsupportedCodecError,
    cramjam.DecompressionError,
    OSError,
    EOFError,
    zlib.error,
    struct.error,
    ValueError,
)
HEADER = struct.Struct(">qi")  # every batch and legacy message starts with offset, length
MAGIC_AT = 16  # v2: after offset, length, leader epoch; v0/v1: after offset, length, crc
LAST_OFFSET_DELTA = struct.Struct(">i")
ATTRIBUTES_AT = 22  # v2: the low byte of the int16 after magic (1 byte) and crc (4)
LAST_OFFSET_DELTA_AT = 23
CODEC_MASK = 0x07
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


@dataclass(frozen=True)
class UnreadableBatch:
    """A record batch of ``tp`` at offsets [``offset``, ``next_offset``) that cannot be decoded."""

    tp: TopicPartition
    offset: int
    next_offset: int
    error: str
    raw: bytes
    codec: str

    def describe(self) -> str:
        return (
            f"{self.tp.topic} partition {self.tp.partition}, offsets {self.offset}-"
            f"{self.next_offset - 1} ({len(self.raw)} bytes, codec {self.codec}): {self.error}"
        )


@dataclass
class Frame:
    """One record batch (or legacy message) as bytes, with the offsets its header names."""

    offset: int
    next_offset: int
    data: bytes
    codec: str = field(default="none")


def split_frames(raw: bytes) -> list[Frame]:
    """The whole batches in a fetched chunk, by their headers (a truncated last one is left out).

    >>> from aiokafka.record.default_records import DefaultRecordBatchBuilder
    >>> builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    >>> for i in range(3):
    ...     _ = builder.append(i, timestamp=0, key=None, value=b"x", headers=[])
    >>> chunk = bytes(builder.build())
    >>> [(f.offset, f.next_offset, f.codec) for f in split_frames(chunk + chunk[:20])]
    [(0, 3, 'none')]
    """
    frames, pos = [], 0
    while pos + HEADER.size <= len(raw):
        offset, length = HEADER.unpack_from(raw, pos)
        end = pos + HEADER.size + length
        if length <= 0 or end > len(raw) or pos + MAGIC_AT >= end:
            break
        data = raw[pos:end]
        if data[MAGIC_AT] >= 2:
            (delta,) = LAST_OFFSET_DELTA.unpack_from(data, LAST_OFFSET_DELTA_AT)
            frames.append(Frame(offset, offset + delta + 1, data, _codec(data[ATTRIBUTES_AT])))
        else:  # v0/v1: the attributes byte follows the magic byte
            frames.append(Frame(offset, offset + 1, data, _codec(data[MAGIC_AT + 1])))
        pos = end
    return frames


def _codec(attributes: int) -> str:
    code = attributes & CODEC_MASK
    return CODECS.get(code, f"unknown ({code})")


def decode_frame(frame: Frame, tp: TopicPartition) -> list[Incoming]:
    """The records of one batch, decoded by aiokafka's own decoder (which raises on failure)."""
    batch: Any = MemoryRecords(frame.data).next_batch()
    if batch is None:
        return []
    if not batch.validate_crc():
        raise CorruptRecordException(f"invalid CRC in the batch at offset {frame.offset}")
    if getattr(batch, "is_control_batch", False):  # transaction markers carry no ticks
        return []
    return [Incoming(tp.topic, tp.partition, r.offset, r.key, r.value) for r in batch]


def scan(
    raw: bytes, tp: TopicPartition, position: int
) -> tuple[list[Incoming], UnreadableBatch | None]:
    """The readable records from ``position`` on, up to the first batch that cannot be decoded."""
    records: list[Incoming] = []
    for frame in split_frames(raw):
        if frame.next_offset <= position:
            continue
        try:
            decoded = decode_frame(frame, tp)
        except DECODE_ERRORS as error:
            bad = UnreadableBatch(
                tp, frame.offset, frame.next_offset, _explain(error), frame.data, frame.codec
            )
            return records, bad
        records.extend(r for r in decoded if r.offset >= position)
    return records, None


def _explain(error: BaseException) -> str:
    name, text = type(error).__name__, str(error)
    return text if name in text else f"{name}: {text}"


class TolerantReader:
    """A consumer's ``getmany`` that survives record batches it cannot decode.

    ``getmany`` returns the records per partition, and the unreadable batches met on the way.
    The caller then ``stop_at`` (pause the partition at the batch: nothing after it is read
    until the partition is assigned afresh) or ``step_over`` each of them.
    """

    def __init__(
        self, consumer: AIOKafkaConsumer, settings: Settings, max_bytes: int = 4 * 1024 * 1024
    ) -> None:
        self.consumer = consumer
        self.settings = settings
        self.max_bytes = max_bytes
        self._next: dict[TopicPartition, int] = {}

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions changed hands or were sought: learn their position afresh."""
        for tp in partitions:
            self._next.pop(tp, None)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> tuple[dict[TopicPartition, list[Incoming]], list[UnreadableBatch]]:
        """Records per partition, as ``AIOKafkaConsumer.getmany``, and the unreadable batches."""
        await self._learn_positions()
        try:
            fetched = await self.consumer.getmany(
                *partitions, timeout_ms=timeout_ms, max_records=max_records
            )
        except DECODE_ERRORS as error:
            return await self._recover(error, partitions)
        records = {tp: _incoming(tp, batch) for tp, batch in fetched.items() if batch}
        self._handed_over(records)
        return records, []

    async def getmany_side_by_side(
        self, timeout_ms: int, max_records: int
    ) -> tuple[dict[TopicPartition, list[Incoming]], list[UnreadableBatch]]:
        """``getmany`` taking at most an equal share of ``max_records`` from each partition that
        has records waiting, where aiokafka would fill the micro-batch from the first: a worker
        catching up on several partitions then reads them side by side, so a micro-batch holds
        each sensor fewer times (its settling costs per generation, docs/performance.md,
        2026-12-07, last). Waits ``timeout_ms`` for records only when none is waiting."""
        readable = sorted(self.consumer.assignment() - self.consumer.paused())
        if len(readable) < 2:
            return await self.getmany(timeout_ms=timeout_ms, max_records=max_records)
        share = max(1, max_records // len(readable))
        records: dict[TopicPartition, list[Incoming]] = {}
        unreadable: list[UnreadableBatch] = []
        for tp in readable:
            got, bad = await self.getmany(tp, timeout_ms=0, max_records=share)
            records.update(got)
            unreadable += bad
        if records or unreadable:
            return records, unreadable
        return await self.getmany(timeout_ms=timeout_ms, max_records=share)

    async def getmany_past_unreadable(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Incoming]]:
        """``getmany`` for readers that only look back (state restore, the retrain worker's
        history): an unreadable batch is stepped over with a warning. The workers that served
        it have dead-lettered it or stopped before it."""
        records, unreadable = await self.getmany(
            *partitions, timeout_ms=timeout_ms, max_records=max_records
        )
        for batch in unreadable:
            log.warning("stepped over a record batch that cannot be decoded: %s", batch.describe())
            self.step_over(batch)
        return records

    def step_over(self, batch: UnreadableBatch) -> None:
        """Read on after ``batch``."""
        self.consumer.seek(batch.tp, batch.next_offset)
        self._next[batch.tp] = batch.next_offset

    def stop_at(self, batch: UnreadableBatch) -> None:
        """Read nothing more of the batch's partition (until it is assigned afresh)."""
        self.consumer.seek(batch.tp, batch.offset)
        self.consumer.pause(batch.tp)
        self._next[batch.tp] = batch.offset

    async def _learn_positions(self) -> None:
        for tp in self.consumer.assignment() - self._next.keys():
            self._next[tp] = await self.consumer.position(tp)

    def _handed_over(self, records: Mapping[TopicPartition, Sequence[Incoming]]) -> None:
        for tp, batch in records.items():
            if batch:
                self._next[tp] = batch[-1].offset + 1

    async def _recover(
        self, error: BaseException, partitions: Sequence[TopicPartition]
    ) -> tuple[dict[TopicPartition, list[Incoming]], list[UnreadableBatch]]:
        """Move every partition back to what was handed over; find the batch that fails."""
        paused = self.consumer.paused()
        readable = sorted(tp for tp in partitions or self.consumer.assignment() if tp not in paused)
        for tp in self.consumer.assignment():
            if tp in self._next:
                self.consumer.seek(tp, self._next[tp])
        records: dict[TopicPartition, list[Incoming]] = {}
        found: list[UnreadableBatch] = []
        async with RawFetcher(self.settings) as fetcher:
            for tp in readable:
                position = self._next[tp]
                good, bad = scan(await fetcher.fetch(tp, position, self.max_bytes), tp, position)
                if bad is not None:
                    records[tp] = good
                    found.append(bad)
        if not found:
            raise error
        self._handed_over(records)
        for tp, good in records.items():  # the consumer reads on after what was handed over
            if good:
                self.consumer.seek(tp, self._next[tp])
        return {tp: good for tp, good in records.items() if good}, found


def _incoming(tp: TopicPartition, batch: Sequence[Any]) -> list[Incoming]:
    topic, partition = tp.topic, tp.partition
    return [Incoming(topic, partition, r.offset, r.key, r.value) for r in batch]


class RawFetcher:
    """A client of its own that fetches a partition's bytes without decoding them."""

    def __init__(self, settings: Settings) -> None:
        self._client = AIOKafkaClient(
            bootstrap_servers=settings.bootstrap_servers, **client_options(settings)
        )

    async def __aenter__(self) -> RawFetcher:
        await self._client.bootstrap()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.close()

    async def fetch(self, tp: TopicPartition, offset: int, max_bytes: int) -> bytes:
        """The bytes the broker serves for ``tp`` from ``offset`` (whole batches, or b"")."""
        self._client.add_topic(tp.topic)
        await self._client.force_metadata_update()
        node = self._client.cluster.leader_for_partition(tp)
        if node is None or node < 0:
            log.warning("no leader known for %s: cannot read its bytes", tp)
            return b""
        request = FetchRequest(
            max_wait_time=500,  # Tansu answers a fetch that may not wait with nothing
            min_bytes=1,
            max_bytes=max_bytes,
            isolation_level=0,
            topics=[(tp.topic, [(tp.partition, offset, max_bytes)])],
        )
        response: Any = await self._client.send(node, request)
        for _topic, parts in response.topics:
            for partition, error_code, _highwater, *data in parts:
                if partition == tp.partition and error_code == 0:
                    return bytes(data[-1] or b"")
        return b""


class UnreadablePolicy:
    """What the worker does with a batch it cannot decode (``STCAST_ON_UNREADABLE``).

    ``stop`` (the default: nothing is lost, nothing skipped): the batch's partition is paused
    there, its offset is committed up to the batch and no further, and the worker serves its
    other partitions; after a restart or a rebalance the partition's new owner meets the batch
    and stops again. ``skip``: the batch goes to the dead-letter topic as one ``malformed``
    record with its raw bytes (base64), and reading goes on after it. Both log an error that
    says where the batch is and what to do, and count it in
    ``stcast_unreadable_batches_total{action}``.
    """

    def __init__(self, settings: Settings, reader: TolerantReader, metrics: Metrics) -> None:
        self.action = settings.on_unreadable
        self.dlq_topic = settings.dlq_topic
        self.reader = reader
        self.metrics = metrics

    def apply(
        self, batches: Sequence[UnreadableBatch], offsets: dict[TopicPartition, int]
    ) -> list[Output]:
        """Stop at or step over each batch; return the dead letters to write with the offsets
        that become committable once they are acknowledged (added to ``offsets``)."""
        letters = Output()
        for batch in batches:
            self.metrics.unreadable_batches.labels(action=self.action).inc()
            if self.action == "skip":
                self.reader.step_over(batch)
                letters.dead_letters.append((None, self.dead_letter(batch)))
                offsets[batch.tp] = batch.next_offset
                log.error("%s: %s", STEPPED_OVER.format(dlq=self.dlq_topic), batch.describe())
            else:
                self.reader.stop_at(batch)
                log.error("%s: %s", STOPPED.format(p=batch.tp.partition), batch.describe())
        return [letters] if letters else []

    @staticmethod
    def dead_letter(batch: UnreadableBatch) -> bytes:
        where = Incoming(batch.tp.topic, batch.tp.partition, batch.offset, None, batch.raw)
        detail = f"record batch of offsets {batch.offset}-{batch.next_offset - 1} cannot be "
        detail += f"decoded (codec {batch.codec}): {batch.error}"
        return encode_dead_letter(where, Reason.MALFORMED, detail, batch.raw)


STOPPED = (
    "cannot decode a record batch; stopped reading partition {p} there "
    "(STCAST_ON_UNREADABLE=stop: nothing after it is read or committed, the other partitions "
    "are served). To go on, have the producer write a codec Kafka defines (none, gzip, snappy, "
    "lz4, zstd: this worker reads all five), or set STCAST_ON_UNREADABLE=skip to send such "
    "batches to the dead-letter topic with their raw bytes, and restart the workers"
)
STEPPED_OVER = (
    "cannot decode a record batch; sent it to {dlq} with its raw bytes and read on after it "
    "(STCAST_ON_UNREADABLE=skip). Its ticks are not forecast: check the producer's codec"
)
