"""Recent readings per sensor, kept by the retrain worker to fine-tune and validate on.

The retrain worker reads the ticks topic itself, from the start of its retention, and keeps the
last ``span_s`` of event time per sensor (the newest reading per timestamp wins), or its
network's own span where one is given (a daily network needs more event time than a 5-minute
one for the same number of steps). Nothing
depends on the broker's offset-for-time lookups, and nothing is asked of the workers. When a
retrain begins, :meth:`History.grid` cuts the sensors of the serving model's card out as a
``GridDataset``: NaN where a reading is missing, exactly what training and evaluation read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from ..core.chunks import ticks_of
from ..core.records import Incoming, Rejected, TimestampParser, tick_from_json
from ..offline.datasets import GridDataset

PRUNE_EVERY = 100_000  # readings added between two prunings of what fell out of the span


class History:
    """The last ``span_s`` of event time of each sensor's readings."""

    def __init__(self, span_s: int, spans: Mapping[str, int] | None = None) -> None:
        spans = dict(spans or {})
        for span in (span_s, *spans.values()):
            if span <= 0:
                raise ValueError(f"the history span must be positive, not {span} s")
        self.span_s = span_s
        self.spans = spans  # network -> its span, where it has its own
        self.newest_s: int | None = None
        self._readings: dict[str, dict[int, float]] = {}
        self._network: dict[str, str] = {}  # sensor -> the network its ticks named ("" none)
        self._parse = TimestampParser()
        self._added = 0

    def add_message(self, message: Incoming) -> int:
        """The readable ticks of one message (a tick or a tick batch); returns how many.

        Unreadable ticks are the workers' business (they dead-letter them); here they are
        skipped. A reading known to be missing (``null``) stays missing.
        """
        added = 0
        for obj, _ in ticks_of(message):
            if isinstance(obj, Rejected):
                continue
            try:
                tick = tick_from_json(obj, self._parse)
            except Rejected:
                continue
            if tick.value is not None:
                self._network[tick.sensor] = tick.network or ""
                self.add(tick.sensor, tick.ts_ms // 1000, tick.value)
                added += 1
        return added

    def span_of(self, network: str) -> int:
        """Event time kept of a network's sensors."""
        return self.spans.get(network, self.span_s)

    def add(self, sensor: str, ts_s: int, value: float) -> None:
        span = self.span_of(self._network.get(sensor, ""))
        if self.newest_s is not None and ts_s <= self.newest_s - span:
            return  # older than what is kept
        self._readings.setdefault(sensor, {})[ts_s] = value
        if self.newest_s is None or ts_s > self.newest_s:
            self.newest_s = ts_s
        self._added += 1
        if self._added % PRUNE_EVERY == 0:
            self.prune()

    def prune(self) -> None:
        """Drop readings older than the span, and sensors left with none."""
        if self.newest_s is None:
            return
        for sensor in list(self._readings):
            oldest = self.newest_s - self.span_of(self._network.get(sensor, ""))
            kept = {ts: v for ts, v in self._readings[sensor].items() if ts > oldest}
            if kept:
                self._readings[sensor] = kept
            else:
                del self._readings[sensor]

    @property
    def sensors(self) -> int:
        return len(self._readings)

    def sensors_of(self, network: str) -> tuple[str, ...]:
        """The sensors whose ticks named ``network``, else (no tick named it, e.g. the default
        network of a worker serving one) every sensor whose ticks named none; sorted."""
        named = [s for s, net in self._network.items() if net == network and s in self._readings]
        if not named:
            named = [s for s, net in self._network.items() if not net and s in self._readings]
        return tuple(sorted(named))

    def grid(
        self, name: str, sensors: tuple[str, ...], step_s: int, network: str = ""
    ) -> GridDataset:
        """The readings of ``sensors`` (in that order) on a ``step_s`` grid, the whole span.

        It runs from the oldest reading kept (at most the span of ``network`` back) to the
        newest reading's step; readings between grid steps are left out.
        """
        if self.newest_s is None:
            raise ValueError("the history holds no readings yet")
        last = self.newest_s - self.newest_s % step_s
        oldest = min((min(r) for r in self._readings.values() if r), default=last)
        oldest = max(oldest, self.newest_s - self.span_of(network) + 1)
        first = last - (last - oldest) // step_s * step_s
        steps = (last - first) // step_s + 1
        values = np.full((steps, len(sensors), 1), np.nan)
        for column, sensor in enumerate(sensors):
            for ts, value in self._readings.get(sensor, {}).items():
                row, off_grid = divmod(ts - first, step_s)
                if 0 <= row < steps and not off_grid:
                    values[row, column, 0] = value
        return GridDataset(
            name=name,
            values=values,
            start=datetime.fromtimestamp(first, UTC),
            step_s=step_s,
            sensors=sensors,
            channels=("value",),
        )


def without(dataset: GridDataset, sensors: Collection[str]) -> GridDataset:
    """``dataset`` with the readings of ``sensors`` (quarantined ones) turned into holes: a
    fine-tuning does not learn from them and a comparison does not score on them."""
    drop = [i for i, sensor in enumerate(dataset.sensors) if sensor in sensors]
    if not drop:
        return dataset
    values = dataset.values.copy()
    values[:, drop] = np.nan
    return replace(dataset, values=values)
