"""What one inference chunk carries: the windows to forecast going in, the records coming out,
and the ticks that messages hold.

Two decoders read a message's ticks and must agree on every verdict. ``ticks_of`` is the
reference: ``json`` into dicts, then ``records.tick_from_json``. ``columnar_ticks`` is the hot
path: one typed ``msgspec`` decode per message into rows whose fields already have the types a
tick needs, so only what types cannot say (an empty sensor, a timestamp's text, an integer too
large for a float) is left to check. It answers only for messages it can read exactly as the
reference would: anything it cannot type (a missing field, a wrong type, NaN spelled out, a
number out of range, other fields in a message of over ``records.MAX_DEPTH`` brackets, which
may nest too deeply, text that is not UTF-8) comes back as None and takes the reference path,
which says why. ``tests/test_decode_fuzz.py`` holds the two to the same
verdicts over generated messages, valid and broken.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
import numpy as np
from msgspec import UNSET, UnsetType

from .forecasters import FloatArray
from .records import Incoming, Reason, Rejected, decode_json, may_nest_too_deeply
from .scoring import Actuals
from .windows import SensorState

T = TypeVar("T")


@dataclass
class Output:
    """What one chunk produces: forecast records (key, value), and the consume time of each
    forecast's tick (a forecast batch record holds several)."""

    forecasts: list[tuple[bytes, bytes]] = field(default_factory=list)
    consumed_at: list[float] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    retrain_events: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.forecasts or self.dead_letters or self.retrain_events)


@dataclass
class Chunk:
    """Windows ready for one inference, and what the chunk has rejected so far."""

    states: list[SensorState] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    actuals: Actuals = field(default_factory=Actuals)
    rows: list[array[float]] = field(default_factory=list)
    windows: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))  # rows, once launched
    slots: list[int] = field(default_factory=list)
    row_generations: list[int] = field(default_factory=list)
    imputed: list[int] = field(default_factory=list)
    consumed_at: list[float] = field(default_factory=list)
    origins: list[Incoming | None] = field(default_factory=list)  # tick batch, when answered so
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    generation: dict[int, int] = field(default_factory=dict)  # sensor index -> ticks so far
    interval: tuple[FloatArray, FloatArray] | None = None  # lowest and highest quantiles
    shadow: FloatArray | None = None  # the replaced model's forecasts, while a canary runs
    newest_ms: int = 0  # the pipeline's event time when the chunk was launched


def stacked(rows: Sequence[array[float]]) -> FloatArray:
    """Windows of equal length as one (rows, length) float64 array: one copy of their bytes
    (``numpy.array`` of a list of ``array('d')`` reads them value by value, 18 times slower)."""
    if not rows:
        return np.zeros((0, 0))
    return np.frombuffer(b"".join(rows), dtype=np.float64).reshape(len(rows), -1)


def ticks_of(message: Incoming) -> Iterator[tuple[object, int]]:
    """(tick object, index) for a message: itself (index -1) or each element of a batch.

    A message that cannot be read at all comes out as one ``Rejected`` in place of a tick.
    """
    try:
        obj = decode_json(message.value)
    except Rejected as rejected:
        yield rejected, -1
        return
    if not (isinstance(obj, dict) and "ticks" in obj):
        yield obj, -1
    elif not isinstance(obj["ticks"], list):
        yield Rejected(Reason.BAD_TYPE, "ticks must be a JSON array"), -1
    else:
        yield from ((item, index) for index, item in enumerate(obj["ticks"]))


NOT_DECODED = object()  # a batch element the reference decoder has not read


class DeadLetterRaw:
    """What a dead letter keeps of a message's rejected ticks, and where in it each was: the
    message's bytes, or a batch element re-encoded. Where only the columnar decoder read the
    message, the reference decoder reads it here, once however many of its ticks are rejected
    (a redelivered batch is all duplicates)."""

    def __init__(self, message: Incoming) -> None:
        self.message = message
        self._elements: list[object] | None = None

    def __call__(self, index: int, item: object = NOT_DECODED) -> tuple[bytes | None, str]:
        if index < 0:
            return self.message.value, ""
        if item is NOT_DECODED:
            if self._elements is None:
                self._elements = decode_json(self.message.value)["ticks"]
            item = self._elements[index]
        return json.dumps(item).encode(), f"ticks[{index}]: "


class TickRow(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """A batch element typed as a tick needs it (``ts`` still to be parsed)."""

    sensor: str
    ts: str | int
    value: int | float | None
    network: str | None = None


class TickMessage(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """A message: a single tick (its fields) or a tick batch (``ticks``)."""

    sensor: str | UnsetType = UNSET
    ts: str | int | UnsetType = UNSET
    value: int | float | UnsetType | None = UNSET
    network: str | None = None
    ticks: list[TickRow] | UnsetType = UNSET


class _AnyTickRow(TickRow, forbid_unknown_fields=False):
    """A ``TickRow`` that may carry other fields (skipped)."""


class _AnyMessage(TickMessage, forbid_unknown_fields=False):
    """A ``TickMessage`` that may carry other fields (skipped), in its ticks too."""

    ticks: list[_AnyTickRow] | UnsetType = UNSET  # type: ignore[assignment]


_DECODER = msgspec.json.Decoder(TickMessage)
# Fields a tick does not name are skipped by msgspec however deep they nest, and the reference
# refuses JSON nested deeper than ``MAX_DEPTH``: a message that may nest that deep and has
# fields of its own goes to the reference.
_ANY_DECODER = msgspec.json.Decoder(_AnyMessage)


Decoded = tuple[list[TickRow] | list[TickMessage], bool]  # the ticks, and whether a batch


def typed_json(decoder: msgspec.json.Decoder[T], raw: bytes) -> T | None:
    """``decoder``'s reading of ``raw``; None where msgspec refuses it, or where the text is
    not UTF-8: msgspec does not check the UTF-8 of the fields it skips, so text that is not
    ASCII is checked first, as ``json`` would see it."""
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None


def shallow_message(raw: bytes) -> TickMessage | None:
    """``raw`` read by the typed decoder that refuses fields a tick does not name, so that it
    nests three levels at most; None where it refuses it (``typed_json``)."""
    return typed_json(_DECODER, raw)


def columnar_ticks(raw: bytes | None) -> Decoded | None:
    """A message's ticks, typed, and whether it is a batch; or None where only the reference
    decoder can say what it is (``typed_json``)."""
    if raw is None:
        return None
    message = shallow_message(raw)
    if message is None:  # refused: other fields, perhaps, which are read if they are shallow
        if may_nest_too_deeply(raw):
            return None
        message = typed_json(_ANY_DECODER, raw)
        if message is None:
            return None
    if message.ticks is not UNSET:
        return message.ticks, True
    if message.sensor is UNSET or message.ts is UNSET or message.value is UNSET:
        return None
    return [message], False
