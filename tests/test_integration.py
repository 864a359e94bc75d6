"""Broker-backed integration: the embedded broker, a real worker process, real PEMS08 data.

What comes back from ``stcast.forecasts`` and ``stcast.dlq`` is checked against expectations
derived from the data alone (the window rule: a forecast for every good tick whose last 12 steps
are present or fillable), never against a second run of the pipeline.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from brokered import epoch_s, publish, read_all, topics, worker_settings

from stream_app.core.forecasters import WindowBatch
from stream_app.core.onnx_forecaster import OnnxForecaster
from stream_app.offline.datasets import GridDataset, bundled_dataset_path, load_dataset
from stream_app.tools.broker import EmbeddedBroker
from stream_app.tools.replay import encode_step, replay
from stream_app.tools.services import WorkerProcess, scrape, wait_until

pytestmark = pytest.mark.integration

WINDOW = 12
MAX_GAP = 3
REPLACING = (
    "malformed",
    "non_utf8",
    "missing_field",
    "bad_type",
    "non_finite",
    "bad_timestamp",
    "unknown_network",
)
EXTRA = ("duplicate", "late")


@pytest.fixture(scope="module")
def pems08() -> GridDataset:
    return load_dataset(bundled_dataset_path())


# -- corrupting one message in a hundred ------------------------------------------------------


def corrupt(kind: str, key: bytes, good: bytes, t: int, dataset: GridDataset) -> bytes:
    tick = json.loads(good)
    if kind == "malformed":
        return good[: len(good) // 2]
    if kind == "non_utf8":
        return b"\xff\xfe" + good
    if kind == "missing_field":
        del tick["value"]
    elif kind == "bad_type":
        tick["value"] = str(tick["value"])
    elif kind == "non_finite":
        return good.replace(f'"value":{tick["value"]!r}'.encode(), b'"value":NaN')
    elif kind == "bad_timestamp":
        tick["ts"] = tick["ts"].replace("T", " at ")
    elif kind == "unknown_network":
        tick["network"] = "pems04"
    elif kind == "late":
        tick["ts"] = encode_step(dataset, t - 2 * WINDOW, batched=False)[0][1].decode()
        tick["ts"] = json.loads(tick["ts"])["ts"]
    return json.dumps(tick, separators=(",", ":")).encode()


def corrupted_stream(
    dataset: GridDataset, rate: float, seed: int
) -> tuple[list[tuple[bytes, bytes]], dict[str, Counter[str]], np.ndarray]:
    """All single ticks in order with ``rate`` of them corrupted; the expected DLQ; good mask."""
    rng = np.random.default_rng(seed)
    good = np.ones((dataset.n_steps, dataset.n_sensors), dtype=bool)
    messages: list[tuple[bytes, bytes]] = []
    injected: dict[str, Counter[str]] = {"reasons": Counter(), "raw": Counter()}
    kinds = REPLACING + EXTRA
    for t in range(dataset.n_steps):
        for n, (key, value) in enumerate(encode_step(dataset, t, batched=False)):
            kind = kinds[rng.integers(len(kinds))] if rng.random() < rate else None
            if kind in EXTRA and t >= 2 * WINDOW:
                messages.append((key, value))
                bad = value if kind == "duplicate" else corrupt(kind, key, value, t, dataset)
                messages.append((key, bad))
            elif kind in REPLACING:
                bad = corrupt(kind, key, value, t, dataset)
                messages.append((key, bad))
                good[t, n] = False
            else:
                messages.append((key, value))
                continue
            reason = "malformed" if kind == "non_utf8" else kind
            injected["reasons"][reason] += 1
            injected["raw"][bad.decode(errors="replace") if kind != "non_utf8" else "b64"] += 1
    return messages, injected, good


def expected_forecast_steps(good: np.ndarray) -> set[tuple[int, int]]:
    """(step, sensor) of every good tick whose window is present or fillable (the window rule).

    A maximal run of missing steps is fillable when it is at most MAX_GAP long, has a reading
    before it, and has been closed by a reading at or before the forecast step.
    """
    expected: set[tuple[int, int]] = set()
    steps, sensors = good.shape
    for n in range(sensors):
        fillable = good[:, n].copy()
        for first, end in _missing_runs(good[:, n]):
            if first > 0 and end < steps and end - first <= MAX_GAP:
                fillable[first:end] = True  # filled once the reading at `end` arrives
        for t in range(WINDOW - 1, steps):
            if good[t, n] and fillable[t - WINDOW + 1 : t + 1].all():
                expected.add((t, n))
    return expected


def _missing_runs(present: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [first, end) of False."""
    runs, t = [], 0
    while t < len(present):
        if present[t]:
            t += 1
            continue
        end = t
        while end < len(present) and not present[end]:
            end += 1
        runs.append((t, end))
        t = end
    return runs


# -- the tests ----------------------------------------------------------------------------------


def test_corrupted_replay_every_good_full_window_forecasts_every_bad_message_dead_lettered(
    broker: EmbeddedBroker, pems08: GridDataset, tmp_path: Path
) -> None:
    names = topics(broker)
    messages, injected, good = corrupted_stream(pems08, rate=0.01, seed=8)
    expected = expected_forecast_steps(good)
    bad_count = sum(injected["reasons"].values())
    assert 0.009 < bad_count / len(messages) < 0.011

    log_path = tmp_path / "worker.log"
    # persistence's own values: no error feedback, no re-anchored context
    settings = worker_settings(broker, names, drift_feedback_gain=0.0, drift_reanchor="off")
    with WorkerProcess(settings, log_path=log_path) as worker:
        asyncio.run(publish(broker.bootstrap_servers, names["ticks"], messages))
        forecasts = asyncio.run(
            read_all(broker.bootstrap_servers, names["forecasts"], len(expected), 300)
        )
        dead = asyncio.run(read_all(broker.bootstrap_servers, names["dlq"], bad_count, 60))
        samples = scrape(worker.metrics_url)
        pid_alive = worker.poll() is None
        status = worker.stop()

    assert pid_alive and status == 0
    log = log_path.read_text()
    assert "Traceback" not in log and "Restarting" not in log

    column = {sensor: n for n, sensor in enumerate(pems08.sensors)}
    start_s = int(pems08.start.timestamp())
    got: dict[tuple[int, int], list[float]] = {}
    for record in forecasts:
        forecast = json.loads(record.value)
        assert forecast["model"] == "persistence@1" and forecast["step_s"] == 300
        step = (epoch_s(forecast["ts"]) - start_s) // 300
        got[(step, column[forecast["sensor"]])] = forecast["values"]
    assert len(forecasts) == len(got) == len(expected)
    assert set(got) == expected
    flows = pems08.values[:, :, 0]
    for (t, n), values in got.items():
        assert values == [flows[t, n]] * 12  # persistence repeats the tick's own value

    reasons = Counter(json.loads(r.value)["reason"] for r in dead)
    assert reasons == injected["reasons"]
    raws = Counter(_raw(json.loads(r.value)) for r in dead)
    assert raws == injected["raw"]
    for reason, count in injected["reasons"].items():
        assert samples[f'stcast_rejected_ticks_total{{reason="{reason}"}}'] == count
    assert samples["stcast_ticks_total"] == len(messages)
    assert samples["stcast_forecasts_total"] == len(expected)


def test_batched_ticks_through_the_onnx_model_match_in_process_inference(
    broker: EmbeddedBroker, pems08: GridDataset, seed_model_dir: Path, tmp_path: Path
) -> None:
    names = topics(broker)
    steps = 120
    settings = worker_settings(broker, names, model_dir=str(seed_model_dir), step_s=0)
    with WorkerProcess(settings, log_path=tmp_path / "worker.log") as worker:
        asyncio.run(
            replay(
                broker.bootstrap_servers,
                names["ticks"],
                pems08,
                batched=True,
                steps=steps,
                network="pems08",
                progress=False,
            )
        )
        expected = (steps - WINDOW + 1) * pems08.n_sensors
        records = asyncio.run(read_all(broker.bootstrap_servers, names["forecasts"], expected, 120))
        assert wait_until(
            lambda: (
                scrape(worker.metrics_url).get(
                    "stcast_model_info{"
                    'model="seed-lstm",provider="CPUExecutionProvider",version="1"}'
                )
                == 1
            ),
            10,
        )
        assert worker.stop() == 0

    forecasts = [json.loads(r.value) for r in records]
    assert len(forecasts) == expected
    assert {f["model"] for f in forecasts} == {"seed-lstm@1"}
    reference = OnnxForecaster(seed_model_dir)
    flows, times = pems08.values[:, :, 0], pems08.timestamps()
    column = {sensor: n for n, sensor in enumerate(pems08.sensors)}
    sample = forecasts[:: max(1, len(forecasts) // 400)]
    ends = [(epoch_s(f["ts"]) - int(times[0])) // 300 for f in sample]
    rows = np.stack(
        [
            flows[e - WINDOW + 1 : e + 1, column[f["sensor"]]]
            for e, f in zip(ends, sample, strict=True)
        ]
    )
    batch = WindowBatch(rows, times[np.array(ends)], tuple(f["sensor"] for f in sample))
    want = reference.forecast(batch)
    got = np.array([f["values"] for f in sample])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)


def _raw(dead: dict[str, Any]) -> str:
    if dead.get("raw_encoding") == "base64":
        assert base64.b64decode(dead["raw"]).startswith(b"\xff\xfe")
        return "b64"
    text: str = dead["raw"]
    return text
