"""Wire records (DESIGN.md): ticks in, forecasts and dead letters out.

Error policy, drawn once: every input that cannot become a valid ``Tick`` raises ``Rejected``
with one of the ``Reason`` values. The pipeline turns each ``Rejected`` into a dead letter on the
DLQ (with the original bytes), counts it, and carries on with the next tick. Nothing else in the
runtime decides what happens to bad input.

    Rejected(reason, detail)
      malformed       not UTF-8 JSON, or not a JSON object
      missing_field   sensor, ts or value absent
      bad_type        a field of the wrong JSON type
      non_finite      value is NaN or infinite
      bad_timestamp   ts unparseable, without a UTC offset, or too far ahead of the clock
      late            older than the sensor's window
      duplicate       a second reading for a grid slot that already has one
      unknown_network the tick names a network this worker does not serve
      internal        a bug of ours, never the sender's fault
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson


class Reason(StrEnum):
    MALFORMED = "malformed"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    NON_FINITE = "non_finite"
    BAD_TIMESTAMP = "bad_timestamp"
    LATE = "late"
    DUPLICATE = "duplicate"
    UNKNOWN_NETWORK = "unknown_network"
    INTERNAL = "internal"


class Rejected(Exception):
    """A tick that cannot be used, and why."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Tick:
    """One reading: ``value`` None means the sensor reported it missing."""

    sensor: str
    ts_ms: int
    value: float | None
    network: str | None = None


class Incoming(NamedTuple):
    """A message as consumed, with where it came from (for dead letters). A named tuple: a
    worker makes one per consumed record, and a frozen dataclass costs four times as much to
    make (0.55 against 0.23 us here)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # None: a record without a value (a tombstone)


_EPOCH_MS_MAX = 4_102_444_800_000  # 2100-01-01: beyond it, epoch ms is a unit mistake


class TimestampParser:
    """RFC 3339 strings and epoch milliseconds to epoch milliseconds, with a small cache.

    A gateway's batch stamps every tick with the same time, so most lookups hit the cache.

    >>> TimestampParser().parse("2016-07-01T00:05:00Z")
    1467331500000
    """

    def __init__(self, cache_size: int = 4096) -> None:
        self.cache_size = cache_size
        self._cache: dict[str, int] = {}

    def parse(self, ts: object) -> int:
        if isinstance(ts, str):
            cached = self._cache.get(ts)
            return cached if cached is not None else self._parse_text(ts)
        if isinstance(ts, int) and not isinstance(ts, bool):
            if not 0 <= ts < _EPOCH_MS_MAX:
                raise Rejected(Reason.BAD_TIMESTAMP, f"epoch milliseconds {ts} out of range")
            return ts
        raise Rejected(Reason.BAD_TYPE, f"ts must be an RFC 3339 string or epoch ms, not {ts!r}")

    def _parse_text(self, ts: str) -> int:
        try:
            parsed = datetime.fromisoformat(ts)
        except ValueError:
            raise Rejected(Reason.BAD_TIMESTAMP, f"ts {ts!r} is not RFC 3339") from None
        if parsed.tzinfo is None:
            raise Rejected(Reason.BAD_TIMESTAMP, f"ts {ts!r} has no UTC offset")
        ms = round(parsed.timestamp() * 1000)
        if not 0 <= ms < _EPOCH_MS_MAX:
            raise Rejected(Reason.BAD_TIMESTAMP, f"ts {ts!r} out of range")
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[ts] = ms
        return ms


# JSON nested deeper than this is malformed. ``json`` alone gives up at Python's recursion
# limit less its caller's frames, so its verdict on a message nested ~990 deep would depend on
# where it is read; msgspec reads deeper still.
MAX_DEPTH = 500


def decode_json(raw: bytes | None) -> Any:
    """Parse a message value, or raise ``Rejected(malformed)``."""
    if raw is None:
        raise Rejected(Reason.MALFORMED, "the record has no value (null)")
    try:
        obj = json.loads(raw.decode("utf-8"))  # json.loads(bytes) would also take UTF-16/32
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected(Reason.MALFORMED, f"not UTF-8 JSON: {exc}") from None
    except RecursionError:
        obj = _TOO_DEEP
    if obj is _TOO_DEEP or (may_nest_too_deeply(raw) and _deeper_than(obj, MAX_DEPTH)):
        raise Rejected(
            Reason.MALFORMED, f"JSON nested too deeply to read (over {MAX_DEPTH} levels)"
        )
    return obj


_TOO_DEEP = object()


def may_nest_too_deeply(raw: bytes) -> bool:
    """Whether ``raw`` has more brackets than ``MAX_DEPTH``: every level opens one, so only
    then can it nest deeper (a long tick batch has that many without nesting deeply)."""
    return raw.count(b"[") + raw.count(b"{") > MAX_DEPTH


def _deeper_than(obj: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels in ``obj``."""
    stack = [(obj, 1)] if isinstance(obj, dict | list) else []
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return False


def tick_from_json(obj: Any, parse_ts: TimestampParser) -> Tick:
    """Validate one decoded tick object."""
    if not isinstance(obj, dict):
        raise Rejected(Reason.MALFORMED, f"a tick must be a JSON object, not {type(obj).__name__}")
    try:
        sensor, ts, value = obj["sensor"], obj["ts"], obj["value"]
    except KeyError as exc:
        raise Rejected(Reason.MISSING_FIELD, f"tick has no {exc.args[0]!r}") from None
    if not isinstance(sensor, str) or not sensor:
        raise Rejected(Reason.BAD_TYPE, f"sensor must be a non-empty string, not {sensor!r}")
    if not sensor.isascii() and not _is_unicode(sensor):  # JSON can escape a lone surrogate
        raise Rejected(Reason.MALFORMED, f"sensor {sensor!r} is not valid Unicode")
    network = obj.get("network")
    if network is not None and not isinstance(network, str):
        raise Rejected(Reason.BAD_TYPE, f"network must be a string, not {network!r}")
    return Tick(sensor, parse_ts.parse(ts), _reading(value), network)


def tick_from_row(row: Any, parse_ts: TimestampParser) -> Tick:
    """A tick from a row the columnar decoder typed (``chunks.TickRow``): the checks of
    ``tick_from_json`` that types cannot make, in the same order, with the same details."""
    sensor = row.sensor
    if not sensor:
        raise Rejected(Reason.BAD_TYPE, f"sensor must be a non-empty string, not {sensor!r}")
    return Tick(sensor, parse_ts.parse(row.ts), _reading(row.value), row.network)


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _reading(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected(Reason.BAD_TYPE, f"value must be a number or null, not {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer with hundreds of digits
        raise Rejected(Reason.NON_FINITE, "value is too large for a float") from None
    if not math.isfinite(number):
        raise Rejected(Reason.NON_FINITE, f"value {value!r} is not finite")
    return number


def format_ts(ts_ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC, seconds precision when whole.

    >>> format_ts(1467331500000)
    '2016-07-01T00:05:00Z'
    """
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    if ts_ms % 1000:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def encode_json(record: dict[str, Any]) -> bytes:
    """A record as compact JSON; numpy arrays in it become numbers without a Python float per
    value (float32 arrays print the shortest text that reads back as the same float32).

    >>> import numpy as np
    >>> encode_json({"values": np.array([1.5, 0.1], dtype=np.float32)})
    b'{"values":[1.5,0.1]}'
    """
    return orjson.dumps(record, option=_NUMPY)


def forecast_batch(records: list[bytes], batch: Incoming | None) -> tuple[bytes, bytes]:
    """A forecast batch record ``{"forecasts": [...]}`` of forecast records (JSON text each)
    answering tick batch ``batch``, keyed like it (the network's key), so that it lands where
    the network's ticks are."""
    key = batch.key if batch is not None and batch.key is not None else b""
    return key, b'{"forecasts":[' + b",".join(records) + b"]}"


class ForecastText:
    """A chunk's forecast records as JSON text, byte for byte what ``encode_json`` makes of
    the record's dict (tested), from pieces: each row's numbers come from one ``orjson`` call
    for the whole chunk, and the fields every record shares are encoded once. A record costs
    a third of its dict's encoding (docs/performance.md, 2026-12-07, last).

    >>> import numpy as np
    >>> text = ForecastText(np.array([[1.5, 2.0]], dtype=np.float32), None, 300, "m@1", "T")
    >>> text.record(0, b'"a"', b'"2016-07-01T00:05:00Z"', 0, False)
    b'{"sensor":"a","ts":"2016-07-01T00:05:00Z","step_s":300,"values":[1.5,2.0],"model":"m@1","emitted_at":"T","imputed":0}'
    """

    def __init__(
        self,
        values: npt.NDArray[np.floating[Any]],
        interval: tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]]] | None,
        step_s: int,
        model: str,
        emitted_at: str,
    ) -> None:
        self.values = _rows_text(values)
        self.interval = None
        if interval is not None:
            self.interval = (_rows_text(interval[0]), _rows_text(interval[1]))
        self.head = b',"step_s":%d,"values":[' % step_s
        self.tail = b'],"model":' + orjson.dumps(model) + b',"emitted_at":'
        self.tail += orjson.dumps(emitted_at) + b',"imputed":'

    def record(self, row: int, sensor: bytes, ts: bytes, imputed: int, stuck: bool) -> bytes:
        """Row ``row``'s record; ``sensor`` and ``ts`` as JSON strings."""
        parts = [b'{"sensor":', sensor, b',"ts":', ts, self.head, self.values[row], self.tail]
        parts.append(b"%d" % imputed)
        if self.interval is not None:
            low, high = self.interval
            parts += (b',"quantiles":{"0.1":[', low[row], b'],"0.9":[', high[row], b"]}")
        if stuck:
            parts.append(b',"quarantined":"stuck"')
        parts.append(b"}")
        return b"".join(parts)


def _rows_text(values: npt.NDArray[np.floating[Any]]) -> list[bytes]:
    """Each row's numbers as ``orjson`` writes them, without the brackets: the rows of the
    array's text split at ``],[`` (numbers hold no brackets; a non-finite one is null)."""
    if len(values) == 0:
        return []
    text = orjson.dumps(np.ascontiguousarray(values), option=_NUMPY)
    return text[2:-2].split(b"],[")


def forecasts_in(value: bytes) -> list[dict[str, Any]]:
    """The forecasts of a record on the forecasts topic: itself, or a forecast batch's."""
    record: dict[str, Any] = orjson.loads(value)
    batch = record.get("forecasts")
    return batch if isinstance(batch, list) else [record]


def encode_dead_letter(message: Incoming, reason: Reason, detail: str, raw: bytes | None) -> bytes:
    """A dead-letter record that keeps the original bytes (as text, or base64 when not UTF-8)."""
    record: dict[str, Any] = {
        "reason": str(reason),
        "detail": detail,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": _text_or_none(message.key),
    }
    raw = raw or b""  # a record without a value keeps an empty text
    try:
        record["raw"] = raw.decode()
    except UnicodeDecodeError:
        record["raw"] = base64.b64encode(raw).decode()
        record["raw_encoding"] = "base64"
    return json.dumps(record, separators=(",", ":")).encode()


def _text_or_none(key: bytes | None) -> str | None:
    if key is None:
        return None
    return key.decode(errors="backslashreplace")
