"""The synchronous core: consumed messages in, forecasts and dead letters out.

``Pipeline.step(messages)`` validates each tick, places it in its sensor's window, and gathers
the windows that became ready. Every ``batch_size`` ready windows it runs one inference and
yields an ``Output`` for the shell to produce, so that the first forecasts of a large micro-batch
leave before the last ticks are read.

Scoring stays exactly sequential per sensor although a chunk is inferred at once: each tick gets
a generation (its sensor's n-th tick in the chunk), and after inference the chunk is settled
generation by generation: score that generation's actuals against what is pending, then add that
generation's forecasts. A sensor's second tick in a chunk is thus scored against its first
tick's forecast, as if the ticks had been processed one by one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from array import array
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson

from .canary import Canary, CanaryVerdict, judged_steps, median_forecast
from .card import UNIVERSAL
from .chunks import (
    NOT_DECODED,
    Chunk,
    DeadLetterRaw,
    Decoded,
    Output,
    TickMessage,
    TickRow,
    columnar_ticks,
    stacked,
    ticks_of,
)
from .contexts import NeighbourTable, local_seconds
from .feedback import ErrorFeedback, level_shift
from .forecasters import FloatArray, Forecaster, IntArray, QuantileForecaster, WindowBatch
from .metrics import Metrics
from .readings import ReadingSink
from .records import (
    ForecastText,
    Incoming,
    Reason,
    Rejected,
    Tick,
    TimestampParser,
    encode_dead_letter,
    forecast_batch,
    format_ts,
    tick_from_json,
    tick_from_row,
)
from .retrain_events import ROLLBACK, RetrainEvent, event_id
from .scoring import NEVER, IntervalCalibration, PendingForecasts, RollingMAE, Scores, ScoreSink
from .windows import Impute, RollingWindow, Sensors, SensorState

log = logging.getLogger(__name__)

# Generations with a new reading in which a drifting sensor's step is looked for: the one whose
# actual fired its monitor, often the step's first reading, and two more (``level_shift`` needs
# two readings after a step to tell it from a spike).
ANCHOR_TRIES = 3
# Readings in a row back at the level before a step that undo its move (``_check_anchor``).
RETURNS = 2
# Forecast pairs, from the moved and from the unmoved history, scored before a move is judged:
# the pairs of its first 8 steps (1 + 2 + ... + 8 horizons).
JUDGE_PAIRS = 36

_BIG = 2**1000  # an integer reading smaller than this in magnitude is a finite float
BoolArray = npt.NDArray[np.bool_]


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
        sensor_ttl_s: float = 6 * 3600.0,
        sinks: Sequence[ScoreSink] = (),
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        stopwatch: Callable[[], float] = time.perf_counter,
        neighbours: NeighbourTable | None = None,
        canary_s: float = 0.0,
        canary_margin: float = 0.0,
        canary_min_pairs: int = 100,
        canary_mode: str = "both",
        columnar: bool = True,
        forecast_batch: bool = False,
        interval_rate: float = 0.05,
        zone: tzinfo | None = None,
    ) -> None:
        at_step = getattr(forecaster, "at_step", None)
        self.forecaster: Forecaster = at_step(step_s) if at_step is not None else forecaster
        self.neighbours = neighbours
        self.zone = zone  # the network's clock: a model's time of day and weekday follow it
        self.step_s = step_s
        self.max_gap_steps = max_gap_steps
        self.impute = impute
        self.network = network
        self.future_tolerance_s = future_tolerance_s
        self.batch_size = batch_size
        self.rolling_mae = RollingMAE(self.forecaster.horizon, mae_window)
        self._unpublished = False  # scores the gauges do not show yet: _publish_scores
        self.sinks: tuple[ScoreSink, ...] = tuple(sinks)  # the watchers: drift monitors
        self.metrics = metrics
        self.clock = clock
        self.stopwatch = stopwatch
        self.sensor_ttl_s = sensor_ttl_s
        self.pending = PendingForecasts(forecaster.horizon)
        self.calibration = _calibration(forecaster, interval_rate)
        self._sensors = Sensors(lambda: RollingWindow(forecaster.window, max_gap_steps, impute))
        self._swept_ms = 0
        self._parse_ts = TimestampParser()
        self.columnar = columnar  # False: every message through the reference decoder
        self.forecast_batch = forecast_batch  # a tick batch answered by one forecast batch
        self._step_ms = step_s * 1000
        self._ts_json: dict[int, bytes] = {}  # a slot's time as a JSON string
        self._newest_ms = 0
        self._newest_slot: dict[int, int] = {}  # per partition: partitions are read unevenly
        self._restoring = False
        self._retrain_events: list[tuple[bytes, bytes]] = []
        self.feedback: ErrorFeedback | None = None
        self.reanchor = False  # move a drifting sensor's history to its new level (drifted)
        self._anchoring: dict[int, tuple[int, int]] = {}  # row: (slot last tried, tries left)
        self._anchored: dict[int, _Anchor] = {}  # rows whose history was moved, to undo
        self._scored: tuple[IntArray, IntArray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.readings: ReadingSink | None = None
        self.canary_s = canary_s  # 0: no canary after a swap
        self.canary_margin = canary_margin
        self.canary_min_pairs = canary_min_pairs
        # before: a trial first; after: serve, then compare; both: a trial, then compare again
        self.canary_mode = canary_mode
        self.canary: Canary | None = None
        self.verdicts: list[CanaryVerdict] = []  # every canary's outcome, newest last
        self._inference: ThreadPoolExecutor | None = None  # made on the first chunk
        self._needs_full, self._warmup = readiness(forecaster)
        if metrics is not None:
            metrics.set_model(forecaster.model_id, forecaster.provider, network)

    @property
    def sensors(self) -> int:
        """Sensors with state here."""
        return len(self._sensors)

    @property
    def sensor_ids(self) -> list[str]:
        """The sensors with state here, in order of arrival."""
        return [state.sensor for state in self._sensors]

    def restore(self, messages: Sequence[Incoming]) -> None:
        """Rebuild state from ticks already processed elsewhere: nothing is output or counted."""
        metrics, self.metrics = self.metrics, None
        self._restoring = True
        try:
            for _ in self.step(messages):
                pass
        finally:
            self.metrics = metrics
            self._restoring = False

    def swap(
        self,
        forecaster: Forecaster,
        *,
        canary: bool = True,
        replacing: str = "",
        watch: bool = False,
    ) -> None:
        """Serve ``forecaster`` from the next chunk on (call between micro-batches).

        The windows stay, so it must read the same window; the errors' monitors start over.
        With ``canary_s`` set (and ``canary``: not for a rollback), the two are compared on the
        same targets for that long (``Canary``): with ``canary_mode`` "after", the replaced model
        keeps forecasting in the shadow, and if the new one is worse the pipeline swaps back;
        with "before", the new one forecasts in the shadow first (a trial) and is swapped in
        only if it did no worse; with "both", a new model that won its trial is watched as
        "after" watches (``watch``: the swap that ends a trial), because the hours after a
        trial may differ from its own. Either way a worse new model gives a ``rollback`` event. A
        model already served is not swapped in again; asked for as the rollback of the model on
        trial (``replacing``: another worker rejected it), it ends that trial.
        """
        old = self.forecaster
        if forecaster.model_id == old.model_id:
            running = self.canary
            if running is not None and running.trial and replacing and running.new == replacing:
                self.canary = None
            return
        at_step = getattr(forecaster, "at_step", None)
        if at_step is not None:  # a universal model serves this network's grid
            forecaster = at_step(self.step_s)
        if (forecaster.window, forecaster.horizon) != (old.window, old.horizon):
            raise ValueError(
                f"{forecaster.model_id} has window {forecaster.window}, horizon "
                f"{forecaster.horizon}; the windows held are for {old.model_id}'s "
                f"{old.window}, {old.horizon}: restart the workers to change them"
            )
        compare = canary and self.canary_s > 0
        trial = compare and self.canary_mode in ("before", "both") and not watch
        self.canary = None
        if compare:
            self.canary = Canary(
                forecaster if trial else old, forecaster.model_id, old.model_id,
                self.newest_ts_s, forecaster.horizon, trial=trial, duration_s=self.canary_s,
                margin=self.canary_margin, min_pairs=self.canary_min_pairs,
                judged=judged_steps(self.step_s, forecaster.horizon),
            )  # fmt: skip
        if trial:
            log.info("trial of %s against %s: it forecasts in the shadow first",
                     forecaster.model_id, old.model_id)  # fmt: skip
            return
        self.forecaster = forecaster
        self._needs_full, self._warmup = readiness(forecaster)
        self.rolling_mae.reset()
        self.calibration = _calibration(forecaster, self.calibration.rate)  # starts at 1
        for sink in self.sinks:
            sink.reset()
        if self.feedback is not None:
            self.feedback.reset()
        if self.metrics is not None:
            self.metrics.set_model(forecaster.model_id, forecaster.provider, self.network)
            self.metrics.model_swaps.inc()

    def correct_with(self, feedback: ErrorFeedback) -> None:
        """Mix the last reading into the forecasts of the sensors ``feedback`` corrects; it
        learns how much from each generation's scores (``_settle``), in restores too."""
        self.feedback = feedback

    def drifted(self, row: int) -> None:
        """A sensor's drift monitor fired (live or in a restore): start its error feedback
        and, where ``reanchor``, move its history to a level it has stepped to
        (``feedback.level_shift``). Its next forecasts but one read the moved context: the
        next chunk may be in inference already."""
        if self.feedback is not None:
            self.feedback.activate(row)
        if self.reanchor:
            self._anchoring[row] = (NEVER, ANCHOR_TRIES)
            self._reanchor(row)

    def _reanchor(self, row: int) -> None:
        """Look for the step once more, if the row has a reading in this generation."""
        window = self._sensors.window_of(self._sensors.sensor_at(row))
        tried, left = self._anchoring[row]
        slot = self._scored_slot(row)
        if window is None or slot is None or slot == tried:
            return
        n = min(self.forecaster.horizon - 1, window.length)
        values = _up_to(window, slot)  # a chunk's later readings may be placed already
        recent, history = values[-n:], values[:-n]
        slots = np.arange(slot - n + 1, slot + 1, dtype=np.int64)
        found = None
        if len(recent) == n:
            found = level_shift(recent, self.pending.made(row, slots - 1), history)
        if found is None:
            if left > 1:
                self._anchoring[row] = (slot, left - 1)
            else:
                del self._anchoring[row]
            return
        del self._anchoring[row]
        start, jump = found
        since = int(slots[start])
        moved = window.shift_before(since, jump)
        self._anchored[row] = _Anchor(since, jump, slot)
        if self.metrics is not None and not self._restoring:
            self.metrics.reanchored.inc()
        log.info(
            "%s stepped by %+.4g from %s: its %d readings before moved to the new level",
            self._sensors.sensor_at(row), jump, format_ts(since * self._step_ms), moved,
        )  # fmt: skip

    def _check_anchor(self, row: int) -> bool:
        """Judge a row's move, then watch for a return; True where it still needs a forecast
        from each history (``_shadow_forecasts``).

        Judged: once ``JUDGE_PAIRS`` of its actuals have scored forecasts made from the moved
        history and from the history as it came, a move whose forecasts did worse is undone.
        Then, undone once its readings come back to the level before the step: the newest
        nearer the moved context's forecast less the jump than the forecast itself, ``RETURNS``
        times running. Forgotten once the step's start has left the window."""
        anchor = self._anchored[row]
        window = self._sensors.window_of(self._sensors.sensor_at(row))
        slot = self._scored_slot(row)
        if window is None or window.newest is None:
            del self._anchored[row]
            return False
        if window.newest - window.length + 1 >= anchor.since:
            del self._anchored[row]  # nothing from before the step is left
            return False
        if slot is None or slot == anchor.checked:
            return False
        anchor.checked = slot
        reading = _value_at(window, slot)
        if not anchor.judged:
            anchor.score(slot, reading, self.forecaster.horizon)
            if anchor.pairs >= JUDGE_PAIRS:
                anchor.judged = True
                if anchor.moved_error > anchor.kept_error:
                    self._undo(row, window, slot, "did worse than the history as it came")
                    return False
                anchor.shadow.clear()  # kept: no more forecasts from the history as it came
        forecast = float(self.pending.made(row, np.array([slot - 1]))[0, 0])
        if math.isfinite(reading) and math.isfinite(forecast):
            back = abs(reading - (forecast - anchor.jump)) < abs(reading - forecast)
            anchor.returns = anchor.returns + 1 if back else 0
            if anchor.returns >= RETURNS:
                self._undo(row, window, slot, "came back")
                return False
        return not anchor.judged

    def _undo(self, row: int, window: RollingWindow, slot: int, why: str) -> None:
        anchor = self._anchored.pop(row)
        window.shift_before(anchor.since, -anchor.jump)
        log.info(
            "%s %s after its step of %+.4g (MAE %.4g moved, %.4g as it came, %d forecasts) at "
            "%s: its history moved back",
            self._sensors.sensor_at(row), why, anchor.jump,
            anchor.moved_error / max(anchor.pairs, 1), anchor.kept_error / max(anchor.pairs, 1),
            anchor.pairs, format_ts(slot * self._step_ms),
        )  # fmt: skip

    def _shadow_forecasts(self, rows: list[int]) -> None:
        """Forecast each row from its moved history and from the history as it came (both
        without neighbours, so that the two differ by the move alone), in one batch."""
        length = self.forecaster.window
        moved, kept, names, slots, asked = [], [], [], [], []
        for row in rows:
            anchor, name = self._anchored[row], self._sensors.sensor_at(row)
            window = self._sensors.window_of(name)
            slot = self._scored_slot(row)
            if window is None or slot is None:
                continue
            context = np.full(length, np.nan)
            values = _up_to(window, slot)[-length:]
            context[length - len(values) :] = values
            before = context.copy()
            before[: max(0, length - (slot - anchor.since) - 1)] -= anchor.jump
            moved.append(context)
            kept.append(before)
            names.append(name)
            slots.append(slot)
            asked.append(row)
        if not names:
            return
        times = local_seconds(np.array(slots * 2, dtype=np.int64) * self.step_s, self.zone)
        batch = WindowBatch(np.stack(moved + kept), times, tuple(names * 2))
        out = self.forecaster.forecast(batch)
        for i, (row, slot) in enumerate(zip(asked, slots, strict=True)):
            self._anchored[row].shadow[slot] = (out[i], out[len(names) + i])

    def _scored_slot(self, row: int) -> int | None:
        """The slot of the row's actual in the generation being watched, if it has one."""
        rows, slots = self._scored
        at = np.flatnonzero(rows == row)
        return int(slots[at[-1]]) if len(at) else None

    def watch_readings(self, sink: ReadingSink) -> None:
        """Hand every real reading to ``sink`` (the readings monitors), in arrival order; the
        forecasts of a sensor it finds stuck carry ``"quarantined": "stuck"``."""
        self.readings = sink

    def watch(self, sink: ScoreSink) -> None:
        """Hand every later score to ``sink`` as well (a drift monitor)."""
        self.sinks = (*self.sinks, sink)

    def retrain(self, event: RetrainEvent) -> None:
        """Queue a retrain event; it leaves with the next output."""
        self._retrain_events.append((event.key, event.encode()))

    def sensor_at(self, row: int) -> str:
        """The sensor id of a row in the scores."""
        return self._sensors.sensor_at(row)

    @property
    def newest_ts_s(self) -> float:
        """Event time: the newest reading's time, epoch seconds."""
        return self._newest_ms / 1000

    @property
    def memory_steps(self) -> int:
        """Grid steps of event time whose ticks determine a sensor's window, pending
        forecasts and imputation (the drift monitors need more: ``sink_memory_steps``)."""
        return self.forecaster.window + self.forecaster.horizon + self.max_gap_steps

    @property
    def history_span_s(self) -> int:
        """Event time whose ticks determine a partition's state, with a margin of as much again
        for the windows, plus the drift monitors' warm-up (``kafka.restoring``)."""
        return (2 * self.memory_steps + self.sink_memory_steps) * self.step_s

    @property
    def sink_memory_steps(self) -> int:
        """Grid steps of scores the sinks learn from before they are warm (drift monitors)."""
        return max((getattr(sink, "memory_steps", 0) for sink in self.sinks), default=0)

    def forget(self, partitions: Collection[int]) -> int:
        """Drop the state of sensors last seen on ``partitions``; return how many."""
        rows = self._sensors.drop(lambda state: state.partition in partitions)
        self._release(rows)
        for partition in partitions:
            self._newest_slot.pop(partition, None)
        return len(rows)

    def expire(self) -> int:
        """Drop sensors silent for ``sensor_ttl_s`` of their partition's event time."""
        ttl_slots = self.sensor_ttl_s // self.step_s
        newest = self._newest_slot
        rows = self._sensors.drop(
            lambda state: (
                state.window.newest is None
                or state.window.newest < newest.get(state.partition, 0) - ttl_slots
            )
        )
        self._release(rows)
        self._swept_ms = self._newest_ms
        return len(rows)

    def _release(self, rows: list[int]) -> None:
        self.pending.clear(rows)
        for row in rows:
            self._anchoring.pop(row, None)
            self._anchored.pop(row, None)
        for sink in self.sinks:
            sink.forget(rows)
        if self.feedback is not None:
            self.feedback.forget(rows)
        if self.readings is not None:
            self.readings.forget(rows)
        if self.canary is not None:
            self.canary.forget(rows)

    def step(self, messages: Sequence[Incoming]) -> Iterator[Output]:
        """Process one micro-batch; yield an Output per inference chunk (and one for the rest)."""
        chunk = Chunk()
        running: tuple[Chunk, Future[Inferred] | None] | None = None  # inferring meanwhile
        ticks = imputed = 0
        for message in messages:
            consumed_at = self.stopwatch()
            read = columnar_ticks(message.value) if self.columnar else None
            raw_of: DeadLetterRaw | None = None  # made on the message's first rejection
            gateway = self._one_step(read)
            if gateway is not None:  # a gateway's tick batch: checked once, placed in a row
                ts_ms, rows = gateway
                ticks += len(rows)
                origin = message if self.forecast_batch else None
                full_at = self.batch_size if self.neighbours is None else None
                index = 0
                while index < len(rows):
                    index, filled, rejected = self._place_step(
                        rows, index, ts_ms, message.partition, consumed_at, chunk, origin, full_at
                    )
                    imputed += filled
                    if rejected is not None:  # late or duplicate: the tick at index
                        raw_of = raw_of or DeadLetterRaw(message)
                        raw, where = raw_of(index)
                        self._dead_letter(chunk, message, rejected, raw, where)
                        index += 1
                    if len(chunk.rows) >= self.batch_size and self.neighbours is None:
                        done, running = self._rotate(chunk, running)
                        yield from done
                        chunk = Chunk()
            elif (
                read is not None
                and not read[1]
                and (single := self._place_single(read[0][0], message, consumed_at, chunk))
                is not None
            ):  # a plain single tick, placed; anything else goes tick by tick below
                ticks += 1
                imputed += single
            else:
                for tick, index, item in self._ticks_in(message, read):
                    ticks += 1
                    try:
                        if isinstance(tick, Rejected):
                            raise tick
                        state = self._state_for(tick, message.partition)
                        origin = message if self.forecast_batch and index >= 0 else None
                        imputed += self._place(
                            tick.ts_ms, tick.value, state, consumed_at, chunk, origin
                        )
                    except Rejected as rejected:
                        raw_of = raw_of or DeadLetterRaw(message)
                        raw, where = raw_of(index, item)
                        self._dead_letter(chunk, message, rejected, raw, where)
                    if len(chunk.rows) >= self.batch_size and self.neighbours is None:
                        done, running = self._rotate(chunk, running)
                        yield from done
                        chunk = Chunk()
            # a message is placed before its chunk is inferred: a single tick's, and with
            # neighbours any message's (a whole step); without, a batch's rotated as it filled
            if len(chunk.rows) >= self.batch_size:
                done, running = self._rotate(chunk, running)
                yield from done
                chunk = Chunk()
        if running is not None:
            yield self._finish(*running)
        self._count(ticks, imputed)
        last = self._finish(chunk, self._launch(chunk))
        self._publish_scores()
        if last:
            yield last

    def _one_step(self, read: Decoded | None) -> tuple[int, list[TickRow]] | None:
        """A tick batch whose ticks can only be placed (or found late or duplicate): one
        timestamp, not in the future, distinct sensors, finite numbers, no other network.
        Its time and rows; None for anything else, which goes tick by tick."""
        if read is None or not read[1] or not read[0]:
            return None
        rows = cast(list[TickRow], read[0])
        first, network, seen = rows[0].ts, self.network, set()
        for row in rows:
            value = row.value
            if (
                row.ts != first
                or not (type(value) is float or (type(value) is int and -_BIG < value < _BIG))
                or not row.sensor
                or row.sensor in seen
                or (network and row.network is not None and row.network != network)
            ):
                return None
            seen.add(row.sensor)
        try:
            ts_ms = self._parse_ts.parse(first)
        except Rejected:
            return None
        return None if self._in_the_future(ts_ms) else (ts_ms, rows)

    def _ticks_in(
        self, message: Incoming, read: Decoded | None
    ) -> Iterator[tuple[Tick | Rejected, int, object]]:
        """(tick or why not, its index in a batch or -1, the reference decoder's object for it)
        per tick of a message: as the columnar decoder ``read`` it, or, where it could not,
        through the reference decoder (``chunks``)."""
        parse = self._parse_ts
        if read is not None:
            rows, batched = read
            for index, row in enumerate(rows):
                try:
                    yield tick_from_row(row, parse), index if batched else -1, NOT_DECODED
                except Rejected as rejected:
                    yield rejected, index if batched else -1, NOT_DECODED
            return
        for item, index in ticks_of(message):
            if isinstance(item, Rejected):
                yield item, index, item
                continue
            try:
                yield tick_from_json(item, parse), index, item
            except Rejected as rejected:
                yield rejected, index, item

    def _in_the_future(self, ts_ms: int) -> bool:
        """Stamped further ahead of the wall clock than ``future_tolerance_s``."""
        return ts_ms > (self.clock() + self.future_tolerance_s) * 1000

    def _state_for(self, tick: Tick, partition: int) -> SensorState:
        """The tick's sensor, once the tick is known to belong here (a rejected tick adds none)."""
        if self._in_the_future(tick.ts_ms):
            raise Rejected(Reason.BAD_TIMESTAMP, f"ts {format_ts(tick.ts_ms)} is in the future")
        if self.network and tick.network is not None and tick.network != self.network:
            raise Rejected(
                Reason.UNKNOWN_NETWORK,
                f"network {tick.network!r} is not served here (serving {self.network!r})",
            )
        return self._sensors.get(tick.sensor, partition)

    def _place(
        self,
        ts_ms: int,
        value: float | None,
        state: SensorState,
        consumed_at: float,
        chunk: Chunk,
        origin: Incoming | None = None,
    ) -> int:
        slot = (ts_ms + self._step_ms // 2) // self._step_ms
        window = state.window
        filled = window.add(slot, value)
        if value is None:
            return filled
        generation = chunk.generation.get(state.index, 0)
        chunk.generation[state.index] = generation + 1
        chunk.actuals.add(state.index, slot, value, generation)
        if slot == window.newest:
            self._note_newest(ts_ms, slot, state.partition)
            if window.is_full if self._needs_full else window.observed >= self._warmup:
                self._take(chunk, state, slot, generation, consumed_at, origin)
        return filled

    def _place_single(
        self, row: TickRow | TickMessage, message: Incoming, consumed_at: float, chunk: Chunk
    ) -> int | None:
        """``_place`` for a single-tick message whose tick can only be placed: a sensor, a
        time not in the future, a number (msgspec types only finite ones), this network, and
        the slot after its window's newest (a sensor that reports every step). Returns None,
        having changed nothing, for any other tick, which the tick-by-tick path then places
        or rejects as the reference decoder says; else how many values it let us impute."""
        value, network = row.value, self.network
        if (
            not row.sensor
            or not (type(value) is float or (type(value) is int and -_BIG < value < _BIG))
            or (network and row.network is not None and row.network != network)
        ):
            return None
        try:
            ts_ms = self._parse_ts.parse(row.ts)
        except Rejected:
            return None
        if ts_ms > (self.clock() + self.future_tolerance_s) * 1000:
            return None
        slot = (ts_ms + self._step_ms // 2) // self._step_ms
        state = self._sensors.get(row.sensor, message.partition)
        window = state.window
        if window.newest is None or slot != window.newest + 1:
            return None  # a first reading, a gap, a late or a duplicate one
        return self._place(ts_ms, float(value), state, consumed_at, chunk)

    def _place_step(
        self,
        rows: list[TickRow],
        start: int,
        ts_ms: int,
        partition: int,
        consumed_at: float,
        chunk: Chunk,
        origin: Incoming | None,
        full_at: int | None,
    ) -> tuple[int, int, Rejected | None]:
        """``_place`` for a gateway's ticks (one time, distinct sensors) from ``start`` on, with
        what they share done once: stops after the tick that brings the chunk to ``full_at``
        rows, or at a late or duplicate tick. Returns where it stopped, how many values it
        imputed, and the rejection if it stopped at one (that tick is not placed)."""
        slot = (ts_ms + self._step_ms // 2) // self._step_ms
        get, generation_of = self._sensors.get, chunk.generation
        needs_full, warmup, noted = self._needs_full, self._warmup, False
        room = len(rows) if full_at is None else full_at - len(chunk.rows)
        placed: list[int] = []  # sensor rows, values and generations of the placed ticks
        values: list[float] = []
        generations: list[int] = []
        taken: list[SensorState] = []  # the windows that became ready, copied as they are now
        windows: list[array[float]] = []
        taken_in: list[int] = []
        imputed_in: list[int] = []
        imputed, stop, rejected = 0, len(rows), None
        for index in range(start, len(rows)):
            row = rows[index]
            value = float(cast(float, row.value))
            state = get(row.sensor, partition)
            window = state.window
            try:
                imputed += window.add(slot, value)
            except Rejected as late_or_duplicate:
                stop, rejected = index, late_or_duplicate
                break
            sensor_row = state.index
            generation = generation_of.get(sensor_row, 0)
            generation_of[sensor_row] = generation + 1
            placed.append(sensor_row)
            values.append(value)
            generations.append(generation)
            if slot != window.newest:
                continue
            if not noted:  # the same time and partition for every tick of the step
                self._note_newest(ts_ms, slot, partition)
                noted = True
            if window.is_full if needs_full else window.observed >= warmup:
                taken.append(state)
                windows.append(window.buffer[:])
                taken_in.append(generation)
                imputed_in.append(window.imputed)
                if len(taken) >= room:
                    stop = index + 1
                    break
        chunk.actuals.extend(placed, slot, values, generations)
        if taken:
            chunk.states += taken
            chunk.sensors += [state.sensor for state in taken]
            chunk.rows += windows
            chunk.slots += [slot] * len(taken)
            chunk.row_generations += taken_in
            chunk.imputed += imputed_in
            chunk.consumed_at += [consumed_at] * len(taken)
            chunk.origins += [origin] * len(taken)
        return stop, imputed, rejected

    def _note_newest(self, ts_ms: int, slot: int, partition: int) -> None:
        """A reading at the newest slot of its window: the event time and the partition's
        newest slot move on to it."""
        self._newest_ms = max(self._newest_ms, ts_ms)
        if slot > self._newest_slot.get(partition, slot - 1):
            self._newest_slot[partition] = slot

    @staticmethod
    def _take(
        chunk: Chunk,
        state: SensorState,
        slot: int,
        generation: int,
        consumed_at: float,
        origin: Incoming | None,
    ) -> None:
        """The sensor's window, as it is now, becomes one of the chunk's rows to infer."""
        window = state.window
        chunk.states.append(state)
        chunk.sensors.append(state.sensor)
        chunk.rows.append(window.buffer[:])
        chunk.slots.append(slot)
        chunk.row_generations.append(generation)
        chunk.imputed.append(window.imputed)
        chunk.consumed_at.append(consumed_at)
        chunk.origins.append(origin)

    def _dead_letter(
        self, chunk: Chunk, message: Incoming, rejected: Rejected, raw: bytes | None, where: str
    ) -> None:
        record = encode_dead_letter(message, rejected.reason, where + rejected.detail, raw)
        chunk.dead_letters.append((message.key, record))
        if self.metrics is not None:
            self.metrics.rejected.labels(reason=str(rejected.reason)).inc()

    def _rotate(
        self, chunk: Chunk, running: tuple[Chunk, Future[Inferred] | None] | None
    ) -> tuple[list[Output], tuple[Chunk, Future[Inferred] | None]]:
        """Start inferring ``chunk``; finish the one inferring meanwhile (see ``_launch``)."""
        if running is not None and self.canary is not None:  # its verdict may swap back first
            return [self._finish(*running)], (chunk, self._launch(chunk))
        launched = self._launch(chunk)
        return ([self._finish(*running)] if running is not None else []), (chunk, launched)

    def _launch(self, chunk: Chunk) -> Future[Inferred] | None:
        """Start the chunk's inference on the pipeline's inference thread, so that the next
        chunk's ticks are placed and the previous one settled meanwhile (onnxruntime releases
        the GIL). What it reads is fixed here: the windows (copied when placed), the
        neighbours' context and the models; the chunk is settled in order by ``_finish``."""
        chunk.newest_ms = self._newest_ms
        if not chunk.rows:
            return None
        slots = np.array(chunk.slots, dtype=np.int64)
        chunk.windows = stacked(chunk.rows)
        batch = WindowBatch(
            chunk.windows, local_seconds(slots * self.step_s, self.zone), tuple(chunk.sensors),
            self._neighbour_input(chunk),
        )  # fmt: skip
        shadow = None
        if self.canary is not None and self.canary.shadow is not None and not self._restoring:
            shadow = self.canary.shadow
        prepare = getattr(self.forecaster, "prepare", None)  # inputs built here (OnnxForecaster)
        prepared = prepare(batch) if prepare is not None else None
        if self._inference is None:
            self._inference = ThreadPoolExecutor(1, thread_name_prefix="stcast-inference")
        return self._inference.submit(
            infer, self.forecaster, batch, shadow, self.stopwatch, prepared
        )

    def _finish(self, chunk: Chunk, launched: Future[Inferred] | None) -> Output:
        """Score, remember and encode an inferred chunk, at the event time it had when it was
        launched (the next chunk's ticks may be placed already)."""
        output = Output(dead_letters=chunk.dead_letters)
        if launched is None:
            values: FloatArray = np.zeros((0, self.forecaster.horizon))
        else:
            inferred = launched.result()
            values, chunk.interval, chunk.shadow = (
                inferred.values,
                inferred.interval,
                inferred.shadow,
            )
            self._observe_inference(inferred.seconds, len(values))
        newest_ms, self._newest_ms = self._newest_ms, chunk.newest_ms
        try:
            finite: BoolArray = np.all(np.isfinite(values), axis=1)
            made_by = np.array([state.index for state in chunk.states], dtype=np.int64)
            self._settle(chunk, values, finite, made_by)
            if chunk.rows:
                self._encode(chunk, values, cast(list[bool], finite.tolist()), made_by, output)
            if chunk.shadow is not None:
                self._judge()
        finally:
            self._newest_ms = newest_ms
        output.retrain_events, self._retrain_events = self._retrain_events, []
        return output

    def _judge(self) -> None:
        """The canary's verdict, once due: after a swap, keep the new model or roll back to
        the previous; on a trial, promote the new model or reject it (it never served)."""
        canary = self.canary
        if canary is None:
            return
        if self.metrics is not None:
            self.metrics.set_canary_ratio(canary.ratio, self.network)
        verdict = canary.verdict(self.newest_ts_s)
        if verdict is None:
            return
        self.canary = None
        self.verdicts.append(verdict)
        record = verdict.to_json()
        if self.metrics is not None:
            self.metrics.canary_verdicts.labels(decision=verdict.decision).inc()
            self.metrics.set_canary_ratio(0.0, self.network)  # no canary runs
        log.info(
            "%s of %s against %s over %d targets: MAE %.3f vs %.3f at step %d of %d: %s",
            "trial" if verdict.trial else "canary", verdict.served, verdict.previous,
            verdict.pairs, verdict.served_mae, verdict.previous_mae, verdict.step,
            canary.horizon, verdict.decision,
        )  # fmt: skip
        if canary.shadow is not None and verdict.rollback != verdict.trial:
            watch = verdict.trial and self.canary_mode == "both"  # in after a trial, watched
            self.swap(canary.shadow, canary=watch, watch=watch)  # or back after a swap
        if verdict.rollback:  # the registry goes back to the model that serves now
            detected_at = format_ts(round(verdict.decided_s * 1000))
            network = self.network or "default"
            self.retrain(
                RetrainEvent(
                    event_id(network, verdict.served, detected_at), network, ROLLBACK, (),
                    detected_at, verdict.served, record,
                )
            )  # fmt: skip

    def _neighbour_input(self, chunk: Chunk) -> npt.NDArray[np.float32] | None:
        """The neighbours' context of a universal model's windows (None: none to give)."""
        if not self._universal:
            return None
        if self.neighbours is None:
            without = len(chunk.rows)
            found = None
        else:
            found = self.neighbours.context(
                chunk.sensors, chunk.slots, self._sensors.window_of, self.forecaster.window
            )
            without = int(np.isnan(found).all(axis=1).sum())
        if self.metrics is not None and not self._restoring:
            self.metrics.forecasts_without_neighbours.inc(without)
        return found

    @property
    def _universal(self) -> bool:
        card = getattr(self.forecaster, "card", None)
        return card is not None and card.kind == UNIVERSAL

    def _settle(
        self, chunk: Chunk, values: FloatArray, usable: BoolArray, made_by: IntArray
    ) -> None:
        """Score and remember, generation by generation (see the module docstring), as if the
        ticks had come one by one: the error feedback learns from a generation's scores before
        it corrects (``values``, in place) that generation's forecasts, and the sinks see them
        after, so a sensor's detection corrects its next forecast wherever the micro-batches
        split the stream. The rolling MAE gets the chunk's scores in arrival order. ``made_by``
        holds each forecast row's sensor row."""
        sensors, slots, actuals, generations = chunk.actuals.arrays()
        made_at = np.array(chunk.slots, dtype=np.int64)
        made_in = np.array(chunk.row_generations, dtype=np.int64)
        last = chunk.windows[:, -1] if len(chunk.rows) else np.zeros(0)  # persistence's forecast
        corrected = chunk.interval is not None or self.feedback is not None
        model = values.copy() if corrected else values  # before corrections
        sensor_count = len(self._sensors)
        scores = []
        for generation in range(max(chunk.generation.values(), default=0)):
            now = generations == generation
            rows, at, read = sensors[now], slots[now], actuals[now]
            if chunk.shadow is not None and self.canary is not None:
                self.canary.score(rows, at, read)
            if self.readings is not None:  # a generation holds a sensor once
                self.readings.observe(rows, at, read, report=not self._restoring)
            settled = self.pending.score(rows, at, read)
            self.calibration.update(settled, sensor_count)
            scores.append(settled.at(np.flatnonzero(now)))
            new = (made_in == generation) & usable
            if self.feedback is not None:
                self.feedback.update(settled)
                if new.any():
                    values[new] = self.feedback.correct(made_by[new], values[new], last[new])
            if new.any():
                interval = None
                if chunk.interval is not None:  # served, and so scored, as calibrated now
                    interval = self.calibration.apply(
                        values[new], model[new], chunk.interval[0][new], chunk.interval[1][new]
                    )
                    chunk.interval[0][new], chunk.interval[1][new] = interval
                own = None if self.feedback is None else model[new]
                self.pending.add(made_by[new], made_at[new], values[new], last[new], interval, own)
                if chunk.shadow is not None and self.canary is not None:
                    self.canary.add(made_by[new], made_at[new], values[new], chunk.shadow[new])
            self._scored = (rows, at)  # for re-anchoring (``drifted``)
            self._watch(settled)
        self._score(Scores.in_arrival_order(scores))

    def _encode(
        self,
        chunk: Chunk,
        values: FloatArray,
        finite: list[bool],
        made_by: IntArray,
        output: Output,
    ) -> None:
        """The chunk's forecast records, written by ``ForecastText`` from the float32 arrays:
        a record each, or, for the ticks of a tick batch with ``forecast_batch``, one forecast
        batch record per batch (its rows are consecutive in the chunk)."""
        step_ms = self._step_ms
        interval = None
        if chunk.interval is not None:
            interval = (_compact(chunk.interval[0]), _compact(chunk.interval[1]))
        text = ForecastText(
            _compact(values), interval, self.step_s, self.forecaster.model_id,
            format_ts(int(self.clock() * 1000)),
        )  # fmt: skip
        rows = zip(chunk.states, chunk.slots, finite, chunk.imputed, chunk.origins, strict=True)
        stuck = self._stuck(made_by)
        batch: list[bytes] = []
        batch_origin: Incoming | None = None
        for i, (state, slot, is_finite, imputed, origin) in enumerate(rows):
            if batch and origin is not batch_origin:
                output.forecasts.append(forecast_batch(batch, batch_origin))
                batch = []
            ts = self._ts_json.get(slot) or self._remember_ts(slot, slot * step_ms)
            if not is_finite:
                self._model_failed(state, format_ts(slot * step_ms), list(chunk.rows[i]), output)
                continue
            record = text.record(i, state.name_json, ts, imputed, stuck is not None and stuck[i])
            output.consumed_at.append(chunk.consumed_at[i])
            if origin is None:
                output.forecasts.append((state.key, record))
            else:
                batch.append(record)
                batch_origin = origin
        if batch:
            output.forecasts.append(forecast_batch(batch, batch_origin))
        if self.metrics is not None:
            self.metrics.forecasts.inc(len(output.consumed_at))

    def _stuck(self, made_by: IntArray) -> list[bool] | None:
        """Per forecast row: is its sensor stuck now (None: nothing is, or no monitors)."""
        if self.readings is None:
            return None
        stuck = self.readings.monitors.stuck(made_by)
        return cast(list[bool], stuck.tolist()) if stuck.any() else None

    def _model_failed(
        self, state: SensorState, ts: str, window: list[float], output: Output
    ) -> None:
        """A NaN or infinite forecast is a model fault: dead-letter its window, never send it."""
        detail = f"model {self.forecaster.model_id} forecast a non-finite value"
        log.error("%s for %s at %s", detail, state.key.decode(), ts)
        raw = json.dumps({"sensor": state.key.decode(), "ts": ts, "window": window}).encode()
        where = Incoming(topic="", partition=-1, offset=-1, key=state.key, value=raw)
        output.dead_letters.append(
            (state.key, encode_dead_letter(where, Reason.INTERNAL, detail, raw))
        )
        if self.metrics is not None:
            self.metrics.rejected.labels(reason=str(Reason.INTERNAL)).inc()

    def _remember_ts(self, slot: int, ts_ms: int) -> bytes:
        """A slot's time as a JSON string, kept for the slots that follow."""
        if len(self._ts_json) > 4096:
            self._ts_json.clear()
        text = self._ts_json[slot] = orjson.dumps(format_ts(ts_ms))
        return text

    def _watch(self, scores: Scores) -> None:
        if not len(scores):
            return
        for row in list(self._anchoring):  # a step needs readings after it to be told apart
            self._reanchor(row)
        shadowed = [row for row in list(self._anchored) if self._check_anchor(row)]
        if shadowed:
            self._shadow_forecasts(shadowed)
        if self._restoring:  # published before; only state that learns from them rebuilds
            for sink in self.sinks:
                replay = getattr(sink, "replay", None)
                if replay is not None:
                    replay(scores)
            return
        for sink in self.sinks:
            sink.update(scores)

    def _score(self, scores: Scores) -> None:
        if not len(scores) or self._restoring:
            return
        self.rolling_mae.update(scores)
        self._unpublished = True

    def _publish_scores(self) -> None:
        """The rolling MAE's gauges, once a micro-batch (its means cost a pass over every
        kept error): a scrape sees them as of the last micro-batch. The coverage is NaN, and
        so not set, while the kept errors include forecasts without an interval."""
        if self.metrics is None or not self._unpublished:
            return
        mae = self.rolling_mae
        self.metrics.set_rolling_mae(mae.mae.tolist(), mae.baseline_mae.tolist(), self.network)
        self.metrics.set_coverage(mae.coverage.tolist(), self.network)
        self._unpublished = False

    def _observe_inference(self, seconds: float, windows: int) -> None:
        if self.metrics is not None:
            self.metrics.inference_seconds.observe(seconds)
            self.metrics.batch_size.observe(windows)

    def _count(self, ticks: int, imputed: int) -> None:
        if self._newest_ms - self._swept_ms > self.sensor_ttl_s * 250:  # a quarter of the TTL
            self.expire()
        if self.metrics is None:
            return
        self.metrics.ticks.inc(ticks)
        self.metrics.imputed.inc(imputed)
        self.metrics.sensors_active.set(len(self._sensors))
        if self._newest_ms:
            self.metrics.event_lag_seconds.set(self.clock() - self._newest_ms / 1000)


@dataclass(frozen=True, slots=True)
class Inferred:
    """What a chunk's inference gave: the point forecasts, the interval's bounds when the
    model gives quantiles, the shadow model's forecasts while a canary runs, and the time."""

    values: FloatArray
    interval: tuple[FloatArray, FloatArray] | None
    shadow: FloatArray | None
    seconds: float


def infer(
    forecaster: Forecaster,
    batch: WindowBatch,
    shadow: Forecaster | None,
    stopwatch: Callable[[], float],
    prepared: Callable[[], FloatArray] | None = None,
) -> Inferred:
    """One chunk's forecasts (run on the inference thread): the median is the point forecast
    of a quantile model; ``shadow`` (a canary's other model) forecasts in the shadow.
    ``prepared``: the forecaster's own call with its inputs built already (``prepare``), so
    that this thread only runs the model; its time is what is observed."""
    started = stopwatch()
    interval = None
    if prepared is not None:
        out = prepared()
    elif isinstance(forecaster, QuantileForecaster) and forecaster.quantiles:
        out = forecaster.forecast_quantiles(batch)
    else:
        out = forecaster.forecast(batch)
    seconds = stopwatch() - started
    if out.ndim == 3:  # (batch, quantiles, horizon)
        quantiles = cast(QuantileForecaster, forecaster).quantiles
        interval = (out[:, 0], out[:, -1])
        values: FloatArray = out[:, quantiles.index(0.5)].copy()
    else:
        values = out
    shadowed = median_forecast(shadow, batch) if shadow is not None else None
    return Inferred(values, interval, shadowed, seconds)


def _compact(values: FloatArray) -> npt.NDArray[np.floating[Any]]:
    """``values`` as float32 (all a float32 model computes, and shorter text), unless some are
    beyond float32's range (readings of 1e300 repeated by a baseline): then as they are."""
    with np.errstate(over="ignore"):
        narrow = values.astype(np.float32)
    return narrow if np.isfinite(narrow).sum() == np.isfinite(values).sum() else values


def _calibration(forecaster: Forecaster, rate: float) -> IntervalCalibration:
    """The online calibration of ``forecaster``'s interval, its width factor at 1."""
    levels: tuple[float, ...] = tuple(getattr(forecaster, "quantiles", ()))
    return IntervalCalibration.for_levels(forecaster.horizon, levels, rate)


def readiness(forecaster: Forecaster) -> tuple[bool, int]:
    """Whether a forecast needs a full window (a window model), and the readings it needs.

    A universal model reads a window with holes (masked) and forecasts a new sensor once it
    holds ``min_context`` readings; any other model needs every slot filled.
    """
    card = getattr(forecaster, "card", None)
    if card is not None and card.kind == UNIVERSAL:
        return False, card.warmup
    return True, forecaster.window


@dataclass
class _Anchor:
    """A row's moved history: the step's first slot, its size, what was checked since, and
    how forecasts from the moved history and from the history as it came did."""

    since: int
    jump: float
    checked: int  # the newest slot looked at
    returns: int = 0  # readings in a row back at the level before the step
    shadow: dict[int, tuple[FloatArray, FloatArray]] = field(default_factory=dict)  # by origin
    moved_error: float = 0.0  # summed absolute errors of the moved history's forecasts
    kept_error: float = 0.0  # and of the history's as it came
    pairs: int = 0
    judged: bool = False

    def score(self, slot: int, reading: float, horizon: int) -> None:
        """Both forecasts of every held origin that ``reading`` (at ``slot``) settles."""
        for origin, (moved, kept) in list(self.shadow.items()):
            step = slot - origin
            if 1 <= step <= horizon and math.isfinite(reading):
                a, b = moved[step - 1], kept[step - 1]
                if math.isfinite(a) and math.isfinite(b):
                    self.moved_error += abs(reading - a)
                    self.kept_error += abs(reading - b)
                    self.pairs += 1
            if step >= horizon:
                del self.shadow[origin]


def _value_at(window: RollingWindow, slot: int) -> float:
    """The window's value at ``slot`` (NaN for a hole), without copying the window."""
    newest = window.newest if window.newest is not None else slot
    return float(window.buffer[window.length - 1 - (newest - slot)])


def _up_to(window: RollingWindow, slot: int) -> FloatArray:
    """The window's values up to ``slot`` (a copy), oldest first."""
    values = np.frombuffer(window.buffer, dtype=np.float64)
    newest = window.newest if window.newest is not None else slot
    return values[: max(len(values) - (newest - slot), 0)].copy()
