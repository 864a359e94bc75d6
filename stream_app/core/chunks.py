"""What one inference chunk carries: the windows to forecast going in, the records coming out."""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

from .forecasters import FloatArray
from .records import Incoming, Reason, Rejected, decode_json
from .scoring import Actuals
from .windows import SensorState


@dataclass
class Output:
    """What one chunk produces: forecasts (key, value) with the consume time of their ticks."""

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
    slots: list[int] = field(default_factory=list)
    row_generations: list[int] = field(default_factory=list)
    imputed: list[int] = field(default_factory=list)
    consumed_at: list[float] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    generation: dict[int, int] = field(default_factory=dict)  # sensor index -> ticks so far
    interval: tuple[FloatArray, FloatArray] | None = None  # lowest and highest quantiles
    shadow: FloatArray | None = None  # the replaced model's forecasts, while a canary runs


def ticks_of(message: Incoming) -> Iterator[tuple[object, bytes, str]]:
    """(tick object, its raw bytes, where) for a message: itself or each element of a batch.

    A message that cannot be read at all comes out as one ``Rejected`` in place of a tick;
    a batch element's raw bytes are empty, to be re-encoded only if it is rejected.
    """
    try:
        obj = decode_json(message.value)
    except Rejected as rejected:
        yield rejected, message.value, ""
        return
    if not (isinstance(obj, dict) and "ticks" in obj):
        yield obj, message.value, ""
    elif not isinstance(obj["ticks"], list):
        yield Rejected(Reason.BAD_TYPE, "ticks must be a JSON array"), message.value, ""
    else:
        for index, item in enumerate(obj["ticks"]):
            yield item, b"", f"ticks[{index}]: "
