"""The worker's pure core in one process, without Kafka: where a tick's time goes.

    python benchmarks/hot_path.py [--model-dir DIR] [--steps N] [--profile single|batched]

Feeds the bundled PEMS08 flows, encoded exactly as ``stcast replay`` sends them, to the
pipeline the worker builds (drift, readings monitors and all), and prints ticks per second for
single-tick messages and for tick batches beside the model's inference ceiling on the same
windows, and the CPU the pipeline's thread spent a tick. With ``--profile`` it prints
cProfile's top functions for that kind of message.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from stream_app.assembly import build_core
from stream_app.core.metrics import Metrics
from stream_app.core.onnx_forecaster import OnnxForecaster
from stream_app.core.records import Incoming
from stream_app.kafka.worker import GIL_SWITCH_INTERVAL_S
from stream_app.offline.datasets import bundled_dataset_path, load_dataset
from stream_app.settings import Settings
from stream_app.tools.bench import _seed_model, inference_ceiling
from stream_app.tools.replay import encode_step


def messages(dataset, steps: int, batched: bool, size: int) -> list[list[Incoming]]:  # type: ignore[no-untyped-def]
    """Micro-batches as the worker consumes them: ``size`` messages each."""
    flat = [
        Incoming("ticks", 0, offset, key, value)
        for offset, (key, value) in enumerate(
            pair for t in range(steps) for pair in encode_step(dataset, t, batched=batched)
        )
    ]
    return [flat[i : i + size] for i in range(0, len(flat), size)]


def run(settings: Settings, micro_batches: list[list[Incoming]], kind: str) -> tuple[float, float]:
    """Seconds the micro-batches took, and the CPU seconds of the thread that stepped them
    (the pipeline's own work: inference runs on a thread of its own)."""
    records = "batch" if kind == "batched" else "each"
    core = build_core(settings.replace(forecast_records=records), Metrics(CollectorRegistry()))
    started, cpu = time.perf_counter(), time.thread_time()
    for batch in micro_batches:
        for _ in core.step(batch):
            pass
    return time.perf_counter() - started, time.thread_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default="")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--profile", choices=("single", "batched"))
    parser.add_argument("--sort", choices=("tottime", "cumulative"), default="tottime")
    args = parser.parse_args()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as a worker does
    dataset = load_dataset(bundled_dataset_path())
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or str(_seed_model(Path(tmp) / "m", dataset))
        settings = Settings.from_env().replace(
            model_dir=model_dir, inference_threads=1, log_level="warning"
        )
        forecaster = OnnxForecaster(Path(model_dir), provider="cpu", threads=1)
        ceiling = inference_ceiling(forecaster, dataset, settings)
        print(f"inference ceiling   {ceiling:10,.0f} windows/s")
        n = args.steps * dataset.n_sensors
        for kind in ("single", "batched"):
            batches = messages(
                dataset, args.steps, kind == "batched", settings.micro_batch_messages
            )
            if args.profile == kind:
                profiler = cProfile.Profile()
                profiler.enable()
            elapsed, cpu = run(settings, batches, kind)
            if args.profile == kind:
                profiler.disable()
                pstats.Stats(profiler).sort_stats(args.sort).print_stats(25)
            print(
                f"{kind:<8} in process {n / elapsed:10,.0f} ticks/s ({n / elapsed / ceiling:.2f}"
                f" of the ceiling), pipeline thread {cpu / n * 1e6:.2f} us CPU a tick"
            )


if __name__ == "__main__":
    main()
