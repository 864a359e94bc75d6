"""Calibrate the drift monitors' defaults on the real PEMS08 slice (flow, channel 0).

The bundled slice runs through the real ``Pipeline`` with the persistence forecaster (or the
model in ``--model DIR``) and one ``DriftSink`` per candidate as its sinks.

- False alarms per sensor-week: every firing on the undisturbed slice after the warm-up, with
  the monitors starting with the stream (as ``stcast evaluate --online`` counts them); that
  is what is held to the budget (``--max-false-alarms``). A monitor's warm-up starts whenever
  the worker starts or a model is swapped in, so each candidate also runs with its monitors
  starting 8 and 16 hours into the slice, shown beside it. Those rates run higher: the slice
  is 4.5 days and most firings fall on the holiday, so a later start divides about as many
  firings by fewer monitored days.
- Detection rate and median delay in steps: a firing within a day of a fault injected at a
  known step on a seeded random 10 % of the sensors. ``shift``: + 3 standard deviations of the
  sensor's readings; ``stuck``: the reading at the onset, repeated; ``variance``: Gaussian noise
  as large as the sensor's own noise (readings minus their centred one-hour mean), so the noise
  variance doubles. Monitors are per sensor and independent, so a fault run streams only the
  faulted sensors and the others' firings are those of the undisturbed run.

The choice: the most shifts detected within the false-alarm budget, then the shortest delay,
then the most stuck and noisy sensors detected, then the fewest false alarms. With a trained
model the monitors learn their scale from its card (``sensor_mae``), as the worker's do.
The detections of stcast's defaults are then replayed through a ``RetrainPolicy`` for the
network's events. The slice runs from Friday 1 July 2016 to the morning of Tuesday 5 July: a
weekend, the 4 July holiday and the first weekday after them.

    python benchmarks/calibrate_drift.py [--seeds 5] [--model DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stream_app.core.drift import (
    DEFAULT_COOLDOWN,
    DEFAULT_PARAMS,
    DEFAULT_WARMUP,
    DriftDetector,
    DriftSink,
    forecaster_scale,
    make_detector,
    page_hinkley,
)
from stream_app.core.forecasters import Forecaster, Persistence
from stream_app.core.onnx_forecaster import OnnxForecaster
from stream_app.core.pipeline import Pipeline
from stream_app.core.records import Incoming, format_ts
from stream_app.core.retrain_events import Detection, RetrainPolicy
from stream_app.core.scoring import Scores
from stream_app.offline.datasets import bundled_dataset_path, load_dataset

FAULTS = ("shift", "stuck", "variance")
STARTS_H = (0, 8, 16)  # hours into the slice at which the monitors start
HOUR_S = 3600
WEEK_S = 7 * 86_400
DEFAULTS = "defaults"


@dataclass(frozen=True)
class Candidate:
    name: str
    detector: DriftDetector
    cooldown: int = DEFAULT_COOLDOWN
    horizons: tuple[int, ...] = ()


@dataclass(frozen=True)
class Stream:
    """Readings (T, n) of some sensors, the grid's times (epoch seconds), the forecaster."""

    values: npt.NDArray[np.float64]
    sensors: tuple[str, ...]
    times: npt.NDArray[np.int64]
    step_s: int
    forecaster: Forecaster

    def but(self, values: npt.NDArray[np.float64], sensors: tuple[str, ...]) -> Stream:
        return Stream(values, sensors, self.times, self.step_s, self.forecaster)


class Recorder(list[Detection]):
    """Keeps every detection (a ``DetectionListener`` that decides nothing)."""

    def update(self, detection: Detection) -> None:
        self.append(detection)

    def advance(self, now: float) -> None:
        pass

    def model_swapped(self) -> None:
        pass  # the calibration never swaps


class Starting:
    """A sink that passes scores on from event time ``at`` (monitors started then)."""

    def __init__(self, sink: DriftSink, at: float) -> None:
        self.sink = sink
        self.at = at

    def update(self, scores: Scores) -> None:
        if self.sink.now() >= self.at:
            self.sink.update(scores)

    def forget(self, rows: list[int]) -> None:
        self.sink.forget(rows)

    def reset(self) -> None:
        self.sink.reset()


def candidates(forecaster: Forecaster) -> list[Candidate]:
    """stcast's defaults for ``forecaster``'s kind first, then a grid around them and two
    variants of them."""
    own = page_hinkley(forecaster, math.nan, math.nan)
    found = [Candidate(DEFAULTS, make_detector("page-hinkley", **own))]
    ph = [(t, 2.0) for t in (15, 18, 20, 22, 25, 35, 45, 60)] + [
        (t, d) for d in (3.0, 4.0) for t in (25, 35)
    ]
    ph.append((45, 3.0))
    found += [Candidate(f"ph t{t} d{d}", make_detector("page-hinkley", threshold=t, delta=d))
              for t, d in ph]  # fmt: skip
    found += [Candidate(f"adwin d{d:g}", make_detector("adwin", delta=d))
              for d in (1e-6, 1e-10, 1e-16)]  # fmt: skip
    found += [
        Candidate("defaults, horizon 1 only", make_detector(), horizons=(1,)),
        Candidate("defaults, cooldown 144", make_detector(), cooldown=144),
        Candidate("defaults, cooldown 288", make_detector(), cooldown=288),
    ]
    return found


def stream(
    data: Stream, chosen: list[Candidate], starts_s: tuple[float, ...] = (0,)
) -> dict[tuple[str, float], list[Detection]]:
    """Run the slice with a sink per candidate and start; their detections."""
    found = {(c.name, s): Recorder() for c in chosen for s in starts_s}
    now = [0.0]
    rows: list[str] = []  # no sensor ever leaves here, so rows are the order of arrival
    first = float(data.times[0])
    scale = forecaster_scale(data.forecaster)  # as the worker's
    sinks = [
        Starting(DriftSink(c.detector.clone(), sensor_of=rows.__getitem__, now=lambda: now[0],
                           policy=found[c.name, s], cooldown=c.cooldown, horizons=c.horizons,
                           scale=scale), first + s)
        for c in chosen for s in starts_s
    ]  # fmt: skip
    future = float(data.times[-1]) + 86_400
    pipeline = Pipeline(data.forecaster, step_s=data.step_s, sinks=sinks,
                        clock=lambda: future, batch_size=4096)  # fmt: skip
    for t, ts in enumerate(data.times.tolist()):
        now[0] = float(ts)
        for _ in pipeline.step([batch_message(data, t)]):
            pass
        if len(rows) < pipeline.sensors:
            rows[:] = pipeline.sensor_ids
    return {key: list(detections) for key, detections in found.items()}


def batch_message(data: Stream, t: int) -> Incoming:
    ts = format_ts(int(data.times[t]) * 1000)
    ticks = [{"sensor": s, "ts": ts, "value": v}
             for s, v in zip(data.sensors, data.values[t].tolist(), strict=True)]  # fmt: skip
    return Incoming("stcast.ticks", 0, t, b"pems08", json.dumps({"ticks": ticks}).encode())


def inject(
    kind: str, values: npt.NDArray[np.float64], onset: int, rng: np.random.Generator, steps: int
) -> npt.NDArray[np.float64]:
    """The columns of ``values`` with ``kind`` from step ``onset`` on (``steps``: an hour)."""
    out = values.copy()
    if kind == "shift":
        out[onset:] += 3 * values.std(axis=0)
    elif kind == "stuck":
        out[onset:] = values[onset]
    else:
        kernel = np.ones(steps) / steps
        smooth = np.stack([np.convolve(c, kernel, mode="same") for c in values.T], axis=1)
        noise_sd = (values - smooth)[steps:-steps].std(axis=0)
        out[onset:] += rng.normal(size=out[onset:].shape) * noise_sd
    return out


def false_alarms(found: list[Detection], data: Stream, start_s: float) -> float:
    """Firings per sensor-week of monitoring (after the window and the warm-up)."""
    first = data.times[0] + start_s + (data.forecaster.window + DEFAULT_WARMUP) * data.step_s
    monitored_s = (data.times[-1] + data.step_s - first) * len(data.sensors)
    return len(found) / (float(monitored_s) / WEEK_S)


def by_day(found: list[Detection]) -> dict[str, int]:
    days = Counter(datetime.fromtimestamp(d.detected_at, UTC).strftime("%b %d") for d in found)
    return dict(sorted(days.items()))


def delays(
    found: list[Detection], faulted: tuple[str, ...], onset_s: float, step_s: int
) -> list[int]:
    """Per faulted sensor, steps from the onset to its first firing within a day (if any)."""
    first: dict[str, int] = {}
    for d in found:
        steps = round((d.detected_at - onset_s) / step_s)
        if d.sensor in faulted and 0 <= steps < 86_400 // step_s:
            first.setdefault(d.sensor, steps)
    return list(first.values())


@dataclass
class Fault:
    kind: str
    sensors: tuple[str, ...]
    onset_s: float
    found: dict[str, list[Detection]]


def fault_runs(data: Stream, chosen: list[Candidate], seeds: int) -> list[Fault]:
    n, runs = len(data.sensors), []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(n, size=max(1, n // 10), replace=False))
        onset = 360 + 107 * seed  # different times of day, each a day before the end
        sensors = tuple(data.sensors[i] for i in picked)
        for kind in FAULTS:
            values = inject(kind, data.values[:, picked], onset, rng, HOUR_S // data.step_s)
            found = stream(data.but(values, sensors), chosen)
            named = {name: detections for (name, _), detections in found.items()}
            runs.append(Fault(kind, sensors, float(data.times[onset]), named))
    return runs


def table_row(
    c: Candidate,
    clean: dict[tuple[str, float], list[Detection]],
    data: Stream,
    faults: list[Fault],
    starts_s: tuple[float, ...],
) -> dict[str, Any]:
    rates = [false_alarms(clean[c.name, s], data, s) for s in starts_s]
    row: dict[str, Any] = {
        "candidate": c.name,
        "false_alarms_per_sensor_week": round(rates[0], 3),
        "false_alarms_by_start": [round(r, 3) for r in rates],
        "false_alarms_by_day": by_day(clean[c.name, 0]),
    }
    for kind in FAULTS:
        runs = [f for f in faults if f.kind == kind]
        found = [
            d for f in runs for d in delays(f.found[c.name], f.sensors, f.onset_s, data.step_s)
        ]
        row[kind] = {
            "detected": round(len(found) / sum(len(f.sensors) for f in runs), 3),
            "median_delay_steps": statistics.median(found) if found else None,
        }
    return row


def choose(rows: list[dict[str, Any]], prefix: str, budget: float) -> str | None:
    """Most shifts detected within the false-alarm budget, then the shortest delay, then the
    most of the subtler faults (stuck, doubled variance), then the fewest false alarms."""
    fit = [r for r in rows if r["candidate"].startswith(prefix)
           and r["false_alarms_per_sensor_week"] <= budget]  # fmt: skip

    def rank(r: dict[str, Any]) -> tuple[float, float, float, float]:
        delay = r["shift"]["median_delay_steps"]
        subtle = r["stuck"]["detected"] + r["variance"]["detected"]
        return (-r["shift"]["detected"], 1e9 if delay is None else delay, -subtle,
                r["false_alarms_per_sensor_week"])  # fmt: skip

    return str(min(fit, key=rank)["candidate"]) if fit else None


def events(data: Stream, clean: list[Detection], faults: list[Fault]) -> dict[str, Any]:
    """The defaults' detections through a default ``RetrainPolicy``: events per scenario."""
    summary: dict[str, Any] = {"undisturbed": replay(data, clean, set())}
    for f in faults:
        merged = [d for d in clean if d.sensor not in f.sensors] + f.found[DEFAULTS]
        after = [e for e in replay(data, merged, set(f.sensors)) if e["at_s"] >= f.onset_s]
        first = after[0] if after else None
        summary.setdefault(f.kind, []).append({
            "onset": format_ts(int(f.onset_s * 1000)),
            "first_event": first and first["detected_at"],
            "faulted_in_it": first and first["faulted"],
            "sensors_in_it": first and first["sensors"],
        })  # fmt: skip
    return summary


def replay(data: Stream, found: list[Detection], faulted: set[str]) -> list[dict[str, Any]]:
    """Detections and the passing time into a ``RetrainPolicy``, as the sink would."""
    out: list[dict[str, Any]] = []
    policy = RetrainPolicy("pems08", emit=lambda e: out.append({
        "detected_at": e.detected_at, "sensors": len(e.sensors),
        "faulted": len(faulted & set(e.sensors)),
        "at_s": datetime.fromisoformat(e.detected_at).timestamp(),
    }), model=lambda: data.forecaster.model_id, monitored=lambda: len(data.sensors))  # fmt: skip
    by_time: dict[float, list[Detection]] = {}
    for detection in found:
        by_time.setdefault(detection.detected_at, []).append(detection)
    for ts in data.times.tolist():
        for detection in by_time.get(float(ts), []):
            policy.update(detection)
        policy.advance(float(ts))
    return out


def print_report(report: dict[str, Any]) -> None:
    print(f"{'candidate':25s} {'FA/sensor-wk':>12s} {'by start':17s} {'by day (start 0)':34s}"
          + "".join(f" {k + ' det/delay':>16s}" for k in FAULTS))  # fmt: skip
    for r in report["rows"]:
        starts = "/".join(f"{x:.2f}" for x in r["false_alarms_by_start"])
        days = " ".join(f"{d}:{n}" for d, n in r["false_alarms_by_day"].items())
        cells = "".join(
            f" {r[k]['detected'] * 100:9.0f}% /{_delay(r[k]['median_delay_steps']):>4s}"
            for k in FAULTS
        )
        print(f"{r['candidate']:25s} {r['false_alarms_per_sensor_week']:12.2f} {starts:17s} "
              f"{days:34s}{cells}")  # fmt: skip
    print(f"\nchosen within {report['budget']} false alarms per sensor-week: {report['chosen']}")
    print(f"stcast's defaults: {report['defaults']}; forecaster {report['forecaster']}")
    print("retrain events (default policy) after the defaults' detections:")
    for scenario, found in report["events"].items():
        print(f"  {scenario}: {json.dumps(found)}")
    print(f"{report['seconds']} s")


def _delay(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="fault runs (a 10%% subset each)")
    parser.add_argument("--max-false-alarms", type=float, default=1.0,
                        help="per sensor-week, for the choice")  # fmt: skip
    parser.add_argument("--model", type=Path, help="a model directory (default: persistence); "
                        "calibrate with the kind of model you will serve")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    grid = load_dataset(bundled_dataset_path())
    forecaster: Forecaster = (
        OnnxForecaster(args.model, provider="cpu") if args.model else Persistence(12, 12)
    )
    data = Stream(grid.values[:, :, 0], grid.sensors, grid.timestamps(), grid.step_s, forecaster)
    chosen, starts_s = candidates(forecaster), tuple(3600.0 * h for h in STARTS_H)
    clean = stream(data, chosen, starts_s)
    faults = fault_runs(data, chosen, args.seeds)
    rows = [table_row(c, clean, data, faults, starts_s) for c in chosen]
    report = {
        "rows": rows,
        "budget": args.max_false_alarms,
        "chosen": {p: choose(rows, p, args.max_false_alarms) for p in ("ph t", "adwin")},
        "defaults": {
            **DEFAULT_PARAMS,
            "page-hinkley": {
                **DEFAULT_PARAMS["page-hinkley"],
                **page_hinkley(forecaster, math.nan, math.nan),
            },
            "warmup": DEFAULT_WARMUP,
            "cooldown": DEFAULT_COOLDOWN,
        },
        "forecaster": forecaster.model_id,
        "events": events(data, clean[DEFAULTS, 0], faults),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
