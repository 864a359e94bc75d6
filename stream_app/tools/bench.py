"""``stcast bench``: the performance figures, measured in one run on this machine.

(a) the inference ceiling: windows per second through the ONNX forecaster at the configured
batch size; (b) faust's consume-only ceiling on the embedded broker, same faust configuration and
micro-batching as the worker; (c) a real worker process end to end with single-tick messages and
(d) with tick batches: ticks per second and tick-to-forecast latency quantiles from the worker's
own histogram. The same run measures the bundled universal model's inference ceiling and its
end to end on tick batches (keyed by network, with the PEMS08 graph: neighbours live), under
the key ``universal``. Every run reads the same PEMS08 flows, preloaded into its topic, so that the
replayer does not compete with the worker for the two cores while it is timed.

On a small shared machine one run varies by 15-20 % (end to end on tick batches, by up to 30 %),
so (a) to (d) are run ``repeat`` times, interleaved, each on fresh topics, and the medians are
reported and compared; the universal model's figures come from one run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bundled import UNIVERSAL, model_path
from ..core.forecasters import WindowBatch
from ..core.onnx_forecaster import OnnxForecaster
from ..kafka.topics import ensure_topics_sync
from ..offline.datasets import GridDataset, bundled_dataset_path, load_dataset
from ..settings import Settings
from .broker import EmbeddedBroker
from .replay import replay
from .services import WorkerProcess, child_env, histogram_quantile, scrape, wait_until

LATENCY = "stcast_tick_to_forecast_seconds"
INFERENCE = "stcast_inference_seconds"
WINDOWS = "stcast_batch_size"  # windows per inference call
POLL_S = 0.2


def run_bench(
    settings: Settings, *, as_json: bool, steps: int | None = None, repeat: int = 3
) -> int:
    dataset = load_dataset(bundled_dataset_path())
    steps = min(steps or dataset.n_steps, dataset.n_steps)
    with tempfile.TemporaryDirectory(prefix="stcast-bench-") as tmp:
        model_dir = settings.model_path or _seed_model(Path(tmp) / "model", dataset)
        settings = settings.replace(model_dir=str(model_dir), log_level="warning")
        report = measure(settings, dataset, steps, repeat)
    print(json.dumps(report, indent=2) if as_json else format_table(report))
    return 0


def measure(settings: Settings, dataset: GridDataset, steps: int, repeat: int) -> dict[str, Any]:
    forecaster = OnnxForecaster(
        Path(settings.model_dir), provider=settings.provider, threads=settings.inference_threads
    )
    report: dict[str, Any] = {
        "provider": forecaster.provider,
        "batch_size": settings.batch_size,
        "repeat": repeat,
        "ticks": steps * dataset.n_sensors,
    }
    with EmbeddedBroker() as broker:
        settings = settings.replace(bootstrap_servers=broker.bootstrap_servers)
        # a tick batch answered by one forecast batch record (STCAST_FORECAST_RECORDS=batch)
        answered = settings.replace(forecast_records="batch")
        window = forecaster.window
        ceilings, faust, singles, batches = [], [], [], []
        for run in range(repeat):
            ceilings.append({"ticks_per_s": inference_ceiling(forecaster, dataset, settings)})
            faust.append(faust_ceiling(settings, dataset, steps, run))
            singles.append(end_to_end(settings, dataset, steps, window, "single", run))
            batches.append(end_to_end(answered, dataset, steps, window, "batched", run))
        report["inference_ceiling"] = _median(ceilings)
        report["faust_ceiling"] = _median(faust)
        report["single"] = _median(singles)
        report["batched"] = _median(batches)
        report["universal"] = measure_universal(settings, dataset, steps)
    report["ratio_single"] = (
        report["single"]["ticks_per_s"] / report["faust_ceiling"]["ticks_per_s"]
    )
    report["ratio_batched"] = (
        report["batched"]["ticks_per_s"] / report["inference_ceiling"]["ticks_per_s"]
    )
    return report


def measure_universal(settings: Settings, dataset: GridDataset, steps: int) -> dict[str, Any]:
    """The bundled universal model: its inference ceiling, and a worker on tick batches."""
    path = model_path(UNIVERSAL)
    forecaster = OnnxForecaster(
        path, provider=settings.provider, threads=settings.inference_threads, step_s=dataset.step_s
    )
    graph = bundled_dataset_path().parent / "PEMS08.csv"
    served = settings.replace(
        model_dir=str(path),
        step_s=dataset.step_s,
        graph=str(graph),
        keyed="network",
        network=dataset.name,
        forecast_records="batch",
    )
    ceiling = inference_ceiling(forecaster, dataset, settings)
    batched = end_to_end(served, dataset, steps, forecaster.card.warmup, "universal", 0)
    return {
        "model": forecaster.model_id,
        "inference_ceiling": {"ticks_per_s": ceiling},
        "batched": batched,
        "ratio_batched": batched["ticks_per_s"] / ceiling,
    }


def inference_ceiling(
    forecaster: OnnxForecaster, dataset: GridDataset, settings: Settings
) -> float:
    """Windows per second through the forecaster alone, in batches of ``batch_size``."""
    flows, times = dataset.values[:, :, 0], dataset.timestamps()
    rng = np.random.default_rng(0)
    ends = rng.integers(forecaster.window, dataset.n_steps, settings.batch_size)
    sensors = rng.integers(0, dataset.n_sensors, settings.batch_size)
    rows = np.stack(
        [flows[e - forecaster.window : e, s] for e, s in zip(ends, sensors, strict=True)]
    )
    batch = WindowBatch(rows, times[ends - 1], tuple(dataset.sensors[s] for s in sensors))
    forecaster.forecast(batch)  # warm-up
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < 3.0:
        forecaster.forecast(batch)
        calls += 1
    return calls * settings.batch_size / (time.perf_counter() - started)


def faust_ceiling(
    settings: Settings, dataset: GridDataset, steps: int, run: int = 0
) -> dict[str, float]:
    """Messages per second a counting-only agent of the worker's faust app reads."""
    topic = f"bench.faust.{run}.ticks"
    _preload(settings, dataset, topic, steps, batched=False)
    env = _env(settings.replace(ticks_topic=topic, group_id=f"bench-faust-{run}"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ceiling.json"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "stream_app.tools.faust_ceiling",
                str(steps * dataset.n_sensors),
                out,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if not out.exists():
            raise RuntimeError(f"the faust ceiling run failed: {done.stdout[-2000:]}")
        figures: dict[str, float] = json.loads(out.read_text())
    return figures


def end_to_end(
    settings: Settings, dataset: GridDataset, steps: int, window: int, kind: str, run: int = 0
) -> dict[str, float]:
    """A worker process on preloaded ticks: throughput from its counters, latency quantiles."""
    topics = {name: f"bench.{kind}.{run}.{name}" for name in ("ticks", "forecasts", "dlq")}
    _preload(settings, dataset, topics["ticks"], steps, batched=kind != "single")
    worker_settings = settings.replace(
        ticks_topic=topics["ticks"],
        forecasts_topic=topics["forecasts"],
        dlq_topic=topics["dlq"],
        group_id=f"bench-{kind}-{run}",
    )
    expected = (steps - window + 1) * dataset.n_sensors
    with WorkerProcess(_settings_dict(worker_settings)) as worker:
        first: dict[str, float] = {}
        # Scrapes cost the worker CPU: poll at 5 Hz, an error of at most 0.2 s over the run.
        if not wait_until(lambda: _first_ticks(worker.metrics_url, first), 120, POLL_S):
            raise RuntimeError(f"the {kind} worker read no tick in 120 s")
        done: dict[str, Any] = {}
        if not wait_until(lambda: _all_forecasts(worker.metrics_url, expected, done), 600, POLL_S):
            raise RuntimeError(f"the {kind} worker did not produce {expected} forecasts")
        ticks_per_s = (done["ticks"] - first["ticks"]) / (done["at"] - first["at"])
        samples = done["samples"]
        inferred_s = samples.get(f"{INFERENCE}_sum", 0.0)
        return {
            "ticks_per_s": ticks_per_s,
            "p50_s": histogram_quantile(samples, LATENCY, 0.5),
            "p99_s": histogram_quantile(samples, LATENCY, 0.99),
            # windows per second of the worker's own inference calls: against the ceiling, how
            # fast inference runs inside the worker (it shares the cores with the rest)
            "inference_windows_per_s": (
                samples.get(f"{WINDOWS}_sum", 0.0) / inferred_s if inferred_s else 0.0
            ),
        }


def _median(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Per figure, the median over runs; the runs' throughputs are kept beside it."""
    median: dict[str, Any] = {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
    median["runs_ticks_per_s"] = [run["ticks_per_s"] for run in runs]
    return median


def _first_ticks(url: str, into: dict[str, float]) -> bool:
    ticks = scrape(url).get("stcast_ticks_total", 0.0)
    if ticks > 0:
        into.update(ticks=ticks, at=time.perf_counter())
    return ticks > 0


def _all_forecasts(url: str, expected: int, into: dict[str, Any]) -> bool:
    at = time.perf_counter()
    samples = scrape(url)
    if samples.get("stcast_forecasts_total", 0.0) < expected:
        return False
    into.update(ticks=samples["stcast_ticks_total"], at=at, samples=samples)
    return True


def _preload(
    settings: Settings, dataset: GridDataset, topic: str, steps: int, batched: bool
) -> None:
    ensure_topics_sync(settings.bootstrap_servers, {topic: settings.partitions})
    asyncio.run(
        replay(
            settings.bootstrap_servers,
            topic,
            dataset,
            batched=batched,
            steps=steps,
            network=None,
            progress=False,
        )
    )


def _settings_dict(settings: Settings) -> dict[str, Any]:
    return {k: v for k, v in vars(settings).items() if k != "metrics_port"}


def _env(settings: Settings) -> dict[str, str]:
    return child_env(vars(settings))


def _seed_model(out_dir: Path, dataset: GridDataset) -> Path:
    try:
        from export.onnx_graphs import build_seed_lstm
    except ImportError as exc:
        raise RuntimeError(
            "stcast bench needs a model: pass --model-dir, or install the 'train' or 'dev' extra "
            "(it builds an untrained LSTM of the seed architecture with onnx)"
        ) from exc
    flows = dataset.values[:, :, 0]
    return build_seed_lstm(
        out_dir,
        sensors=dataset.sensors,
        step_s=dataset.step_s,
        mean=float(flows.mean()),
        std=float(flows.std()),
    )


def format_table(report: dict[str, Any]) -> str:
    def row(name: str, part: dict[str, float]) -> str:
        latency = (
            f"{part['p50_s'] * 1000:9.1f} {part['p99_s'] * 1000:9.1f}" if "p50_s" in part else ""
        )
        inside = part.get("inference_windows_per_s")
        inference = f"  inference inside the worker {inside:,.0f} windows/s" if inside else ""
        return f"{name:<34}{part['ticks_per_s']:>12,.0f} {latency}{inference}"

    lines = [
        f"stcast bench: {report['ticks']:,} PEMS08 ticks a run, batch size "
        f"{report['batch_size']}, provider {report['provider']}; (a) to (d): median of "
        f"{report['repeat']} interleaved runs",
        f"{'':<34}{'ticks/s':>12} {'p50 ms':>9} {'p99 ms':>9}",
        row("(a) inference ceiling", report["inference_ceiling"]),
        row("(b) faust consume-only ceiling", report["faust_ceiling"]),
        row("(c) end to end, single ticks", report["single"]),
        row("(d) end to end, tick batches", report["batched"]),
        f"ratio (c)/(b) {report['ratio_single']:.2f}   (d)/(a) {report['ratio_batched']:.2f}",
    ]
    universal = report.get("universal")
    if universal:
        lines += [
            f"universal model ({universal['model']}, neighbours from the PEMS08 graph):",
            row("(e) inference ceiling", universal["inference_ceiling"]),
            row("(f) end to end, tick batches", universal["batched"]),
            f"ratio (f)/(e) {universal['ratio_batched']:.2f}",
        ]
    return "\n".join(lines)
