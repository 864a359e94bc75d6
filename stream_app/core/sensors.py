"""Every sensor a worker serves: its window, where its ticks come from, and its row number.

A sensor's row number indexes the pipeline's pending-forecast store. Rows of sensors that leave
(their partition moved to another worker, or they stopped reporting) are reused by newcomers,
so memory follows the number of active sensors, not of all sensors ever seen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from .windows import RollingWindow


class SensorState:
    """Everything the worker keeps for one sensor."""

    __slots__ = ("index", "key", "partition", "quoted", "sensor", "window")

    def __init__(self, sensor: str, index: int, window: RollingWindow, partition: int) -> None:
        self.sensor = sensor
        self.index = index
        self.key = sensor.encode()
        self.quoted = json.dumps(sensor)
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
