"""The worker's pure core in one process, without Kafka: where a tick's time goes.

    python benchmarks/hot_path.py [--model-dir DIR] [--steps N] [--profile single|batched]
                                  [--partitions N]

Feeds the bundled PEMS08 flows, encoded exactly as ``stcast replay`` sends them, to the
pipeline the worker builds (drift, readings monitors and all), and prints ticks per second for
single-tick messages and for tick batches beside the model's inference ceiling on the same
windows, and the CPU the pipeline's thread spent a tick. With ``--profile`` it prints
cProfile's top functions for that kind of message. Micro-batches are in time order, a step's
ticks together; with ``--partitions N`` single ticks come as a worker behind on N topic
partitions reads them, an equal share of each partition interleaved (``serving.incoming``),
and with ``--partitions -N`` as aiokafka alone would give them, one partition a micro-batch:
each sensor then comes many times a micro-batch, and settling costs per generation
(docs/performance.md, 2026-12-07, last).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry

from stream_app.assembly import build_core
from stream_app.core.metrics import Metrics
from stream_app.core.onnx_forecaster import OnnxForecaster
from stream_app.core.records import Incoming
from stream_app.kafka.serving import incoming
from stream_app.kafka.worker import GIL_SWITCH_INTERVAL_S
from stream_app.offline.datasets import GridDataset, bundled_dataset_path, load_dataset
from stream_app.settings import Settings
from stream_app.tools.bench import _seed_model, inference_ceiling
from stream_app.tools.replay import encode_step


def messages(
    dataset: GridDataset, steps: int, batched: bool, size: int, partitions: int = 0
) -> list[list[Incoming]]:
    """Micro-batches as the worker consumes them: ``size`` messages each (see the module's
    docstring for ``partitions``)."""
    pairs = [pair for t in range(steps) for pair in encode_step(dataset, t, batched=batched)]
    if batched or not partitions:
        flat = [Incoming("ticks", 0, n, key, value) for n, (key, value) in enumerate(pairs)]
        return [flat[i : i + size] for i in range(0, len(flat), size)]
    ids = list(range(abs(partitions)))
    rule = DefaultPartitioner()
    owned: dict[int, list[Incoming]] = {p: [] for p in ids}
    for key, value in pairs:
        p = rule(key, ids, ids)
        owned[p].append(Incoming("ticks", p, len(owned[p]), key, value))
    share = size if partitions < 0 else size // partitions
    rounds = range(0, max(len(m) for m in owned.values()), share)
    if partitions < 0:  # one partition's share after another
        return [owned[p][i : i + share] for i in rounds for p in ids if owned[p][i : i + share]]
    return [
        incoming({TopicPartition("ticks", p): owned[p][i : i + share] for p in ids})[0]
        for i in rounds
    ]


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
    parser.add_argument("--partitions", type=int, default=0)
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
                dataset, args.steps, kind == "batched", settings.micro_batch_messages,
                args.partitions,
            )  # fmt: skip
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
