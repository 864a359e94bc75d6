"""Running stcast services as real processes, for the demo, the benchmark and the tests.

A ``WorkerProcess`` is ``python -m stream_app worker`` (or ``retrain-worker``) with its settings
passed as ``STCAST_*`` variables, exactly as an operator would start one; ``scrape`` reads its
Prometheus endpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families

from ..settings import env_name
from .broker import free_port


class WorkerProcess:
    """A worker subprocess (``verb``: ``worker`` or ``retrain-worker``); its Prometheus endpoint
    is on a free loopback port."""

    def __init__(
        self, settings: Mapping[str, Any], log_path: Path | None = None, verb: str = "worker"
    ) -> None:
        self.metrics_port = int(settings.get("metrics_port") or free_port())
        self.settings = {**settings, "metrics_port": self.metrics_port}
        self.log_path = log_path
        self.verb = verb
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> WorkerProcess:
        env = child_env(self.settings)
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self._process = subprocess.Popen(
            [sys.executable, "-m", "stream_app", self.verb],
            env=env,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches the parent, which stops us
        )
        return self

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        return self._process.poll() if self._process else None

    def stop(self, timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the worker and wait; kill it if it does not exit in time. Return its status."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log:
            self._log.close()
        return process.returncode

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def child_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """This process's environment plus ``settings`` as ``STCAST_*`` variables, for a child."""
    return {**os.environ, **{env_name(k): str(v) for k, v in settings.items()}}


def scrape(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """Every sample on a Prometheus endpoint: ``name{label="v",...}`` -> value; {} if down."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def histogram_quantile(samples: Mapping[str, float], name: str, q: float) -> float:
    """The q-quantile of a histogram, interpolated within buckets as Prometheus does."""
    buckets = sorted(
        (float(key.split('le="')[1].rstrip('"}')), value)
        for key, value in samples.items()
        if key.startswith(name + "_bucket{")
    )
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def wait_until(condition: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``condition()`` until it is true or ``timeout_s`` passes; return the last result."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())
