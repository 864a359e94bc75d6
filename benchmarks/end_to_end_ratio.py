"""A worker end to end against the inference ceiling measured just before it, round by round.

    python benchmarks/end_to_end_ratio.py [--rounds 4] [--kind batched|single] [--model-dir DIR]

This machine's own speed drifts by 25 % and more within minutes, so a change is judged by
alternating runs of two trees (e.g. ``git worktree add /tmp/before HEAD~1`` and running this
script there with ``PYTHONPATH=/tmp/before``) and by each run's ratio to the ceiling measured
in the same round, not by one ``stcast bench``. Each round prints the ceiling (windows per
second at the batch size, one thread), the worker's ticks per second on the bundled PEMS08
flows (tick batches answered by forecast batches, or single ticks) through an embedded broker,
their ratio and the p99 latency; the last line gives the means.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from stream_app.core.onnx_forecaster import OnnxForecaster
from stream_app.offline.datasets import bundled_dataset_path, load_dataset
from stream_app.settings import Settings
from stream_app.tools.bench import _seed_model, end_to_end, inference_ceiling
from stream_app.tools.broker import EmbeddedBroker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--kind", choices=("batched", "single"), default="batched")
    parser.add_argument("--model-dir", help="an ONNX model (default: the seed LSTM, untrained)")
    args = parser.parse_args()
    dataset = load_dataset(bundled_dataset_path())
    model_dir = Path(args.model_dir or _seed_model(Path(tempfile.mkdtemp()) / "seed", dataset))
    forecaster = OnnxForecaster(model_dir, provider="cpu", threads=1)
    settings = Settings.from_env().replace(model_dir=str(model_dir), log_level="warning")
    if args.kind == "batched":
        settings = settings.replace(forecast_records="batch")
    rounds: list[tuple[float, float, float]] = []
    with EmbeddedBroker() as broker:
        settings = settings.replace(bootstrap_servers=broker.bootstrap_servers)
        for run in range(args.rounds):
            ceiling = inference_ceiling(forecaster, dataset, settings)
            measured = end_to_end(settings, dataset, dataset.n_steps, 12, args.kind, run)
            ticks, p99 = measured["ticks_per_s"], measured["p99_s"]
            rounds.append((ticks, ceiling, p99))
            print(
                f"round {run + 1}: ceiling {ceiling:,.0f} windows/s, {args.kind} {ticks:,.0f} "
                f"ticks/s, ratio {ticks / ceiling:.3f}, p99 {p99 * 1000:.1f} ms",
                flush=True,
            )
    print(
        f"mean: {statistics.mean(r[0] for r in rounds):,.0f} ticks/s, ratio "
        f"{statistics.mean(r[0] / r[1] for r in rounds):.3f}, "
        f"median p99 {statistics.median(r[2] for r in rounds) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
