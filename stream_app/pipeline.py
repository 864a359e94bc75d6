"""The synchronous core: consumed messages in, forecasts and dead letters out.

``Pipeline.step(messages)`` validates each tick, places it in its sensor's window, scores earlier
forecasts against it, and gathers the windows that became ready. Every ``batch_size`` ready
windows it runs one inference and yields an ``Output`` for the shell to produce, so that the
first forecasts of a large micro-batch leave before the last ticks are read. A sensor never has
two windows in one inference: a second tick for it flushes the chunk first, which keeps scoring
exact (a forecast is pending before the next actual of its sensor is read).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .forecasters import Forecaster, WindowBatch
from .metrics import Metrics
from .records import (
    Incoming,
    Reason,
    Rejected,
    Tick,
    TimestampParser,
    decode_json,
    encode_dead_letter,
    encode_forecast,
    format_ts,
    tick_from_json,
)
from .scoring import Actuals, PendingForecasts, RollingMAE, ScoreSink
from .windows import Impute, RollingWindow

log = logging.getLogger(__name__)


@dataclass
class Output:
    """What one chunk produces: forecasts (key, value) with the consume time of their ticks."""

    forecasts: list[tuple[bytes, bytes]] = field(default_factory=list)
    consumed_at: list[float] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.forecasts or self.dead_letters)


class SensorState:
    """Everything the worker keeps for one sensor."""

    __slots__ = ("index", "key", "quoted", "window")

    def __init__(self, sensor: str, index: int, window: RollingWindow) -> None:
        self.index = index
        self.key = sensor.encode()
        self.quoted = json.dumps(sensor)
        self.window = window


@dataclass
class _Chunk:
    """Windows ready for one inference, and what the chunk has rejected so far."""

    states: list[SensorState] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    actuals: Actuals = field(default_factory=Actuals)
    rows: list[list[float]] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    consumed_at: list[float] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    members: set[str] = field(default_factory=set)


class Pipeline:
    """Ticks to forecasts for one network's sensors (the pure part of a worker)."""

    def __init__(
        self,
        forecaster: Forecaster,
        *,
        step_s: int,
        max_gap_steps: int = 3,
        impute: Impute = Impute.LINEAR,
        network: str = "",
        future_tolerance_s: float = 86_400.0,
        batch_size: int = 256,
        mae_window: int = 2000,
        sinks: Sequence[ScoreSink] = (),
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        stopwatch: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.forecaster = forecaster
        self.step_s = step_s
        self.max_gap_steps = max_gap_steps
        self.impute = impute
        self.network = network
        self.future_tolerance_s = future_tolerance_s
        self.batch_size = batch_size
        self.rolling_mae = RollingMAE(forecaster.horizon, mae_window)
        self.sinks: tuple[ScoreSink, ...] = (self.rolling_mae, *sinks)
        self.metrics = metrics
        self.clock = clock
        self.stopwatch = stopwatch
        self.pending = PendingForecasts(forecaster.horizon)
        self.sensor_ids: list[str] = []
        self._states: dict[str, SensorState] = {}
        self._parse_ts = TimestampParser()
        self._step_ms = step_s * 1000
        self._ts_text: dict[int, str] = {}
        self._newest_ms = 0
        if metrics is not None:
            metrics.set_model(forecaster.model_id, forecaster.provider)

    @property
    def sensors(self) -> int:
        return len(self._states)

    def step(self, messages: Sequence[Incoming]) -> Iterator[Output]:
        """Process one micro-batch; yield an Output per inference chunk (and one for the rest)."""
        chunk = _Chunk()
        ticks = imputed = 0
        for message in messages:
            consumed_at = self.stopwatch()
            for item, raw, where in self._ticks_of(message):
                ticks += 1
                try:
                    if isinstance(item, Rejected):
                        raise item
                    tick = tick_from_json(item, self._parse_ts)
                    state = self._state_for(tick)
                    if tick.sensor in chunk.members:
                        yield self._flush(chunk)
                        chunk = _Chunk()
                    imputed += self._place(tick, state, consumed_at, chunk)
                except Rejected as rejected:
                    raw = raw or json.dumps(item).encode()
                    self._dead_letter(chunk, message, rejected, raw, where)
                if len(chunk.rows) >= self.batch_size:
                    yield self._flush(chunk)
                    chunk = _Chunk()
        self._count(ticks, imputed)
        last = self._flush(chunk)
        if last:
            yield last

    @staticmethod
    def _ticks_of(message: Incoming) -> Iterator[tuple[object, bytes, str]]:
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

    def _state_for(self, tick: Tick) -> SensorState:
        if self.network and tick.network is not None and tick.network != self.network:
            raise Rejected(
                Reason.UNKNOWN_NETWORK,
                f"network {tick.network!r} is not served here (serving {self.network!r})",
            )
        state = self._states.get(tick.sensor)
        if state is None:
            window = RollingWindow(self.forecaster.window, self.max_gap_steps, self.impute)
            state = SensorState(tick.sensor, len(self.sensor_ids), window)
            self._states[tick.sensor] = state
            self.sensor_ids.append(tick.sensor)
        return state

    def _place(self, tick: Tick, state: SensorState, consumed_at: float, chunk: _Chunk) -> int:
        if tick.ts_ms > (self.clock() + self.future_tolerance_s) * 1000:
            raise Rejected(Reason.BAD_TIMESTAMP, f"ts {format_ts(tick.ts_ms)} is in the future")
        slot = (tick.ts_ms + self._step_ms // 2) // self._step_ms
        window = state.window
        filled = window.add(slot, tick.value)
        if tick.value is None:
            return filled
        chunk.actuals.add(state.index, slot, tick.value)
        if slot == window.newest:
            self._newest_ms = max(self._newest_ms, tick.ts_ms)
            if window.is_full:
                chunk.states.append(state)
                chunk.sensors.append(tick.sensor)
                chunk.rows.append(window.values[:])
                chunk.slots.append(slot)
                chunk.consumed_at.append(consumed_at)
                chunk.members.add(tick.sensor)
        return filled

    def _dead_letter(
        self, chunk: _Chunk, message: Incoming, rejected: Rejected, raw: bytes, where: str
    ) -> None:
        record = encode_dead_letter(message, rejected.reason, where + rejected.detail, raw)
        chunk.dead_letters.append((message.key, record))
        if self.metrics is not None:
            self.metrics.rejected.labels(reason=str(rejected.reason)).inc()

    def _flush(self, chunk: _Chunk) -> Output:
        self._score(chunk.actuals)
        output = Output(dead_letters=chunk.dead_letters)
        if chunk.rows:
            self._forecast(chunk, output)
        return output

    def _forecast(self, chunk: _Chunk, output: Output) -> None:
        step_ms = self._step_ms
        slots = np.array(chunk.slots, dtype=np.int64)
        batch = WindowBatch(np.array(chunk.rows), slots * self.step_s, tuple(chunk.sensors))
        started = self.stopwatch()
        values = self.forecaster.forecast(batch)
        self._observe_inference(self.stopwatch() - started, len(batch))
        emitted_at = format_ts(int(self.clock() * 1000))
        model, step_s = self.forecaster.model_id, self.step_s
        indices = np.array([state.index for state in chunk.states], dtype=np.int64)
        self.pending.add(indices, slots, values)
        for state, slot, row in zip(chunk.states, chunk.slots, values.tolist(), strict=True):
            ts = self._ts_text.get(slot) or self._remember_ts(slot, slot * step_ms)
            record = encode_forecast(
                state.quoted, ts, step_s, row, model, emitted_at, state.window.imputed
            )
            output.forecasts.append((state.key, record))
        output.consumed_at = chunk.consumed_at

    def _remember_ts(self, slot: int, ts_ms: int) -> str:
        if len(self._ts_text) > 4096:
            self._ts_text.clear()
        text = self._ts_text[slot] = format_ts(ts_ms)
        return text

    def _score(self, actuals: Actuals) -> None:
        if not actuals:
            return
        scores = self.pending.score(*actuals.arrays())
        for sink in self.sinks:
            sink.update(scores)
        if self.metrics is not None:
            self.metrics.set_rolling_mae(self.rolling_mae.mae.tolist())

    def _observe_inference(self, seconds: float, windows: int) -> None:
        if self.metrics is not None:
            self.metrics.inference_seconds.observe(seconds)
            self.metrics.batch_size.observe(windows)
            self.metrics.forecasts.inc(windows)

    def _count(self, ticks: int, imputed: int) -> None:
        if self.metrics is None:
            return
        self.metrics.ticks.inc(ticks)
        self.metrics.imputed.inc(imputed)
        self.metrics.sensors_active.set(len(self._states))
        if self._newest_ms:
            self.metrics.event_lag_seconds.set(self.clock() - self._newest_ms / 1000)
