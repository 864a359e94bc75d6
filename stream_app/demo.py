"""``stcast demo``: the main job, on the embedded broker and the bundled real dataset.

It starts the broker, a worker process and a forecast reader, replays the dataset's flows as
ticks, shows progress and sample forecasts while they stream, and ends with the accuracy of
every forecast read back from ``stcast.forecasts``, scored here against the dataset itself
(not taken from the worker's own metric). Everything it started is stopped on the way out,
Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer

from .broker import EmbeddedBroker
from .datasets import GridDataset, load_dataset
from .replay import replay
from .services import WorkerProcess, scrape
from .settings import Settings
from .topics import ensure_topics_sync
from .worker import load_forecaster

REPORTED_HORIZONS = (1, 3, 6, 12)
STALL_S = 30.0  # give up waiting for the last forecasts after this long without one


@dataclass
class ForecastLog:
    """Forecasts read back from the topic, keyed by (sensor, ts) to drop duplicates."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    model: str = ""

    def add(self, record: dict[str, Any]) -> None:
        self.values[(record["sensor"], record["ts"])] = record["values"]
        self.model = record["model"]


def run_demo(settings: Settings, dataset_path: Path, *, batched: bool, steps: int | None) -> int:
    dataset = load_dataset(dataset_path)
    steps = min(steps or dataset.n_steps, dataset.n_steps)
    # the served forecaster's window (a card's or a baseline's own), checked before anything starts
    window = load_forecaster(settings.replace(step_s=dataset.step_s)).window
    print(
        f"stcast demo: {dataset.name}, {dataset.n_sensors} sensors, {steps} steps of "
        f"{dataset.step_s // 60} min, {dataset.channels[0]}"
    )
    with tempfile.TemporaryDirectory(prefix="stcast-demo-") as tmp, EmbeddedBroker() as broker:
        settings = settings.replace(bootstrap_servers=broker.bootstrap_servers)
        topics = (settings.ticks_topic, settings.forecasts_topic, settings.dlq_topic)
        ensure_topics_sync(settings.bootstrap_servers, dict.fromkeys(topics, settings.partitions))
        worker_settings = {**vars(settings), "metrics_port": 0, "step_s": dataset.step_s}
        log_path = Path(tmp) / "worker.log"
        with WorkerProcess(worker_settings, log_path=log_path) as worker:
            print(
                f"broker {broker.bootstrap_servers}, worker pid {worker.pid}, "
                f"metrics {worker.metrics_url}"
            )
            try:
                forecasts = asyncio.run(_stream(settings, dataset, steps, window, batched, worker))
            except asyncio.CancelledError:
                print("interrupted: stopping the worker and the broker")
                return 130
            finally:
                status = worker.stop()
                print(f"worker stopped (exit status {status})")
    print(accuracy_line(dataset, forecasts))
    return 0 if status == 0 else 1


async def _stream(
    settings: Settings,
    dataset: GridDataset,
    steps: int,
    window: int,
    batched: bool,
    worker: WorkerProcess,
) -> ForecastLog:
    _cancel_on_signals(asyncio.current_task())
    forecasts = ForecastLog()
    expected = (steps - window + 1) * dataset.n_sensors
    reader = asyncio.create_task(_read_forecasts(settings, forecasts, expected, dataset))
    started = time.monotonic()
    try:
        report = await replay(
            settings.bootstrap_servers,
            settings.ticks_topic,
            dataset,
            batched=batched,
            steps=steps,
            progress=False,
        )
        print(f"published {report.ticks:,} ticks in {report.seconds:.1f} s")
        await _watch(worker, reader, started, lambda: len(forecasts.values), expected)
    finally:
        reader.cancel()
        await asyncio.wait({reader}, timeout=5.0)
    return forecasts


def _cancel_on_signals(task: asyncio.Task[Any] | None) -> None:
    """Ctrl-C and SIGTERM cancel the demo's stream, so everything it started is stopped."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if task is not None:
            loop.add_signal_handler(sig, task.cancel)


async def _read_forecasts(
    settings: Settings, into: ForecastLog, expected: int, dataset: GridDataset
) -> None:
    consumer = AIOKafkaConsumer(
        settings.forecasts_topic,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    shown_sensor = dataset.sensors[0]
    try:
        while len(into.values) < expected:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    forecast = json.loads(record.value)
                    into.add(forecast)
                    if forecast["sensor"] == shown_sensor and _on_the_hour(forecast["ts"]):
                        _show(forecast)
    finally:
        await consumer.stop()


def _on_the_hour(ts: str) -> bool:
    return ts.endswith(":00:00Z") and ts[11:13] in ("00", "06", "12", "18")


def _show(forecast: dict[str, Any]) -> None:
    values = forecast["values"]
    print(
        f"  forecast {forecast['sensor']} at {forecast['ts']} ({forecast['model']}): "
        f"+5 min {values[0]:.0f}, +30 min {values[5]:.0f}, +60 min {values[-1]:.0f}"
    )


async def _watch(
    worker: WorkerProcess,
    reader: asyncio.Task[None],
    started: float,
    count: Callable[[], int],
    expected: int,
) -> None:
    """Print a progress line every two seconds until every forecast is read back."""
    last_count, last_change = -1, time.monotonic()
    while not reader.done():
        if count() != last_count:
            last_count, last_change = count(), time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            print(f"no new forecast for {STALL_S:.0f} s: {count():,} of {expected:,} arrived")
            reader.cancel()
            return
        await asyncio.wait({reader}, timeout=2.0)
        samples = await asyncio.to_thread(scrape, worker.metrics_url)
        if worker.poll() is not None:
            reader.cancel()
            raise RuntimeError(f"the worker exited with status {worker.poll()}")
        ticks = samples.get("stcast_ticks_total", 0.0)
        mae = samples.get('stcast_forecast_abs_error{horizon="12"}', float("nan"))
        print(
            f"  {time.monotonic() - started:5.1f} s  ticks {ticks:>9,.0f}  forecasts "
            f"{count():>9,}/{expected:,}  rolling MAE +60 min {mae:6.1f}"
        )
    await reader


def accuracy_line(dataset: GridDataset, forecasts: ForecastLog) -> str:
    """MAE per horizon of the forecasts against the dataset, zeros (missing readings) ignored."""
    truth = dataset.values[:, :, 0]
    column = {sensor: i for i, sensor in enumerate(dataset.sensors)}
    start_s = int(dataset.start.timestamp())
    errors: dict[int, list[float]] = {h: [] for h in REPORTED_HORIZONS}
    for (sensor, ts), values in forecasts.values.items():
        step = (_epoch_s(ts) - start_s) // dataset.step_s
        for h in REPORTED_HORIZONS:
            target = step + h
            if target < len(truth) and h <= len(values) and truth[target, column[sensor]] != 0:
                errors[h].append(abs(values[h - 1] - truth[target, column[sensor]]))
    parts = [f"+{h * dataset.step_s // 60} min {np.mean(e):.2f}" for h, e in errors.items() if e]
    return (
        f"accuracy of {len(forecasts.values):,} forecasts by {forecasts.model} "
        f"(MAE, {dataset.channels[0]}): " + ", ".join(parts)
    )


def _epoch_s(ts: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(ts).timestamp())
