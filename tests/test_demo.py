"""``stcast demo`` as a user runs it: a real subprocess, a JSON report, nothing left running.

The full demo (training, the holiday, a retrain) takes minutes and is measured by hand (README);
this test streams 300 steps with a given model, so no training and no retrain happen.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_reports_every_forecast_and_leaves_no_process_or_port(seed_model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stream_app", "demo", "--model-dir", str(seed_model_dir),
         "--steps", "300", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["forecasts"] == (300 - 11) * 170  # every window of 12 steps, every sensor
    assert report["served"] == [{"model": "seed-lstm@1", "from": "Fri 01 Jul 00:55"}]
    assert report["registry_versions"] == ["1"] and report["models_published"] == []
    model = report["mae"]["seed-lstm@1"]
    naive = report["mae"]["persistence, same targets as seed-lstm@1"]
    assert list(model) == ["+5 min", "+15 min", "+30 min", "+60 min"] == list(naive)
    assert all(math.isfinite(v) and v > 0 for v in (*model.values(), *naive.values()))
    for pid in report["stopped"]["pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    host, port = report["stopped"]["broker"].rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), 2):
        pass


def test_the_report_gives_the_served_interval_coverage_per_model(tmp_path: Path) -> None:
    """The share of readings the served 0.1-0.9 interval held at +60 min, per model version."""
    from stream_app.loop.registry import Registry
    from stream_app.offline.datasets import bundled_dataset_path, load_dataset
    from stream_app.tools.demo_report import Observed, demo_report, format_report

    dataset = load_dataset(bundled_dataset_path())
    truth = dataset.values[:, :, 0]
    observed = Observed()
    for step in range(100, 110):  # @1 (sensor 0) held 10 readings of 10, @2 (sensor 1) 5
        for n, model, miss in ((0, "m@1", False), (1, "m@2", step % 2 == 1)):
            sensor, actual = dataset.sensors[n], float(truth[step + 12, n])
            observed.forecasts[(sensor, step)] = ([0.0] * 12, model)
            low = actual + 1 if miss else actual - 1
            observed.bounds[(sensor, step)] = (low, low + 2)
    report = demo_report(dataset, 300, observed, Registry(tmp_path), 1.0)
    assert report["interval_coverage"] == {"horizon": "+60 min", "m@1": 1.0, "m@2": 0.5}
    assert "at +60 min: m@1 100.0%, m@2 50.0%" in format_report(report)
