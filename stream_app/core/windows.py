"""Per-sensor rolling windows on a regular grid.

A reading is placed on the grid slot nearest its time. The window holds the newest ``length``
slots; a slot with no reading is a hole (NaN). A run of holes no longer than ``max_gap`` between
two known values is imputed (linear interpolation or carry-forward) as soon as the reading that
closes it arrives. Longer runs stay holes, so the window cannot forecast until they have scrolled
out: a long gap restarts the window. Readings for a slot inside the window arrive in any order;
readings for a slot already behind the window are ``late``; a second reading for a slot that
already holds one is a ``duplicate`` (a real reading does replace an imputed value).

Every sensor a worker serves has a window, where its ticks come from, and a row number
(``Sensors``). A sensor's row number indexes the pipeline's per-sensor arrays (pending
forecasts, monitors). Rows of sensors that leave (their partition moved to another worker, or
they stopped reporting) are reused by newcomers, so memory follows the number of active sensors,
not of all sensors ever seen.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator
from enum import Enum
from typing import cast

import orjson

from .records import Reason, Rejected

NAN = math.nan


class Impute(Enum):
    LINEAR = "linear"
    CARRY = "carry"


class RollingWindow:
    """The newest ``length`` grid slots of one sensor.

    >>> w = RollingWindow(length=4, max_gap=1)
    >>> [w.add(slot, value) for slot, value in [(0, 1.0), (1, 2.0), (3, 4.0)]]
    [0, 0, 1]
    >>> w.values, w.imputed, w.is_full, w.observed
    ([1.0, 2.0, 3.0, 4.0], 1, True, 3)
    """

    __slots__ = (
        "_holes",
        "_imputed",
        "_is_imputed",
        "_values",
        "impute",
        "length",
        "max_gap",
        "newest",
    )

    def __init__(self, length: int, max_gap: int = 3, impute: Impute = Impute.LINEAR) -> None:
        self.length = length
        self.max_gap = max_gap
        self.impute = impute
        self.newest: int | None = None
        # 8 bytes a value and 1 a flag: a day of 5-minute context is 2.6 kB per sensor
        self._values = array("d", [NAN]) * length
        self._is_imputed = bytearray(length)
        self._holes = length
        self._imputed = 0

    @property
    def values(self) -> list[float]:
        """Oldest first; NaN where a slot has neither a reading nor an imputed value (a copy,
        its holes the one ``NAN`` object, so two copies of an unchanged window compare equal)."""
        return [v if v == v else NAN for v in self._values]

    @property
    def buffer(self) -> array[float]:
        """The values themselves (not a copy), for ``numpy.frombuffer``; valid until the next
        ``add``."""
        return self._values

    @property
    def observed(self) -> int:
        """How many of the window's slots hold a real reading."""
        return self.length - self._holes - self._imputed

    @property
    def imputed(self) -> int:
        """How many of the window's values were imputed."""
        return self._imputed

    @property
    def is_full(self) -> bool:
        """True when every slot holds a reading or an imputed value."""
        return self._holes == 0

    def shift_before(self, slot: int, amount: float) -> int:
        """Add ``amount`` to every value of the slots before ``slot`` (re-anchoring after a
        change of level); return how many moved.

        >>> w = RollingWindow(length=4)
        >>> [w.add(slot, value) for slot, value in [(0, 1.0), (1, 2.0), (2, 9.0), (3, 9.5)]]
        [0, 0, 0, 0]
        >>> w.shift_before(2, 7.0), w.values
        (2, [8.0, 9.0, 9.0, 9.5])
        """
        if self.newest is None:
            return 0
        end = min(max(self.length - 1 - (self.newest - slot), 0), self.length)
        values = self._values
        moved = 0
        for index in range(end):
            if values[index] == values[index]:  # not a hole
                values[index] += amount
                moved += 1
        return moved

    def add(self, slot: int, value: float | None) -> int:
        """Place a reading (None: reported missing); return how many values it let us impute.

        Raises ``Rejected`` (late, duplicate) when the reading has no place in the window.
        """
        if value is not None and self.newest is not None and slot == self.newest + 1:
            return self._push(value)  # the common case: a sensor that reports every step
        return self._add_anywhere(slot, value)

    def _add_anywhere(self, slot: int, value: float | None) -> int:
        """``add`` for any slot, with the general bookkeeping."""
        if self.newest is None or slot > self.newest:
            self._advance_to(slot)
            index = self.length - 1
        else:
            index = self.length - 1 - (self.newest - slot)
            if index < 0:
                raise Rejected(
                    Reason.LATE, f"slot {slot} is behind the window (newest {self.newest})"
                )
            if not math.isnan(self._values[index]) and not self._is_imputed[index]:
                raise Rejected(Reason.DUPLICATE, f"slot {slot} already has a reading")
        return 0 if value is None else self._place(index, value)

    def _push(self, value: float) -> int:
        """``_add_anywhere(newest + 1, value)`` for a reading, without its general
        bookkeeping; returns the same."""
        self.newest = cast(int, self.newest) + 1
        values = self._values
        self._imputed -= self._is_imputed.pop(0)
        self._holes -= math.isnan(values.pop(0))  # the new slot is filled at once
        values.append(value)
        self._is_imputed.append(0)
        previous = values[-2] if self.length > 1 else 0.0
        return self._fill_run_ending_at(self.length - 2) if previous != previous else 0

    def _advance_to(self, slot: int) -> None:
        shift = self.length if self.newest is None else min(slot - self.newest, self.length)
        self.newest = slot
        if shift == 1:  # the common case, one reading per step: no new buffers
            self._imputed -= self._is_imputed.pop(0)
            self._holes += 1 - math.isnan(self._values.pop(0))
            self._values.append(NAN)
            self._is_imputed.append(0)
            return
        self._imputed -= sum(self._is_imputed[:shift])
        self._holes -= sum(math.isnan(v) for v in self._values[:shift])
        del self._values[:shift]
        self._values.extend(array("d", [NAN]) * shift)
        del self._is_imputed[:shift]
        self._is_imputed.extend(bytes(shift))
        self._holes += shift

    def _place(self, index: int, value: float) -> int:
        if self._is_imputed[index]:
            self._is_imputed[index] = 0
            self._imputed -= 1
            self._forget_imputed_around(index)
        else:
            self._holes -= 1
        self._values[index] = value
        return self._fill_run_ending_at(index - 1) + self._fill_run_starting_at(index + 1)

    def _forget_imputed_around(self, index: int) -> None:
        """A real reading replaced an imputed one: its imputed neighbours are re-imputed from it."""
        for step in (-1, 1):
            i = index + step
            while 0 <= i < self.length and self._is_imputed[i]:
                self._values[i] = NAN
                self._is_imputed[i] = 0
                self._imputed -= 1
                self._holes += 1
                i += step

    def _fill_run_ending_at(self, end: int) -> int:
        start = end
        while start >= 0 and math.isnan(self._values[start]):
            start -= 1
        return self._fill(start + 1, end)

    def _fill_run_starting_at(self, start: int) -> int:
        end = start
        while end < self.length and math.isnan(self._values[end]):
            end += 1
        return self._fill(start, end - 1) if end < self.length else 0

    def _fill(self, first: int, last: int) -> int:
        """Impute holes first..last when both neighbours are known and the run is short enough."""
        run = last - first + 1
        if run <= 0 or run > self.max_gap or first == 0 or last == self.length - 1:
            return 0
        left, right = self._values[first - 1], self._values[last + 1]
        for k in range(run):
            if self.impute is Impute.LINEAR:
                self._values[first + k] = left + (right - left) * (k + 1) / (run + 1)
            else:
                self._values[first + k] = left
            self._is_imputed[first + k] = 1
        self._holes -= run
        self._imputed += run
        return run


class SensorState:
    """Everything the worker keeps for one sensor."""

    __slots__ = ("index", "key", "name_json", "partition", "sensor", "window")

    def __init__(self, sensor: str, index: int, window: RollingWindow, partition: int) -> None:
        self.sensor = sensor
        self.index = index
        self.key = sensor.encode()
        self.name_json = orjson.dumps(sensor)  # as its forecast records write it
        self.window = window
        self.partition = partition


class Sensors:
    """Sensor states by id, with recycled row numbers."""

    def __init__(self, new_window: Callable[[], RollingWindow]) -> None:
        self.new_window = new_window
        self._states: dict[str, SensorState] = {}
        self._by_row: dict[int, str] = {}
        self._free: list[int] = []
        self._rows = 0

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[SensorState]:
        return iter(self._states.values())

    @property
    def rows(self) -> int:
        """Row numbers handed out so far (the pending store's size)."""
        return self._rows

    def get(self, sensor: str, partition: int) -> SensorState:
        """The sensor's state, made on its first tick; remembers the partition it came from."""
        state = self._states.get(sensor)
        if state is None:
            index = self._free.pop() if self._free else self._next_row()
            state = self._states[sensor] = SensorState(sensor, index, self.new_window(), partition)
            self._by_row[index] = sensor
        state.partition = partition
        return state

    def window_of(self, sensor: str) -> RollingWindow | None:
        """The window of a sensor held here, if any (never makes one)."""
        state = self._states.get(sensor)
        return None if state is None else state.window

    def sensor_at(self, row: int) -> str:
        """The sensor that holds ``row`` now."""
        return self._by_row[row]

    def drop(self, leaving: Callable[[SensorState], bool]) -> list[int]:
        """Forget the sensors ``leaving`` picks; return their rows (now free for reuse)."""
        gone = [state for state in self._states.values() if leaving(state)]
        for state in gone:
            del self._states[state.sensor]
            del self._by_row[state.index]
        rows = [state.index for state in gone]
        self._free.extend(rows)
        return rows

    def _next_row(self) -> int:
        self._rows += 1
        return self._rows - 1
