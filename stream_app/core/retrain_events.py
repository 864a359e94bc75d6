"""Retrain events: the drift detections of a network's sensors, gathered, debounced, encoded.

The policy, drawn once (``RetrainPolicy``; all times are event time, the detections' own):

- A detection counts for ``window_s``. When the sensors drifting within the window reach
  ``required`` = max(``min_sensors``, ceil(``min_share`` x monitored sensors)) (all of them where
  fewer are monitored), and the network's
  last event is at least ``cooldown_s`` old, an event is due. It goes out ``gather_s`` later,
  listing every sensor then drifting (the stragglers of the same change), and the window empties.
- Why several sensors: a retrain fine-tunes one model for the whole network, and one sensor's
  drift is far more often its own fault (a broken detector, roadworks at one spot) than the
  model's. And at the calibrated rate of well under one false alarm per sensor-week, 170 sensors
  still raise one every few hours; three independent ones rarely meet within an hour. The share
  keeps that true for big networks, where three would meet all the time.
- A stuck sensor (the readings check ``stuck``) is quarantined at once: retraining cannot fix a
  sensor that repeats itself, and its readings must not train the next model.
- Quarantine: a sensor listed in ``strikes`` consecutive events (the retrains in between did not
  fix it) is quarantined. Its detections are counted but no longer make or join events; events
  list it in their evidence. It comes back after ``quarantine_s`` without a detection from it.
  A model swap does not lift it: events cause swaps, so lifting on a swap would let a broken
  sensor back in after every retrain.

An event's id is a hash of network, model and time, so a replay emits the same ids and a
consumer can drop repeats.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .metrics import Metrics
from .records import format_ts

REASON = "drift"
ROLLBACK = "rollback"  # a canary found the new model worse than the one it replaced
STUCK = "stuck"  # readings.STUCK: this module is below the readings monitors
FIELDS = ("id", "network", "reason", "sensors", "detected_at", "model", "evidence")
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "stcast.retrain")


@dataclass(frozen=True)
class Detection:
    """A sensor's monitor fired: when (event-time epoch seconds) and on what evidence.

    ``check`` is ``error`` for a drift monitor on the forecast errors, else the readings check
    that fired (``readings.CHECKS``: ``stuck``, ``range``, ``noise``). An error detection's
    errors are standardised (1.0 = the sensor's usual error): ``error_before`` is the mean since
    the monitor started or last fired, ``error_after`` the mean of the newest values; a readings
    check's evidence is ``error_after`` (its own unit: see ``readings.Finding``), with
    ``error_before`` NaN.
    """

    sensor: str
    detected_at: float
    error_before: float
    error_after: float
    check: str = "error"


@dataclass(frozen=True)
class RetrainEvent:
    """The record on ``stcast.retrain`` (DESIGN.md); the message key is the network."""

    id: str
    network: str
    reason: str
    sensors: tuple[str, ...]
    detected_at: str
    model: str
    evidence: dict[str, Any]

    @property
    def key(self) -> bytes:
        return self.network.encode()

    def encode(self) -> bytes:
        record = {**asdict(self), "sensors": list(self.sensors)}
        return json.dumps(record, allow_nan=False, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> RetrainEvent:
        """Parse a record; ``ValueError`` naming what is wrong with it."""
        record = json.loads(raw)
        if not isinstance(record, dict) or set(record) != set(FIELDS):
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"a retrain event has exactly the keys {FIELDS}, got {keys}")
        if not isinstance(record["sensors"], list) or not isinstance(record["evidence"], dict):
            raise ValueError("a retrain event's sensors is a list and its evidence an object")
        return cls(**{**record, "sensors": tuple(record["sensors"])})


def event_id(network: str, model: str, detected_at: str) -> str:
    """Deterministic: the same drift in the same stream always gets the same id."""
    return str(uuid.uuid5(_NAMESPACE, f"{network}|{model}|{detected_at}"))


class DetectionListener(Protocol):
    """What a ``DriftSink`` reports to: each detection, and event time moving on."""

    def update(self, detection: Detection) -> None: ...

    def advance(self, now: float) -> None: ...

    def model_swapped(self) -> None:
        """A new model serves: detections made against the old one no longer count."""
        ...


class RetrainPolicy:
    """Detections in, at most one ``RetrainEvent`` per ``cooldown_s`` out (see the module doc).

    ``emit`` receives each event; ``model`` gives the serving ``name@version``; ``monitored``
    the number of sensors watched (``DriftSink.monitored``); ``detector`` describes the
    detector for the evidence (``drift.describe``). Once enough sensors drift, the event waits
    ``gather_s`` for the stragglers of the same change, so that it lists them too.
    """

    def __init__(
        self,
        network: str,
        *,
        emit: Callable[[RetrainEvent], None],
        model: Callable[[], str],
        monitored: Callable[[], int] = lambda: 0,
        detector: Mapping[str, Any] | None = None,
        cooldown_s: float = 21_600.0,
        window_s: float = 3_600.0,
        gather_s: float = 900.0,
        min_sensors: int = 3,
        min_share: float = 0.02,
        strikes: int = 3,
        quarantine_s: float = 86_400.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.network = network
        self.emit = emit
        self.model = model
        self.monitored = monitored
        self.detector = dict(detector or {})
        self.cooldown_s = cooldown_s
        self.window_s = window_s
        self.gather_s = gather_s
        self.min_sensors = min_sensors
        self.min_share = min_share
        self.strikes = strikes
        self.quarantine_s = quarantine_s
        self.metrics = metrics
        self._now = -math.inf
        self._last_event = -math.inf
        self._due: float | None = None  # when enough sensors drifted for an event
        self._drifting: dict[str, Detection] = {}
        self._strikes: dict[str, int] = {}
        self._quarantine: dict[str, float] = {}  # sensor -> time of its newest detection
        self._events = 0
        self._held = 0

    @property
    def required(self) -> int:
        """Drifting sensors an event needs now: every one of a network that monitors fewer
        than ``min_sensors`` (a wind farm's two turbines, a single meter), which could never
        retrain otherwise."""
        monitored = self.monitored()
        required = max(self.min_sensors, math.ceil(self.min_share * monitored))
        return min(required, monitored) if monitored > 0 else required

    @property
    def drifting(self) -> frozenset[str]:
        """Sensors detected within the window and not yet reported."""
        return frozenset(self._drifting)

    @property
    def quarantined(self) -> frozenset[str]:
        return frozenset(self._quarantine)

    @property
    def events(self) -> int:
        """Events emitted."""
        return self._events

    @property
    def held(self) -> int:
        """Detections of quarantined sensors, left out of events."""
        return self._held

    def update(self, detection: Detection) -> None:
        if detection.check == STUCK and detection.sensor not in self._quarantine:
            self._quarantine[detection.sensor] = detection.detected_at
            self._drifting.pop(detection.sensor, None)
            self._held += 1
        elif detection.sensor in self._quarantine:
            self._quarantine[detection.sensor] = max(self._now, detection.detected_at)
            self._held += 1
        else:
            self._drifting[detection.sensor] = detection
        self.advance(detection.detected_at)

    def advance(self, now: float) -> None:
        """Event time is ``now``: expire, release, and emit the event that is due."""
        now = self._now = max(self._now, now)
        self._release(now)
        since = (now if self._due is None else self._due) - self.window_s  # a due event keeps all
        self._drifting = {s: d for s, d in self._drifting.items() if d.detected_at >= since}
        if self._due is None and now - self._last_event >= self.cooldown_s:
            self._due = now if len(self._drifting) >= self.required else None
        if self._due is not None and now - self._due >= self.gather_s:
            self._emit(self._due)

    def model_swapped(self) -> None:
        """Forget detections made against the old model; strikes and quarantine stay."""
        self._drifting.clear()
        self._due = None

    def _release(self, now: float) -> None:
        quiet = [s for s, last in self._quarantine.items() if now - last >= self.quarantine_s]
        for sensor in quiet:
            del self._quarantine[sensor]

    def _emit(self, now: float) -> None:
        found = sorted(self._drifting.values(), key=lambda d: d.sensor)
        held = sorted(self._quarantine)
        newly = self._strike([d.sensor for d in found], now)
        detected_at, model = format_ts(round(now * 1000)), self.model()
        event = RetrainEvent(
            event_id(self.network, model, detected_at),
            self.network,
            REASON,
            tuple(d.sensor for d in found),
            detected_at,
            model,
            self._evidence(found, held, newly),
        )
        self._last_event = now
        self._due = None
        self._drifting.clear()
        self._events += 1
        if self.metrics is not None:
            self.metrics.retrain_events.inc()
        self.emit(event)

    def _strike(self, sensors: list[str], now: float) -> list[str]:
        """Count consecutive events per sensor; return the sensors that now go to quarantine."""
        self._strikes = {s: self._strikes.get(s, 0) + 1 for s in sensors}
        newly = [s for s, n in self._strikes.items() if n >= self.strikes]
        for sensor in newly:
            del self._strikes[sensor]
            self._quarantine[sensor] = now
        return newly

    def _evidence(
        self, found: list[Detection], held: list[str], newly: list[str]
    ) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "error_unit": "mean |error| over the horizons, in multiples of the sensor's usual",
            "error_before": _number(_mean([d.error_before for d in found])),
            "error_after": _number(_mean([d.error_after for d in found])),
            "per_sensor": {
                d.sensor: {
                    "check": d.check,
                    "detected_at": format_ts(round(d.detected_at * 1000)),
                    "error_before": _number(d.error_before),
                    "error_after": _number(d.error_after),
                }
                for d in found
            },
            "monitored_sensors": self.monitored(),
            "required_sensors": self.required,
            "window_s": self.window_s,
            "quarantined": held,
            "quarantined_now": newly,
        }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _number(value: float) -> float | None:
    """JSON has no NaN: an unknown mean (a monitor that fired before it saw any) is null."""
    return round(value, 4) if math.isfinite(value) else None
