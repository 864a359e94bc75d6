"""Record batches the worker cannot decode are found by their headers, with their bytes."""

from __future__ import annotations

import base64
import json
import struct

import aiokafka.codec
import pytest
from aiokafka import TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from stream_app.kafka.unreadable import (
    CODECS,
    UnreadableBatch,
    UnreadablePolicy,
    scan,
    split_frames,
)

TP = TopicPartition("stcast.ticks", 3)
CODEC_IDS = {name: code for code, name in CODECS.items()}


def batch(first: int, values: list[bytes], codec: str = "none") -> bytes:
    """A v2 record batch as a producer writes it, based at offset ``first``."""
    builder = DefaultRecordBatchBuilder(2, CODEC_IDS[codec], 0, -1, -1, -1, 1 << 20)
    for delta, value in enumerate(values):
        assert builder.append(delta, timestamp=0, key=b"s", value=value, headers=[]) is not None
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, first)  # the base offset is outside the CRC
    return bytes(data)


def tampered(data: bytes, codec_id: int | None = None, break_crc: bool = False) -> bytes:
    """``data`` with another codec id in its attributes (CRC made valid again), or a bad CRC."""
    out = bytearray(data)
    if codec_id is not None:
        out[22] = (out[22] & ~0x07) | codec_id
    crc = calc_crc32c(bytes(out[21:])) ^ (1 if break_crc else 0)
    struct.pack_into(">I", out, 17, crc)
    return bytes(out)


def ticks(n: int, first: int = 0) -> list[bytes]:
    return [b'{"sensor":"s","ts":%d,"value":1.0}' % (first + i) for i in range(n)]


def test_this_runtime_reads_every_codec_kafka_defines() -> None:
    assert aiokafka.codec.has_snappy() and aiokafka.codec.has_lz4() and aiokafka.codec.has_zstd()
    for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
        records, bad = scan(batch(40, ticks(5), codec), TP, 40)
        assert bad is None, codec
        assert [(r.offset, r.value) for r in records] == list(enumerate(ticks(5), start=40))


def test_frames_are_found_by_their_headers_and_a_truncated_tail_is_left_out() -> None:
    chunk = batch(0, ticks(3), "lz4") + batch(3, ticks(4), "zstd") + batch(7, ticks(2))[:30]
    frames = split_frames(chunk)
    assert [(f.offset, f.next_offset, f.codec) for f in frames] == [(0, 3, "lz4"), (3, 7, "zstd")]
    assert b"".join(f.data for f in frames) == chunk[: len(chunk) - 30]


def test_the_records_before_a_corrupt_batch_are_read_and_the_batch_comes_back_whole() -> None:
    corrupt = tampered(batch(5, ticks(2, 5), "gzip"), break_crc=True)
    chunk = batch(0, ticks(5)) + corrupt + batch(7, ticks(3, 7))
    records, bad = scan(chunk, TP, 2)  # the reader had handed over offsets 0 and 1 already
    assert [r.offset for r in records] == [2, 3, 4]
    assert bad is not None
    assert (bad.tp, bad.offset, bad.next_offset, bad.codec) == (TP, 5, 7, "gzip")
    assert bad.raw == corrupt
    assert "CRC" in bad.error


def test_a_codec_of_a_future_kafka_is_unreadable_not_fatal() -> None:
    future = tampered(batch(0, ticks(4), "zstd"), codec_id=7)  # the CRC is valid
    records, bad = scan(future + batch(4, ticks(1, 4)), TP, 0)
    assert records == []
    assert bad is not None and (bad.offset, bad.next_offset) == (0, 4)
    assert bad.codec == "unknown (7)"
    assert "UnsupportedCodecError" in bad.error


def test_a_chunk_without_a_bad_batch_finds_none() -> None:
    records, bad = scan(batch(10, ticks(3)) + batch(13, ticks(3)), TP, 12)
    assert bad is None
    assert [r.offset for r in records] == [12, 13, 14, 15]


def test_the_dead_letter_of_a_skipped_batch_keeps_where_and_its_bytes() -> None:
    raw = tampered(batch(120, ticks(20)), codec_id=6)
    bad = UnreadableBatch(TP, 120, 140, "UnsupportedCodecError: codec 6", raw, "unknown (6)")
    letter = json.loads(UnreadablePolicy.dead_letter(bad))
    assert letter["reason"] == "malformed"
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("stcast.ticks", 3, 120)
    assert letter["key"] is None and letter["raw_encoding"] == "base64"
    assert base64.b64decode(letter["raw"]) == raw
    assert "offsets 120-139" in letter["detail"] and "unknown (6)" in letter["detail"]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_a_batch_whose_payload_is_garbage_under_a_valid_crc_is_unreadable(codec: str) -> None:
    good = bytearray(batch(0, ticks(50), codec))
    good[61:] = bytes(len(good) - 61)  # the compressed records zeroed, the header kept
    records, bad = scan(tampered(bytes(good)), TP, 0)
    assert records == [] and bad is not None and bad.codec == codec
