"""Calibrate the readings monitors (``stream_app/core/readings.py``) on real networks.

For each dataset and seed it injects the online evaluation's faults (``stuck``, ``variance``,
``shift``: a seeded tenth of the sensors, a seeded onset) and streams the readings through
``ReadingMonitors`` step by step, as a pipeline does: detection share and median delay on the
faulted sensors (first firing of the fault's check within a day of the onset) and false alarms
per sensor-week of every check on the untouched sensors, counted after the warm-up. No model is
involved: these checks see readings only.

    python benchmarks/calibrate_readings.py --dataset ../shared/data/PEMS08 --seeds 0-4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from stream_app.core.readings import CHECKS, STUCK, ReadingMonitors
from stream_app.loop.online_eval import DAY_S, WEEK_S, inject
from stream_app.offline.datasets import GridDataset, load_dataset

WANTED = {"stuck": STUCK, "variance": "noise", "shift": None}


def stream(monitors: ReadingMonitors, dataset: GridDataset) -> list[tuple[int, int, str]]:
    """(step, column, check) of every firing."""
    fired = []
    values = dataset.values[:, :, 0]
    columns = np.arange(dataset.n_sensors, dtype=np.int64)
    for t in range(dataset.n_steps):
        row = values[t]
        real = np.isfinite(row)
        slots = np.full(int(real.sum()), t, dtype=np.int64)
        for f in monitors.observe(columns[real], slots, row[real].astype(np.float64)):
            fired.append((t, f.row, f.check))
    return fired


def score(dataset: GridDataset, scenario: str, seed: int, params: dict[str, float]) -> dict:
    warmup = int(params.get("warmup", 288))
    faulted, fault = inject(dataset, scenario, seed, warmup + 24)
    monitors = ReadingMonitors(dataset.step_s, **params)  # type: ignore[arg-type]
    fired = stream(monitors, faulted)
    bad = set(fault.columns)
    day = DAY_S // dataset.step_s
    first: dict[int, int] = {}
    false = {check: 0 for check in CHECKS}
    for t, col, check in fired:
        if col in bad and t >= fault.onset:
            if check == WANTED[scenario] and t < fault.onset + day:
                first.setdefault(col, t - fault.onset)
        elif col not in bad:
            false[check] += 1
    weeks = (dataset.n_steps - warmup) * dataset.step_s / WEEK_S
    untouched = dataset.n_sensors - len(bad)
    return {
        "scenario": scenario,
        "seed": seed,
        "detected": round(len(first) / len(bad), 3) if WANTED[scenario] else None,
        "median_delay": statistics.median(first.values()) if first else None,
        "false_per_sensor_week": {c: round(n / (untouched * weeks), 3) for c, n in false.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, action="append", required=True)
    parser.add_argument("--seeds", default="0-4", help="a range such as 0-4")
    parser.add_argument("--scenarios", default="stuck,variance,shift")
    parser.add_argument("--param", action="append", default=[], help="NAME=VALUE")
    args = parser.parse_args(argv)
    first, _, last = args.seeds.partition("-")
    seeds = range(int(first), int(last or first) + 1)
    params = {k: float(v) for k, _, v in (p.partition("=") for p in args.param)}
    for path in args.dataset:
        dataset = load_dataset(path)
        for scenario in args.scenarios.split(","):
            rows = [score(dataset, scenario, s, params) for s in seeds]
            found = [r["detected"] for r in rows if r["detected"] is not None]
            delays = [r["median_delay"] for r in rows if r["median_delay"] is not None]
            false = {c: round(float(np.mean([r["false_per_sensor_week"][c] for r in rows])), 3)
                     for c in CHECKS}  # fmt: skip
            print(json.dumps({
                "dataset": dataset.name, "scenario": scenario, "seeds": args.seeds,
                "detected": round(float(np.mean(found)), 3) if found else None,
                "median_delay": statistics.median(delays) if delays else None,
                "false_per_sensor_week": false, "per_seed": rows,
            }))  # fmt: skip
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
