"""``stcast evaluate --online``: the loop run in-process over a dataset, three policies compared.

The dataset is streamed step by step (one tick batch per step) through the worker's own
``Pipeline`` with its drift monitors and retrain policy (``worker.build_pipeline``, the
settings' drift parameters). Truth is revealed only as the stream reaches it: a forecast is
scored when its targets arrive, and a retrain sees the readings up to the current step only.

Policies, on the same (possibly faulted) stream:

- ``frozen``: the given model throughout; its monitors' detections are the ones the detection
  figures and the after-drift windows are measured on.
- ``stcast``: error feedback on each drifting sensor (``STCAST_DRIFT_FEEDBACK_GAIN``, see
  ``feedback``) and, on each retrain event the pipeline emits, fine-tune the serving model on the
  recent readings (``models.finetuning``, the retrain worker's settings) and publish the
  challenger if it wins on the held-back newest steps, as the retrain worker does. The
  stream waits for the retrain (in stream time it is instant).
- ``periodic``: the same retrain, blindly once a day of data, whatever the monitors say.
- ``feedback``: ``stcast``'s error feedback alone, never retraining: what the fast reaction
  to drift is worth by itself.

The retrains of ``stcast`` and ``periodic`` go through the worker's canary (``STCAST_CANARY_S``,
``STCAST_CANARY_MODE``): a published challenger is on trial in the shadow first and serves only
if it did no worse (``before``, the default), or serves at once and is rolled back if found
worse (``after``), as in a worker.
``versions_served`` then compares every version that served after a swap with the one it
replaced, kept (``served_versus_kept``).

Scenarios: ``holiday`` (the data as it is: in the PEMS08 slice, the 4 July holiday) and faults
injected on a seeded random tenth of the sensors from a seeded onset: ``shift`` (+3 standard
deviations of the sensor's readings), ``stuck`` (the onset's reading repeated), ``variance``
(Gaussian noise as large as the sensor's own short-term noise: variance doubled).

Figures: MAE per horizon step over the whole stream; the MAE of forecasts made in the
``AFTER_DRIFT_STEPS`` after each of the frozen run's detections (on faulted sensors when
faults are injected), the same (sensor, step) pairs for every policy, and the frozen model's
on the same pairs of the stream without the fault (the floor of undoing the fault: a model
that follows a step by itself leaves an adaptation little to win); detection delay and
fraction on the faulted sensors, false alarms per sensor-week on the others.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from ..assembly import build_pipeline
from ..core.canary import hour_ahead_step
from ..core.card import UNIVERSAL, ModelCard
from ..core.drift import DriftSink
from ..core.metrics import Metrics
from ..core.onnx_forecaster import OnnxForecaster
from ..core.pipeline import Pipeline
from ..core.records import Incoming, format_ts
from ..core.retrain_events import ROLLBACK, Detection, RetrainEvent
from ..offline.datasets import GridDataset
from ..settings import Settings
from .history import without

SCENARIOS = ("holiday", "shift", "stuck", "variance")
POLICIES = ("frozen", "feedback", "stcast", "periodic")
AFTER_DRIFT_STEPS = 24
FAULTED_SHARE = 0.1
WEEK_S = 7 * 86_400
DAY_S = 86_400

Float64Array = npt.NDArray[np.float64]


@dataclass
class Fault:
    """Which sensors (column indices) were faulted, how, and from which step."""

    kind: str
    columns: tuple[int, ...] = ()
    onset: int = -1


@dataclass
class Run:
    """One policy's stream: forecasts (step, column) -> values, detections, retrains."""

    forecasts: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    detections: list[Detection] = field(default_factory=list)
    retrains: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    served: list[tuple[int, str]] = field(default_factory=list)  # (from step, model id)
    directory: dict[str, Path] = field(default_factory=dict)  # model id -> its directory
    versions: list[dict[str, Any]] = field(default_factory=list)  # ``served_versus_kept``


def inject(
    dataset: GridDataset, scenario: str, seed: int, warmup_steps: int
) -> tuple[GridDataset, Fault]:
    """``dataset`` with the scenario's fault on a seeded tenth of its sensors."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: expected one of {SCENARIOS}")
    if scenario == "holiday":
        return dataset, Fault(scenario)
    rng = np.random.default_rng(seed)
    n, steps = dataset.n_sensors, dataset.n_steps
    columns = np.sort(rng.choice(n, size=max(1, round(FAULTED_SHARE * n)), replace=False))
    day = DAY_S // dataset.step_s
    if steps - day <= warmup_steps:
        raise ValueError(
            f"{dataset.name} is too short for a fault: {steps} steps, the monitors warm up for "
            f"{warmup_steps} and a day must follow the onset"
        )
    onset = int(rng.integers(warmup_steps, steps - day))
    values = dataset.values.copy()
    series = values[:, columns, 0]
    if scenario == "shift":
        series[onset:] += 3 * np.nanstd(series[:onset], axis=0)
    elif scenario == "stuck":
        series[onset:] = series[onset]
    else:
        hour = max(1, 3600 // dataset.step_s)
        smooth = np.stack(
            [np.convolve(np.nan_to_num(c), np.ones(hour) / hour, mode="same") for c in series.T],
            axis=1,
        )
        noise_sd = np.nanstd((series - smooth)[hour:onset], axis=0)
        series[onset:] += rng.normal(size=series[onset:].shape) * noise_sd
    values[:, columns, 0] = series
    return replace(dataset, values=values), Fault(scenario, tuple(columns.tolist()), onset)


def evaluate_online(
    model_dir: Path,
    dataset: GridDataset,
    scenario: str,
    *,
    seed: int = 0,
    settings: Settings | None = None,
    policies: Sequence[str] = POLICIES,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Run the policies (``frozen`` always) on ``dataset`` under ``scenario``; the report."""
    unknown = set(policies) - set(POLICIES)
    if unknown:
        raise ValueError(f"unknown policies {sorted(unknown)}: expected some of {POLICIES}")
    settings = (settings or Settings()).replace(step_s=dataset.step_s)
    warmup_steps = settings.drift_warmup + 2 * _context_steps(model_dir)
    stream, fault = inject(dataset, scenario, seed, warmup_steps)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="stcast-online-") as tmp:
        for policy in [p for p in POLICIES if p == "frozen" or p in policies]:
            progress(f"{policy}: streaming {stream.n_steps} steps of {stream.name}")
            runs[policy] = stream_policy(
                policy, model_dir, stream, settings, Path(tmp) / policy, progress
            )
            if len(runs[policy].served) > 1:
                progress(f"{policy}: each version that served against the one it replaced")
                runs[policy].versions = served_versus_kept(runs[policy], stream, settings)
        fault_free = None
        if fault.onset >= 0:  # the floor of an adaptation that undid the fault exactly
            progress(f"frozen: streaming {dataset.name} without the fault")
            clean = stream_policy(
                "frozen", model_dir, dataset, settings, Path(tmp) / "fault-free", progress
            )
            fault_free = (dataset, clean)
    return report(scenario, seed, stream, fault, runs, warmup_steps, fault_free)


def stream_policy(
    policy: str,
    model_dir: Path,
    stream: GridDataset,
    settings: Settings,
    workdir: Path,
    progress: Callable[[str], None],
) -> Run:
    """One policy's pass over the stream."""
    run = Run()
    serving = model_dir
    if policy not in ("stcast", "feedback"):  # error feedback is stcast's fast reaction
        settings = settings.replace(drift_feedback_gain=0.0, drift_reanchor="off")
    pipeline = _pipeline(settings, serving, run)
    directory = {pipeline.forecaster.model_id: serving}
    run.served.append((0, pipeline.forecaster.model_id))
    column = {sensor: i for i, sensor in enumerate(stream.sensors)}
    day = DAY_S // stream.step_s
    times = stream.timestamps()
    step_of = {format_ts(int(ts) * 1000): t for t, ts in enumerate(times.tolist())}
    for t in range(stream.n_steps):
        events: list[RetrainEvent] = []
        for output in pipeline.step([_batch(stream, t)]):
            _record(output.forecasts, run.forecasts, step_of, column)
            events += [RetrainEvent.decode(raw) for _, raw in output.retrain_events]
        for event in [e for e in events if e.reason == ROLLBACK]:  # a canary's or a trial's
            run.rollbacks.append({"step": t, **event.evidence})
            what = "trial" if event.evidence.get("trial") else "canary"
            progress(f"{policy}: {what} at {format_ts(int(times[t]) * 1000)}: "
                     f"{event.evidence.get('decision')} {event.model}")  # fmt: skip
        events = [e for e in events if e.reason != ROLLBACK]
        due = (policy == "stcast" and events) or (policy == "periodic" and t and t % day == 0)
        if due:
            reason = f"{len(events[0].sensors)} sensors drifting" if events else "a day passed"
            quarantined = _quarantined(pipeline) | {
                s for e in events for s in e.evidence.get("quarantined") or []
            }
            new = _retrain(
                serving, stream, t, settings, workdir, len(run.retrains) + 2, quarantined
            )
            new["step"], new["reason"] = t, reason
            run.retrains.append(new)
            progress(f"{policy}: retrain at {format_ts(int(times[t]) * 1000)}: {new['outcome']}")
            if new["outcome"] == "published":
                challenger = OnnxForecaster(Path(new["dir"]), provider="cpu", step_s=stream.step_s)
                directory[challenger.model_id] = Path(new["dir"])
                pipeline.swap(challenger)  # serving from the next step, or on trial first
        if pipeline.forecaster.model_id != run.served[-1][1]:  # a swap, a rollback, a promotion
            run.served.append((t + 1, pipeline.forecaster.model_id))
        serving = directory[pipeline.forecaster.model_id]
    run.directory = directory
    return run


def served_versus_kept(
    run: Run, stream: GridDataset, settings: Settings, horizon_step: int | None = None
) -> list[dict[str, Any]]:
    """Per version that served after a swap (a retrain's or a rollback's): its MAE at
    ``horizon_step`` (default: the step nearest an hour ahead, +60 min) on the forecasts it
    made, and what the version it replaced, kept serving (a fresh pipeline over the same steps,
    warmed on the steps before), gives on the same (step, sensor) pairs. The forecasts served
    carry the error feedback's mix where the policy has it, the kept version's do not; so the
    version's own forecasts from the same kind of fresh pipeline are scored too
    (``alone_mae``, ``alone_ratio``): the two versions compared as models."""
    truth = stream.values[:, :, 0]
    if horizon_step is None:
        horizon = len(next(iter(run.forecasts.values()))) if run.forecasts else 1
        horizon_step = hour_ahead_step(stream.step_s, horizon)
    found = []
    ends = [start for start, _ in run.served[1:]] + [stream.n_steps]
    for (start, model), end, (_, before) in zip(
        run.served[1:], ends[1:], run.served[:-1], strict=True
    ):
        kept = _forecasts_between(run.directory[before], stream, settings, start, end)
        alone = _forecasts_between(run.directory[model], stream, settings, start, end)
        pairs = [
            (s, c) for (s, c) in run.forecasts
            if start <= s < end and (s, c) in kept and (s, c) in alone
        ]  # fmt: skip
        served_mae = _mae_at(run.forecasts, truth, pairs, horizon_step)
        kept_mae = _mae_at(kept, truth, pairs, horizon_step)
        alone_mae = _mae_at(alone, truth, pairs, horizon_step)
        found.append({
            "model": model, "replaced": before, "from_step": start, "to_step": end,
            "served_mae": served_mae, "kept_mae": kept_mae,
            "ratio": round(served_mae / kept_mae, 4) if served_mae and kept_mae else None,
            "alone_mae": alone_mae,
            "alone_ratio": round(alone_mae / kept_mae, 4) if alone_mae and kept_mae else None,
        })  # fmt: skip
    return found


def _forecasts_between(
    model_dir: Path, stream: GridDataset, settings: Settings, start: int, end: int
) -> dict[tuple[int, int], list[float]]:
    """A model's forecasts made at steps ``start`` to ``end`` (exclusive), from a pipeline that
    read the stream from a full context before ``start`` (no retrains, no canary)."""
    run = Run()
    # the model's own forecasts: no error feedback, no re-anchoring; it never swaps: no canary
    quiet = settings.replace(drift_feedback_gain=0.0, drift_reanchor="off")
    pipeline = _pipeline(quiet, model_dir, run)
    column = {sensor: i for i, sensor in enumerate(stream.sensors)}
    times = stream.timestamps()
    step_of = {format_ts(int(ts) * 1000): t for t, ts in enumerate(times.tolist())}
    first = max(0, start - ModelCard.load(model_dir).window - 1)
    forecasts: dict[tuple[int, int], list[float]] = {}
    for t in range(first, end):
        for output in pipeline.step([_batch(stream, t)]):
            if t >= start:
                _record(output.forecasts, forecasts, step_of, column)
    return forecasts


def _record(
    records: list[tuple[bytes, bytes]],
    into: dict[tuple[int, int], list[float]],
    step_of: dict[str, int],
    column: dict[str, int],
) -> None:
    """Forecast records into ``into[(step, column)]``."""
    for _, raw in records:
        forecast = json.loads(raw)
        into[(step_of[forecast["ts"]], column[forecast["sensor"]])] = forecast["values"]


def _mae_at(
    forecasts: dict[tuple[int, int], list[float]],
    truth: Float64Array,
    pairs: list[tuple[int, int]],
    h: int,
) -> float | None:
    errors = []
    for step, col in pairs:
        if step + h < len(truth):
            actual = truth[step + h, col]
            if actual != 0 and np.isfinite(actual):
                errors.append(abs(forecasts[(step, col)][h - 1] - actual))
    return round(float(np.mean(errors)), 4) if errors else None


def _quarantined(pipeline: Pipeline) -> set[str]:
    """The sensors the pipeline's retrain policy holds in quarantine now (a daily retrain
    leaves them out as a drift-triggered one does)."""
    for sink in pipeline.sinks:
        if isinstance(sink, DriftSink) and isinstance(sink.policy, _Recording):
            return set(sink.policy.policy.quarantined)
    return set()


def _context_steps(model_dir: Path) -> int:
    """Steps a model needs before it forecasts: its window, or a universal model's warm-up."""
    card = ModelCard.load(model_dir)
    return card.warmup if card.kind == UNIVERSAL else card.window


def _pipeline(settings: Settings, model_dir: Path, run: Run) -> Pipeline:
    forecaster = OnnxForecaster(model_dir, provider="cpu", step_s=settings.step_s)
    pipeline = build_pipeline(settings, forecaster, Metrics(CollectorRegistry()))
    for sink in pipeline.sinks:
        if isinstance(sink, DriftSink):
            sink.policy = _Recording(sink.policy, run.detections)
            if pipeline.readings is not None:  # the readings monitors report to the same
                pipeline.readings.policy = sink.policy
    return pipeline


class _Recording:
    """Passes detections on to the retrain policy and keeps a copy."""

    def __init__(self, policy: Any, into: list[Detection]) -> None:
        self.policy = policy
        self.into = into

    def update(self, detection: Detection) -> None:
        self.into.append(detection)
        self.policy.update(detection)

    def advance(self, now: float) -> None:
        self.policy.advance(now)

    def model_swapped(self) -> None:
        self.policy.model_swapped()


def _batch(stream: GridDataset, t: int) -> Incoming:
    ts = format_ts(int(stream.timestamps()[t]) * 1000)
    row = stream.values[t, :, 0].tolist()
    ticks = [
        {"sensor": s, "ts": ts, "value": None if math.isnan(v) else v}
        for s, v in zip(stream.sensors, row, strict=True)
    ]
    return Incoming("stcast.ticks", 0, t, b"online", json.dumps({"ticks": ticks}).encode())


def _retrain(
    serving: Path,
    stream: GridDataset,
    t: int,
    settings: Settings,
    workdir: Path,
    version: int,
    quarantined: Collection[str] = (),
) -> dict[str, Any]:
    """The retrain worker's procedure on the readings up to step ``t`` (inclusive)."""
    from models.finetuning import FineTuneError, fine_tune

    from .challenger import compare
    from .registry import Version
    from .retraining import network_model_name

    history = max(1, int(settings.retrain_history_s) // stream.step_s)
    first = max(0, t + 1 - history)
    recent = without(stream.target_steps(first, t + 1), quarantined)
    holdout_from = recent.n_steps - settings.retrain_holdout_steps
    out = workdir / f"v{version}"
    card = ModelCard.load(serving)
    try:
        if card.kind == UNIVERSAL:  # as the retrain worker fine-tunes one
            from models.finetune_universal import fine_tune_recent

            name = network_model_name(Version(card.name, "1", serving, card), stream.name)
            seconds = fine_tune_recent(
                serving, recent, holdout_from, out, name, str(version),
                max_seconds=settings.retrain_max_s, threads=settings.retrain_threads,
            ).seconds  # fmt: skip
        else:
            seconds = fine_tune(
                serving,
                recent,
                holdout_from,
                out,
                str(version),
                max_seconds=settings.retrain_max_s,
                threads=settings.retrain_threads,
            ).seconds
    except (FineTuneError, ValueError) as exc:
        return {"outcome": "not enough history", "detail": str(exc)}
    if holdout_from >= recent.n_steps:  # no holdout: the trial judges it
        return {"outcome": "published", "dir": str(out), "fine_tuning_s": round(seconds, 1)}
    champion = OnnxForecaster(serving, provider="cpu", step_s=stream.step_s)
    challenger = OnnxForecaster(out, provider="cpu", step_s=stream.step_s)
    masked = champion.card.training.get("protocol", "basicts") == "basicts"
    verdict = compare(
        champion,
        challenger,
        recent,
        holdout_from,
        masked=masked,
        min_gain=settings.retrain_min_gain,
    )
    return {
        "outcome": "published" if verdict.wins else "rejected",
        "dir": str(out),
        "fine_tuning_s": round(seconds, 1),
        **verdict.to_json(),
    }


def report(
    scenario: str,
    seed: int,
    stream: GridDataset,
    fault: Fault,
    runs: dict[str, Run],
    warmup_steps: int,
    fault_free: tuple[GridDataset, Run] | None = None,
) -> dict[str, Any]:
    """The JSON of the issue, with a few more figures beside it. ``fault_free``: the stream
    as it came and the frozen model's run over it, for the after-drift pairs' error without
    the fault (``mae_after_drift_without_fault``: what a policy that undid the fault exactly,
    and otherwise forecast as the frozen model, would reach)."""
    truth = stream.values[:, :, 0]
    times = stream.timestamps()
    windows = _after_drift_pairs(runs["frozen"], stream, fault)
    without = None
    if fault_free is not None:
        clean, clean_run = fault_free
        without = _mae_on(clean_run.forecasts, clean.values[:, :, 0], windows)
    policies = {}
    for name, run in runs.items():
        policies[name] = {
            "mae": _mae_by_horizon(run.forecasts, truth),
            "mae_after_drift": _mae_on(run.forecasts, truth, windows),
            "retrains": sum(r["outcome"] == "published" for r in run.retrains),
            "retrain_attempts": run.retrains,
            "rollbacks": run.rollbacks,
            "versions_served": run.versions,
        }
    return {
        "scenario": scenario,
        "seed": seed,
        "dataset": stream.name,
        "faulted_sensors": len(fault.columns),
        "onset": None if fault.onset < 0 else format_ts(int(times[fault.onset]) * 1000),
        "after_drift_pairs": len(windows),
        "mae_after_drift_without_fault": without,
        "policies": policies,
        "detection": _detection(runs["frozen"], stream, fault, warmup_steps),
    }


def _after_drift_pairs(run: Run, stream: GridDataset, fault: Fault) -> list[tuple[int, int]]:
    """(step, column) of the forecasts made in the steps after each counted detection."""
    column = {sensor: i for i, sensor in enumerate(stream.sensors)}
    start_s = int(stream.timestamps()[0])
    faulted = set(fault.columns)
    pairs: set[tuple[int, int]] = set()
    for d in run.detections:
        col = column[d.sensor]
        step = (int(d.detected_at) - start_s) // stream.step_s
        if fault.onset >= 0 and (col not in faulted or step < fault.onset):
            continue
        pairs.update((s, col) for s in range(step + 1, step + 1 + AFTER_DRIFT_STEPS))
    return sorted(pairs)


def _mae_by_horizon(
    forecasts: dict[tuple[int, int], list[float]], truth: Float64Array
) -> list[float | None]:
    horizon = len(next(iter(forecasts.values()))) if forecasts else 0
    sums, counts = np.zeros(horizon), np.zeros(horizon)
    for (step, col), values in forecasts.items():
        for h in range(1, horizon + 1):
            if step + h < len(truth):
                actual = truth[step + h, col]
                if actual != 0 and np.isfinite(actual):
                    sums[h - 1] += abs(values[h - 1] - actual)
                    counts[h - 1] += 1
    return [round(float(s / c), 4) if c else None for s, c in zip(sums, counts, strict=True)]


def _mae_on(
    forecasts: dict[tuple[int, int], list[float]],
    truth: Float64Array,
    pairs: list[tuple[int, int]],
) -> float | None:
    errors = []
    for step, col in pairs:
        values = forecasts.get((step, col))
        if values is None:
            continue
        for h, value in enumerate(values, start=1):
            if step + h < len(truth):
                actual = truth[step + h, col]
                if actual != 0 and np.isfinite(actual):
                    errors.append(abs(value - actual))
    return round(float(np.mean(errors)), 4) if errors else None


def _detection(run: Run, stream: GridDataset, fault: Fault, warmup_steps: int) -> dict[str, Any]:
    """Delays and detected share on faulted sensors; firings per sensor-week on the others,
    counted over the monitored time (after the windows fill and the monitors warm up)."""
    column = {sensor: i for i, sensor in enumerate(stream.sensors)}
    start_s = int(stream.timestamps()[0])
    step_of = {d: (int(d.detected_at) - start_s) // stream.step_s for d in run.detections}
    faulted = set(fault.columns)
    day = DAY_S // stream.step_s
    first: dict[int, int] = {}
    others = 0
    for d, step in step_of.items():
        col = column[d.sensor]
        if col in faulted and fault.onset <= step < fault.onset + day:
            first.setdefault(col, step - fault.onset)
        elif col not in faulted:
            others += 1
    unfaulted = stream.n_sensors - len(faulted)
    weeks = max(1, stream.n_steps - warmup_steps) * stream.step_s / WEEK_S
    rate = others / (unfaulted * weeks) if unfaulted else None
    if fault.onset < 0:
        return {
            "median_delay_steps": None,
            "detected_fraction": None,
            "false_alarms_per_sensor_week": None,
            "detections_per_sensor_week": round(rate, 3) if rate is not None else None,
        }
    delays = list(first.values())
    return {
        "median_delay_steps": statistics.median(delays) if delays else None,
        "detected_fraction": round(len(delays) / len(faulted), 3),
        "false_alarms_per_sensor_week": round(rate, 3) if rate is not None else None,
    }
