"""Tick validation (every dead-letter reason) and the exact wire form of the output records."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import orjson
import pytest

from stream_app.core.records import (
    ForecastText,
    Incoming,
    Reason,
    Rejected,
    Tick,
    TimestampParser,
    decode_json,
    encode_dead_letter,
    encode_json,
    forecast_batch,
    forecasts_in,
    format_ts,
    tick_from_json,
)

T5 = 1_467_331_500_000  # 2016-07-01T00:05:00Z in epoch ms
Y2100 = 4_102_444_800_000  # 2100-01-01T00:00:00Z: the end of the accepted range


def parse(raw: bytes) -> Tick:
    return tick_from_json(decode_json(raw), TimestampParser())


def reason_of(raw: bytes) -> Reason:
    with pytest.raises(Rejected) as caught:
        parse(raw)
    return caught.value.reason


def test_a_good_tick() -> None:
    tick = parse(b'{"sensor": "pems08/17", "ts": "2016-07-01T00:05:00Z", "value": 133.0}')
    assert tick == Tick("pems08/17", T5, 133.0, None)


def test_network_is_kept() -> None:
    tick = parse(b'{"sensor": "s", "ts": 0, "value": 1, "network": "pems08"}')
    assert tick == Tick("s", 0, 1.0, "pems08")
    assert isinstance(tick.value, float)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json", b"", b'{"sensor": "s", "ts": 0, "value": 1', b'{"sensor": "\xff"}', b"\xc3(",
        b'{"sensor": "\\ud800", "ts": 0, "value": 1}', b'{"x": ' + b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=[
        "syntax", "empty", "truncated", "non-utf8-in-string", "invalid-utf8", "lone-surrogate",
        "nested-too-deep",
    ],
)  # fmt: skip
def test_malformed_bytes(raw: bytes) -> None:
    assert reason_of(raw) is Reason.MALFORMED


@pytest.mark.parametrize("raw", [b"[1, 2]", b"17", b'"tick"', b"null"])
def test_a_tick_must_be_an_object(raw: bytes) -> None:
    with pytest.raises(Rejected) as caught:
        parse(raw)
    assert caught.value.reason is Reason.MALFORMED
    assert "JSON object" in caught.value.detail


def test_utf16_json_is_malformed() -> None:
    raw = json.dumps({"sensor": "s", "ts": 0, "value": 1.0}).encode("utf-16")
    assert reason_of(raw) is Reason.MALFORMED


@pytest.mark.parametrize("field", ["sensor", "ts", "value"])
def test_missing_each_field(field: str) -> None:
    tick: dict[str, Any] = {"sensor": "s", "ts": T5, "value": 1.0}
    del tick[field]
    with pytest.raises(Rejected) as caught:
        tick_from_json(tick, TimestampParser())
    assert caught.value.reason is Reason.MISSING_FIELD
    assert repr(field) in caught.value.detail


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("sensor", 17),
        ("sensor", ""),
        ("sensor", None),
        ("sensor", ["s"]),
        ("value", True),
        ("value", False),
        ("value", "133.0"),
        ("value", [1.0]),
        ("ts", True),
        ("ts", 1467331500000.0),
        ("ts", None),
        ("ts", {"ms": 0}),
        ("network", 8),
    ],
)
def test_bad_types(field: str, bad: object) -> None:
    tick: dict[str, Any] = {"sensor": "s", "ts": T5, "value": 1.0, field: bad}
    with pytest.raises(Rejected) as caught:
        tick_from_json(tick, TimestampParser())
    assert caught.value.reason is Reason.BAD_TYPE


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
def test_non_finite_values(literal: bytes) -> None:
    raw = b'{"sensor": "s", "ts": 0, "value": ' + literal + b"}"
    assert reason_of(raw) is Reason.NON_FINITE


def test_huge_integer_value_is_rejected_not_raised() -> None:
    raw = b'{"sensor": "s", "ts": 0, "value": 1' + b"0" * 400 + b"}"
    assert reason_of(raw) is Reason.NON_FINITE


def test_null_value_is_a_known_missing_reading() -> None:
    assert parse(b'{"sensor": "s", "ts": 0, "value": null}') == Tick("s", 0, None, None)


@pytest.mark.parametrize(
    "ts",
    [
        "2016-07-01T00:05:00",  # naive: no offset
        "2016-07-01",  # a date is naive too
        "yesterday",
        "2016-13-01T00:00:00Z",
        "",
        "1969-12-31T23:59:59Z",  # before the epoch
        "2100-01-01T00:00:00Z",  # past the range
    ],
)
def test_bad_timestamp_strings(ts: str) -> None:
    with pytest.raises(Rejected) as caught:
        tick_from_json({"sensor": "s", "ts": ts, "value": 1.0}, TimestampParser())
    assert caught.value.reason is Reason.BAD_TIMESTAMP


@pytest.mark.parametrize("ms", [-1, Y2100, 1_467_331_500_000_000])
def test_epoch_ms_out_of_range(ms: int) -> None:
    with pytest.raises(Rejected) as caught:
        tick_from_json({"sensor": "s", "ts": ms, "value": 1.0}, TimestampParser())
    assert caught.value.reason is Reason.BAD_TIMESTAMP


@pytest.mark.parametrize("ms", [0, T5, Y2100 - 1])
def test_epoch_ms_accepted(ms: int) -> None:
    assert tick_from_json({"sensor": "s", "ts": ms, "value": 2}, TimestampParser()).ts_ms == ms


@pytest.mark.parametrize(
    ("ts", "ms"),
    [
        ("2016-07-01T02:05:00+02:00", T5),
        ("2016-06-30T19:05:00-05:00", T5),
        ("2016-07-01T00:05:00Z", T5),
        ("2016-07-01T00:05:00+00:00", T5),
        ("2016-07-01T00:05:00.250Z", T5 + 250),
    ],
)
def test_rfc3339_offsets(ts: str, ms: int) -> None:
    parser = TimestampParser()
    assert parser.parse(ts) == ms
    assert parser.parse(ts) == ms  # and again, from the cache


def test_cache_is_bounded_and_still_right() -> None:
    parser = TimestampParser(cache_size=2)
    stamps = [f"2016-07-01T00:0{m}:00Z" for m in range(5)]
    expected = [T5 - 300_000 + 60_000 * m for m in range(5)]
    assert [parser.parse(ts) for ts in stamps * 2] == expected * 2


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (T5, "2016-07-01T00:05:00Z"),
        (T5 + 7, "2016-07-01T00:05:00.007Z"),
        (0, "1970-01-01T00:00:00Z"),
    ],
)
def test_format_ts(ms: int, text: str) -> None:
    assert format_ts(ms) == text


def test_forecast_values_go_from_float32_arrays_to_text() -> None:
    record = {
        "sensor": 'pems08/"17"',
        "values": np.array([133.0, 0.1, -2.25, 123456789.0, 1e-7], dtype=np.float32),
        "step_s": 300,
    }
    raw = encode_json(record)
    assert (
        raw
        == b'{"sensor":"pems08/\\"17\\"","values":[133.0,0.1,-2.25,123456790.0,1e-7],"step_s":300}'
    )
    assert json.loads(raw)["values"][1] == 0.1  # the shortest text of the float32 nearest 0.1


def test_a_forecast_batch_is_keyed_like_its_tick_batch_and_read_back_whole() -> None:
    ticks = Incoming("stcast.ticks", 0, 5, b"pems08", b"")
    records = [encode_json({"sensor": "a", "values": np.zeros(2, np.float32)}), b'{"sensor":"b"}']
    key, value = forecast_batch(records, ticks)
    assert key == b"pems08"
    assert json.loads(value) == {
        "forecasts": [{"sensor": "a", "values": [0.0, 0.0]}, {"sensor": "b"}]
    }
    assert value == encode_json({"forecasts": [json.loads(r) for r in records]})
    assert [f["sensor"] for f in forecasts_in(value)] == ["a", "b"]
    assert forecasts_in(b'{"sensor": "c", "values": [1.0]}') == [{"sensor": "c", "values": [1.0]}]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("horizon", [1, 12])
def test_forecast_text_is_the_record_dicts_encoding(dtype: type, horizon: int) -> None:
    """``ForecastText`` builds each record from pieces; it must be byte for byte what orjson
    makes of the record's dict, with and without quantiles and quarantine, for odd sensor
    names, odd numbers and a non-finite bound."""
    rng = np.random.default_rng(4)
    values = rng.normal(size=(5, horizon)) * 10.0 ** rng.integers(-8, 30, size=(5, 1))
    values = values.astype(dtype)
    values[1, 0] = 0.1
    values[2, -1] = -0.0
    low, high = values - 1, values + 1
    high[3, 0] = np.nan  # written as null, as orjson writes it in an array
    sensors = ['pems08/"17"', "é/ünï", "a\\b", "tab\there", "x"]
    for interval in (None, (low, high)):
        text = ForecastText(values, interval, 3600, 'universal@"1"', "2026-12-07T10:00:00Z")
        for row, sensor in enumerate(sensors):
            stuck = row % 2 == 1
            record: dict[str, Any] = {
                "sensor": sensor, "ts": "2016-07-01T00:05:00Z", "step_s": 3600,
                "values": values[row], "model": 'universal@"1"',
                "emitted_at": "2026-12-07T10:00:00Z", "imputed": row,
            }  # fmt: skip
            if interval is not None:
                record["quantiles"] = {"0.1": low[row], "0.9": high[row]}
            if stuck:
                record["quarantined"] = "stuck"
            built = text.record(row, orjson.dumps(sensor), b'"2016-07-01T00:05:00Z"', row, stuck)
            assert built == encode_json(record)


WHERE = Incoming(topic="stcast.ticks", partition=3, offset=41, key=b"pems08/17", value=b"")


def test_dead_letter_keeps_text() -> None:
    raw = b'{"sensor": "pems08/17", "ts": "now", "value": 1}'
    record = json.loads(encode_dead_letter(WHERE, Reason.BAD_TIMESTAMP, "ts 'now'", raw))
    assert record == {
        "reason": "bad_timestamp",
        "detail": "ts 'now'",
        "topic": "stcast.ticks",
        "partition": 3,
        "offset": 41,
        "key": "pems08/17",
        "raw": raw.decode(),
    }


def test_dead_letter_base64_for_non_utf8() -> None:
    raw = b'{"sensor": "\xff\xfe", "ts": 0}'
    where = Incoming("stcast.ticks", 0, 7, None, raw)
    record = json.loads(encode_dead_letter(where, Reason.MALFORMED, "not UTF-8", raw))
    assert record["raw_encoding"] == "base64"
    assert base64.b64decode(record["raw"]) == raw
    assert record["key"] is None
    assert (record["reason"], record["offset"]) == ("malformed", 7)


def test_dead_letter_key_that_is_not_utf8() -> None:
    where = Incoming("t", 0, 0, b"s\xff", b"x")
    record = json.loads(encode_dead_letter(where, Reason.MALFORMED, "d", b"x"))
    assert record["key"] == "s\\xff"
    assert "raw_encoding" not in record
