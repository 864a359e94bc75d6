"""Resident memory of a worker's per-sensor state, per 10,000 active sensors.

Feeds a pipeline serving the default model (the bundled universal model: a day of context at
5 minutes, intervals) or, with ``--model seed``, the seed-architecture ONNX LSTM, with
``--sensors`` synthetic sensors for ``window + horizon`` steps (every window full, every sensor
with pending forecasts and their intervals) and prints the growth of the process's resident set
over its baseline (model loaded, pipeline built).

    python benchmarks/sensor_memory.py --sensors 2000 5000
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import tempfile
from pathlib import Path

from export.onnx_graphs import build_seed_lstm
from stream_app.bundled import UNIVERSAL, model_path
from stream_app.core.onnx_forecaster import OnnxForecaster
from stream_app.core.pipeline import Pipeline
from stream_app.core.records import Incoming, format_ts

T0_MS = 1_467_331_200_000
STEP_S = 300


def rss_mb() -> float:
    """Current resident set size in MB (from /proc: ru_maxrss is the peak, not the current)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def feed(pipeline: Pipeline, sensors: int, steps: int) -> int:
    forecasts = 0
    for step in range(steps):
        ts = format_ts(T0_MS + step * STEP_S * 1000)
        messages = [
            Incoming("t", n % 4, step, f"s{n}".encode(),
                     json.dumps({"sensor": f"s{n}", "ts": ts, "value": 100.0 + n % 7}).encode())
            for n in range(sensors)
        ]  # fmt: skip
        for output in pipeline.step(messages):
            forecasts += len(output.forecasts)
    return forecasts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, nargs="+", default=[2_000, 5_000])
    parser.add_argument("--model", choices=("universal", "seed"), default="universal")
    args = parser.parse_args()
    if args.model == "seed":
        model_dir = build_seed_lstm(Path(tempfile.mkdtemp()), sensors=["s0"], mean=100.0, std=10.0)
    else:
        model_dir = model_path(UNIVERSAL)
    for sensors in args.sensors:
        forecaster = OnnxForecaster(model_dir, provider="cpu", step_s=STEP_S)
        pipeline = Pipeline(forecaster, step_s=STEP_S, batch_size=256)
        feed(pipeline, 64, forecaster.window + forecaster.horizon)  # warm the allocators
        gc.collect()
        baseline = rss_mb()
        made = feed(pipeline, sensors, forecaster.window + forecaster.horizon)
        gc.collect()
        grown = rss_mb() - baseline
        print(
            f"{sensors:>7,} active sensors: {pipeline.sensors:,} with state, {made:,} forecasts, "
            f"resident +{grown:.1f} MB = {grown * 10_000 / sensors:.1f} MB per 10,000 sensors"
        )


if __name__ == "__main__":
    main()
