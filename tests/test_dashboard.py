"""The Grafana dashboard against the code and against a real Prometheus server.

Every metric the dashboard names is one the code exports, every metric of DESIGN.md is
exported, and every PromQL expression of the dashboard returns data when Prometheus (Debian's
``prometheus`` package, started here on a free loopback port) scrapes a worker that serves the
seed ONNX model during a replay of PEMS08 with a few malformed messages in it.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokered import publish, topics, worker_settings
from prometheus_client import CollectorRegistry

from stream_app.core.metrics import PREFIX, SCORED_HORIZONS, Metrics, exported_names
from stream_app.offline.datasets import bundled_dataset_path, load_dataset
from stream_app.tools.broker import EmbeddedBroker, free_port
from stream_app.tools.replay import replay
from stream_app.tools.services import WorkerProcess, scrape, wait_until

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "stcast.json"
DESIGN = ROOT.parent / "shared" / "DESIGN.md"
JOB = "stcast-worker"  # the job name of docker/prometheus/prometheus.yml
SCRAPE_INTERVAL_S = 1
# what Grafana would put in place of its variables, for a 1 s scrape interval
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "5m", "$instance": ".*"}
# series that Prometheus makes itself for every target
SYNTHETIC = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
STEPS = 200
BAD_MESSAGES = [
    (b"pems08/0", b"{not json"),
    (b"pems08/1", b"\xff\xfe"),
    (b"pems08/2", b"[1, 2]"),
    (b"pems08/3", b'{"sensor": "pems08/3", "ts": "2016-07-01T00:00:00Z"}'),
]


# -- the dashboard's expressions and the names in them ------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def expressions(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, rows included."""
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner["title"], target["expr"]


def substituted(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        is_call = expr[match.end() :].lstrip().startswith("(")
        if not is_call and match.group(0).lower() not in _KEYWORDS:
            names.add(match.group(0))
    return names


def series_names(metrics: Metrics) -> set[str]:
    """The series names Prometheus stores for our metrics: histograms as their three parts."""
    names = set()
    for family in metrics.registry.collect():
        if family.type == "histogram":
            names |= {family.name + suffix for suffix in HISTOGRAM_SUFFIXES}
        else:
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def design_metric_names() -> set[str]:
    """DESIGN.md's metric list, as tests/test_metrics_contract.py reads it."""
    if not DESIGN.exists():
        pytest.skip(f"DESIGN.md not found at {DESIGN} (the shared folder beside the repository)")
    text = DESIGN.read_text(encoding="utf-8")
    section = re.search(r"^## Prometheus metrics.*?\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "DESIGN.md has no 'Prometheus metrics' section"
    names = re.findall(r"`([a-z_]+)(?:\{[a-z_,]*\})?`(?! label)", section.group(1))
    return {f"{PREFIX}_{name}" for name in names}


def test_metric_names_are_parsed_out_of_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(stcast_x_bucket{instance=~"a"}[5m]))) '
        "/ on (job) group_left sum(up) or vector(1e3) * scalar(b_total offset 1m) > bool 0"
    )
    assert metric_names(expr) == {"stcast_x_bucket", "up", "b_total"}


def test_every_metric_in_the_dashboard_is_exported_by_the_code() -> None:
    exported = series_names(Metrics(CollectorRegistry()))
    board = dashboard()
    used = set().union(*(metric_names(expr) for _, expr in expressions(board)))
    assert used - SYNTHETIC, "the dashboard queries no metric"
    assert used - SYNTHETIC <= exported, f"not exported: {sorted(used - SYNTHETIC - exported)}"
    # template variables and anything else in the file that looks like ours
    mentioned = set(re.findall(rf"\b{PREFIX}_[a-z0-9_]+", DASHBOARD.read_text()))
    assert mentioned <= exported, f"not exported: {sorted(mentioned - exported)}"


def test_every_metric_of_design_md_is_exported_and_on_the_dashboard() -> None:
    metrics = Metrics(CollectorRegistry())
    documented = design_metric_names()
    assert len(documented) == 17
    assert documented <= exported_names(metrics), documented - exported_names(metrics)
    used = set().union(*(metric_names(expr) for _, expr in expressions(dashboard())))
    bare = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert documented <= used | bare, f"not on the dashboard: {documented - used - bare}"


# -- a real Prometheus scraping a real worker ---------------------------------------------------


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """The Prometheus server binary; the test is skipped when it is not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no `prometheus` on PATH: install Debian's prometheus package to run it")
    return binary


class PrometheusServer:
    """A Prometheus process scraping ``targets`` every second, with its own storage."""

    def __init__(self, binary: str, targets: list[str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s"},
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = workdir / "prometheus.log"
        self.command = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if not wait_until(self._ready, 30, interval_s=0.2):
            self.__exit__()
            pytest.fail(f"Prometheus did not become ready:\n{self.log_path.read_text()[-2000:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            pytest.fail(f"Prometheus exited:\n{self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else math.nan


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    return [v for v in (float(s["value"][1]) for s in result) if math.isfinite(v)]


@pytest.mark.integration
def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    prometheus_binary: str, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    names = topics(broker)
    # the default model (universal) gives intervals, so the coverage panel has data too
    settings = worker_settings(broker, names, model_dir="", step_s=300)
    dataset = load_dataset(bundled_dataset_path())
    sent = STEPS * dataset.n_sensors + len(BAD_MESSAGES)
    with (
        WorkerProcess(settings, log_path=tmp_path / "worker.log") as worker,
        PrometheusServer(prometheus_binary, [f"127.0.0.1:{worker.metrics_port}"], tmp_path) as prom,
    ):
        asyncio.run(publish(broker.bootstrap_servers, names["ticks"], BAD_MESSAGES))
        # paced over about ten seconds, so that the rates span several scrapes
        speed = STEPS * dataset.step_s / 10
        asyncio.run(
            replay(
                broker.bootstrap_servers,
                names["ticks"],
                dataset,
                steps=STEPS,
                speed=speed,
                network="pems08",
                progress=False,
            )
        )
        assert wait_until(
            lambda: scrape(worker.metrics_url).get("stcast_ticks_total") == sent, 60, 0.5
        ), f"the worker did not read all {sent} messages:\n{_tail(tmp_path / 'worker.log')}"
        # Prometheus has scraped the final counts
        assert wait_until(lambda: prom.value("sum(stcast_ticks_total)") == sent, 20, 0.5)
        results = {
            (title, expr): prom.query(substituted(expr)) for title, expr in expressions(dashboard())
        }
        variables = {
            variable["name"]: prom.api(f"label/{label}/values", **{"match[]": metric})
            for variable in dashboard()["templating"]["list"]
            for metric, label in [label_values(variable["definition"])]
        }
        stored = set(prom.api("label/__name__/values"))
        malformed = prom.value('sum(stcast_rejected_ticks_total{reason="malformed"})')
        missing = prom.value('sum(stcast_rejected_ticks_total{reason="missing_field"})')
        providers = {s["metric"]["provider"] for s in prom.query("stcast_model_info")}
        mae = prom.query("stcast_forecast_abs_error")
        baseline = prom.query("stcast_baseline_abs_error")
        # every tick was read: once Prometheus has a fresh lag figure, nothing is left to read
        caught_up = wait_until(
            lambda: prom.value("sum(stcast_consumer_lag_messages)") == 0, 20, 0.5
        )
        lag = prom.query("stcast_consumer_lag_messages")
        assert worker.poll() is None, _tail(tmp_path / "worker.log")

    empty = [f"{title}: {expr}" for (title, expr), result in results.items() if not result]
    assert not empty, "queries without data:\n" + "\n".join(empty)
    no_number = [
        f"{title}: {expr} -> {result}"
        for (title, expr), result in results.items()
        if not finite_values(result)
    ]
    assert not no_number, "queries without a finite value:\n" + "\n".join(no_number)

    assert variables == {"instance": [f"127.0.0.1:{worker.metrics_port}"]}
    exported = series_names(Metrics(CollectorRegistry()))
    assert exported <= stored, f"exported but never scraped: {sorted(exported - stored)}"
    assert (malformed, missing) == (3, 1)
    assert len(providers) == 1 and providers <= {"CPUExecutionProvider", "CUDAExecutionProvider"}
    assert {int(s["metric"]["horizon"]) for s in mae} == set(SCORED_HORIZONS)
    assert {int(s["metric"]["horizon"]) for s in baseline} == set(SCORED_HORIZONS)
    assert all(0 < v < math.inf for v in finite_values(baseline))
    # one worker owns every partition of the 4-partition ticks topic
    assert {s["metric"]["partition"] for s in lag} == {"0", "1", "2", "3"}
    assert caught_up, lag


def label_values(definition: str) -> tuple[str, str]:
    """(metric, label) of a Grafana variable query ``label_values(metric, label)``."""
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", definition)
    assert match, f"a variable query the test cannot evaluate: {definition}"
    return match.group(1), match.group(2)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
