"""The demo's report: what was served from when, how each version did against persistence and
seasonal naive on the same targets, and what version 1 would have done on its successors'."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..core.forecasters import season_steps
from ..loop.registry import Registry, Version
from ..offline.datasets import GridDataset
from ..offline.model_inputs import Neighbours

REPORTED_HORIZONS = (1, 3, 6, 12)


@dataclass
class Observed:
    """What the demo read back from the topics."""

    forecasts: dict[tuple[str, int], tuple[list[float], str]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    swaps: list[tuple[str, int]] = field(default_factory=list)  # (model, first data step)
    newest_step: int = -1
    # the served 0.1-0.9 interval at the last reported horizon (+60 min at 5-minute steps)
    bounds: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    retrains: list[str] = field(default_factory=list)  # the retrain worker's outcome lines
    canaries: list[str] = field(default_factory=list)  # the worker's canary verdicts


def retrain_outcomes(log_path: Path) -> list[str]:
    """The retrain worker's one line per event (published, rejected, skipped or rolled back,
    and why)."""
    return _log_lines(log_path, "retraining: retrain event ")


def canary_verdicts(log_path: Path) -> list[str]:
    """The worker's one line per canary verdict (after a swap) or trial (before one): the new
    model against the one it replaces."""
    return [
        line
        for line in _log_lines(log_path, "pipeline: ")
        if line.startswith(("canary of ", "trial of ")) and " targets: MAE " in line
    ]


def _log_lines(log_path: Path, marker: str) -> list[str]:
    if not log_path.is_file():
        return []
    lines = log_path.read_text(errors="replace").splitlines()
    return [line.split(marker, 1)[1] for line in lines if marker in line]


def served_periods(
    forecasts: dict[tuple[str, int], tuple[list[float], str]],
) -> list[tuple[str, int]]:
    """(model, first data step) of each period one model served: the model that made most of
    a step's forecasts serves it. Read from the forecasts' own steps, not their arrival, so
    that partitions read a little out of step around a swap do not show it two or three times.

    >>> made = {(s, 1): "m@1" for s in "abc"} | {("a", 2): "m@2", ("b", 2): "m@1", ("c", 2): "m@1"}
    >>> made |= {(s, 3): "m@2" for s in "abc"} | {("c", 4): "m@1"}  # late arrivals count too
    >>> served_periods({key: ([], model) for key, model in made.items()})
    [('m@1', 1), ('m@2', 3), ('m@1', 4)]
    """
    by_step: dict[int, Counter[str]] = defaultdict(Counter)
    for (_, step), (_, model) in forecasts.items():
        by_step[step][model] += 1
    periods: list[tuple[str, int]] = []
    for step in sorted(by_step):
        model = by_step[step].most_common(1)[0][0]
        if not periods or periods[-1][0] != model:
            periods.append((model, step))
    return periods


def demo_report(
    dataset: GridDataset,
    steps: int,
    observed: Observed,
    registry: Registry,
    seconds: float,
    neighbours: Neighbours | None = None,
) -> dict[str, Any]:
    """Accuracy per model version against persistence, the loop's events, the timings."""
    truth = dataset.values[:, :, 0]
    column = {sensor: i for i, sensor in enumerate(dataset.sensors)}
    season = season_steps(dataset.step_s)
    errors: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (sensor, step), (values, model) in observed.forecasts.items():
        n = column[sensor]
        for h in REPORTED_HORIZONS:
            target, back = step + h, season * -(-h // season)
            if target >= len(truth) or target - back < 0:
                continue
            actual, earlier = truth[target, n], truth[target - back, n]
            if actual != 0 and np.isfinite(actual) and np.isfinite(earlier):
                errors[model][h].append(abs(values[h - 1] - actual))
                errors[f"persistence, same targets as {model}"][h].append(
                    abs(truth[step, n] - actual)
                )
                errors[f"seasonal naive, same targets as {model}"][h].append(abs(earlier - actual))
    served = served_periods(observed.forecasts)
    first = served[0][0] if served else ""
    if first and any(model != first for model, _ in served):
        name, version = first.split("@")
        kept = registry.get(name, version)
        _what_the_first_would_have_done(dataset, observed, kept, errors, neighbours)
    coverage: dict[str, list[bool]] = defaultdict(list)
    h = REPORTED_HORIZONS[-1]
    for (sensor, step), (low, high) in observed.bounds.items():
        if step + h < len(truth):
            actual = truth[step + h, column[sensor]]
            if actual != 0 and np.isfinite(actual):
                coverage[observed.forecasts[(sensor, step)][1]].append(low <= actual <= high)
    accuracy = {
        name: {lead(h * dataset.step_s): round(float(np.mean(by[h])), 2) for h in sorted(by)}
        for name, by in sorted(errors.items())
    }
    return {
        "dataset": dataset.name,
        "channel": dataset.channels[0],
        "steps": steps,
        "forecasts": len(observed.forecasts),
        "seconds": round(seconds, 1),
        "mae": accuracy,
        "interval_coverage": {
            "horizon": lead(h * dataset.step_s),
            **{model: round(float(np.mean(inside)), 3) for model, inside in coverage.items()},
        },
        "drift_events": [
            {"detected_at": e["detected_at"], "sensors": len(e["sensors"]), "model": e["model"]}
            for e in observed.events
            if e.get("reason") != "rollback"
        ],
        "retrains": observed.retrains,
        "canaries": observed.canaries,
        "rollbacks": [e["evidence"] for e in observed.events if e.get("reason") == "rollback"],
        "models_published": [
            {"model": u["model"], "validation": u.get("validation", {})} for u in observed.updates
        ],
        "published_after_the_end": _published_unread(observed),
        "served": [{"model": m, "from": step_time(dataset, step)} for m, step in served],
        "on_trial_at_end": _on_trial(observed, served),
        "registry_versions": registry.versions(first.split("@")[0]) if first else [],
        "network_versions": {
            name: registry.versions(name)
            for name in registry.names()
            if not first.startswith(f"{name}@")
        },
    }


def _what_the_first_would_have_done(
    dataset: GridDataset,
    observed: Observed,
    first: Version,
    errors: dict[str, dict[int, list[float]]],
    neighbours: Neighbours | None,
) -> None:
    """Version 1's errors on the targets later versions served: was the swap worth it?"""
    from ..core.onnx_forecaster import OnnxForecaster
    from ..offline.eval_baselines import Samples
    from ..offline.evaluation import ModelInputs, model_forecasts

    forecaster = OnnxForecaster(first.path, provider="cpu", step_s=dataset.step_s)
    truth = dataset.values[:, :, 0]
    column = {sensor: i for i, sensor in enumerate(dataset.sensors)}
    pairs = [(s, t, m) for (s, t), (_, m) in observed.forecasts.items() if m != first.model_id]
    pairs = [
        (s, t, m) for s, t, m in pairs if t >= forecaster.window - 1 or forecaster.card.quantiles
    ]
    if not pairs:
        return
    ends = np.array([t for _, t, _ in pairs], dtype=np.int64)
    sensors = np.array([column[s] for s, _, _ in pairs], dtype=np.int64)
    width = 1 if forecaster.card.quantiles else forecaster.window  # a universal model reads more
    inputs = np.stack([truth[t - width + 1 : t + 1, n] for t, n in zip(ends, sensors, strict=True)])
    targets = np.full((len(pairs), forecaster.horizon), np.nan)
    samples = Samples(inputs, targets, ends, sensors, 0)
    predicted = model_forecasts(forecaster, dataset, samples, inputs=ModelInputs(truth, neighbours))
    for (sensor, step, model), row in zip(pairs, predicted, strict=True):
        for h in REPORTED_HORIZONS:
            target = step + h
            if target < len(truth) and truth[target, column[sensor]] != 0:
                actual = truth[target, column[sensor]]
                errors[f"{first.model_id} kept, same targets as {model}"][h].append(
                    abs(row[h - 1] - actual)
                )


def lead(seconds: int) -> str:
    """A forecast's lead as a person says it: ``+60 min``, ``+6 h``, ``+3 days``."""
    if seconds < 2 * 3_600 or seconds % 3_600:
        return f"+{seconds // 60} min"
    if seconds < 2 * 86_400 or seconds % 86_400:
        return f"+{seconds // 3_600} h"
    return f"+{seconds // 86_400} days"


def _published_unread(observed: Observed) -> list[str]:
    """Versions the retrain worker's log says it published whose announcement the demo had
    not read when the stream ended (a retrain that finished in the last seconds)."""
    announced = {u["model"] for u in observed.updates}
    named = (line.split(": published ", 1)[1].split()[0] for line in observed.retrains
             if ": published " in line)  # fmt: skip
    return [model for model in named if model not in announced]


def published(observed: Observed) -> list[str]:
    """The versions announced as new (a rollback's announcement of an old one aside)."""
    return [u["model"] for u in observed.updates if "rollback" not in u.get("validation", {})]


def _on_trial(observed: Observed, served: list[tuple[str, int]]) -> list[str]:
    """Versions published that had neither served nor been judged when the stream ended: still
    in their trial (they would serve only after it)."""
    judged = {line.split()[2] for line in observed.canaries}  # "trial of NEW against OLD ..."
    done = judged | {model for model, _ in served}
    return [model for model in published(observed) if model not in done]


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"demo report: {report['forecasts']:,} forecasts over {report['steps']} steps of "
        f"{report['dataset']} in {report['seconds']:.0f} s",
        "served: " + ", ".join(f"{s['model']} from {s['from']}" for s in report["served"]),
        f"drift events: {len(report['drift_events'])}; models published: "
        + (", ".join(m["model"] for m in report["models_published"]) or "none"),
        *(f"  retrain event {line}" for line in report["retrains"]),
        *(f"  {line}" for line in report["canaries"]),
        *(
            f"  {model}: still in its trial when the stream ended"
            for model in report.get("on_trial_at_end", [])
        ),
        *(
            f"  {model}: published as the stream ended, never tried"
            for model in report.get("published_after_the_end", [])
        ),
        f"MAE ({report.get('channel', 'readings')}, zero readings ignored):",
    ]
    width = max(map(len, report["mae"]), default=0)
    for name, by in report["mae"].items():
        lines.append(f"  {name:<{width}} " + "  ".join(f"{k} {v:6.2f}" for k, v in by.items()))
    coverage = dict(report.get("interval_coverage", {}))
    horizon = coverage.pop("horizon", "")
    if coverage:
        lines.append(
            f"0.1-0.9 interval as served, share of the readings it held at {horizon}: "
            + ", ".join(f"{model} {share:.1%}" for model, share in coverage.items())
        )
    return "\n".join(lines)


def step_time(dataset: GridDataset, step: int) -> str:
    when = datetime.fromtimestamp(int(dataset.timestamps()[step]), dataset.start.tzinfo)
    return f"{when:%a %d %b %H:%M}"


def epoch_s(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp())
