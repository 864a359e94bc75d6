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
