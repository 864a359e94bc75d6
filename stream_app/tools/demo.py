"""``stcast demo``: the whole loop, on the embedded broker and the bundled real dataset.

1. A model: the bundled ``universal`` model, pre-trained on other networks and domains and
   never on PEMS08, served zero-shot from the first tick (published as version 1 in a fresh
   model registry); or the model in ``--model-dir``.
2. The broker, a worker serving version 1 and a retrain worker on that registry. With
   ``--batched`` (a message per step, keyed by network) the worker reads the network's graph
   and gives the model each sensor's neighbours.
3. The first days are replayed as fast as the broker takes them (the drift monitors learn
   each sensor's usual error there), then the rest (for PEMS08: the 4 July holiday and the
   morning after) at ``--steps-per-s``. While the retrain worker answers a retrain event the
   replay waits (``_Hold``), as real time would hardly move meanwhile. A retrain fine-tunes
   the serving model for this network and publishes a network version, which the worker tries
   in the shadow before it serves (for ``TRIAL_STEPS`` steps: the default 6 hours would outlast
   the paced part's newest retrains).
4. A live view every two seconds: data time, ticks per second, the rolling MAE of the last
   hour's forecasts against persistence and seasonal naive on the same targets, drift events,
   models published and the serving version, all read from the topics (forecasts, retrain
   events, model updates) and the worker's metrics.
5. A report (``--json`` for machines): accuracy by horizon and model version against the same
   baselines on the same targets, scored against the dataset itself, the events, the models
   published, and what version 1 would have done on the targets its successors served.
   Everything started is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from math import ceil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..bundled import UNIVERSAL, model_path
from ..core.canary import hour_ahead_step
from ..core.forecasters import season_steps
from ..kafka.clients import topic_reader
from ..kafka.topics import ensure_topics_sync
from ..loop.registry import Registry
from ..offline.datasets import GridDataset, load_dataset
from ..offline.graphs import graph_beside
from ..offline.network_context import network_context
from ..settings import Settings, env_name
from .broker import EmbeddedBroker
from .demo_report import (
    REPORTED_HORIZONS,
    Observed,
    canary_verdicts,
    demo_report,
    epoch_s,
    format_report,
    lead,
    published,
    retrain_outcomes,
    step_time,
)
from .replay import replay
from .services import WorkerProcess, scrape

FAST_DAYS = 3  # Friday to Sunday as fast as they go; the holiday Monday is paced
FAST_SHARE = 0.7  # of a dataset too short for that, the share streamed fast
PACED_STEPS = 432  # the most steps paced: 72 s at the default 6 a second (PEMS08: 418)
DEFAULT_TICKS = 600_000  # without --steps, the most ticks streamed (PEMS08's slice: 217,940)
ROLLING_STEPS = 12  # the live view's rolling MAE: forecasts of the last hour of data
# A retrain's budget; its epoch is cut there. A retrain of one epoch on PEMS08 took 23-26 s on
# one machine (2026-12-07) and 38-46 s on a slower one (2026-12-08), where 20 s fitted 35-40 %
# of it and Tuesday's challenger lost its holdout; 40 s fits most or all of it there
# (docs/adaptation.md)
RETRAIN_MAX_S = 40.0
# A challenger's trial in the shadow lasts at most this many grid steps (2 hours at 5 minutes;
# from 15-minute steps on, the worker's 6 hours), unless STCAST_CANARY_S is set: PEMS08's paced
# part is a day and a half, and a 6-hour trial of the challenger published on the Tuesday
# morning outlasted the stream, so no drift-triggered version ever served in the demo.
TRIAL_STEPS = 24
# a retrain also waits for the history to catch up, exports and validates: the longest hold
HOLD_MAX_S = RETRAIN_MAX_S + 40.0
# All holds together: past this the replay goes on without waiting (retrains go on behind it),
# so that a dataset whose monitors fire often still ends in minutes (PEMS08 holds ~45 s)
HOLD_BUDGET_S = 150.0
# At most one retrain event per network in this many grid steps (the worker's default of 6
# hours is 72 steps at 5 minutes, but 6 at an hour: an hourly dataset's 432 paced steps could
# raise 72 events, each a hold), unless STCAST_RETRAIN_COOLDOWN_S is set
COOLDOWN_STEPS = 72
DRAIN_S = 30.0  # after the replay, give up on the last forecasts after this long without one


def plan_steps(n_steps: int, n_sensors: int, step_s: int, steps: int | None) -> tuple[int, int]:
    """(steps to stream, how many of them as fast as they go). The rest, at most
    ``PACED_STEPS``, is paced so that the demo ends in minutes on any dataset; without
    ``steps`` a long dataset is cut to its first ``DEFAULT_TICKS`` ticks (at least twice
    ``PACED_STEPS`` steps), where a user's whole history would take hours to stream."""
    if not steps:  # none given (0 too, as before)
        steps = max(2 * PACED_STEPS, DEFAULT_TICKS // max(1, n_sensors))
    steps = min(steps, n_steps)
    fast = min(FAST_DAYS * 86_400 // step_s, int(FAST_SHARE * steps))
    return steps, max(fast, steps - PACED_STEPS)


def cooldown_s(settings: Settings, step_s: int, environ: Mapping[str, str]) -> float:
    """The demo's retrain cool-down: ``STCAST_RETRAIN_COOLDOWN_S`` when set, else at least
    ``COOLDOWN_STEPS`` steps."""
    if env_name("retrain_cooldown_s") in environ:
        return settings.retrain_cooldown_s
    return max(settings.retrain_cooldown_s, float(COOLDOWN_STEPS * step_s))


def trial_s(settings: Settings, step_s: int, environ: Mapping[str, str]) -> float:
    """The demo's trial: ``STCAST_CANARY_S`` when set, else at most ``TRIAL_STEPS`` steps."""
    if env_name("canary_s") in environ:
        return settings.canary_s
    return min(settings.canary_s, float(TRIAL_STEPS * step_s))


def _step_text(step_s: int) -> str:
    """``5 min``, ``1 h``, ``1 day``: the grid step as a person says it."""
    for unit_s, unit in ((86_400, "day"), (3_600, "h"), (60, "min")):
        if step_s % unit_s == 0:
            count = step_s // unit_s
            return f"{count} {unit}" + ("s" if unit == "day" and count > 1 else "")
    return f"{step_s} s"


def run_demo(
    settings: Settings,
    dataset_path: Path,
    *,
    batched: bool,
    steps: int | None,
    steps_per_s: float,
    as_json: bool,
    missing: Sequence[float] = (),
    channel: str | int = 0,
    start: datetime | None = None,
    step_s: int | None = None,
) -> int:
    say = _Say(quiet=as_json)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # its INFO lines drown the view
    dataset = load_dataset(dataset_path, start=start, step_s=step_s, missing=missing)
    dataset = dataset.forecasting(channel)
    steps, fast_steps = plan_steps(dataset.n_steps, dataset.n_sensors, dataset.step_s, steps)
    cut = f" (the first {steps} of {dataset.n_steps}: --steps N)" if steps < dataset.n_steps else ""
    say(
        f"stcast demo: {dataset.name}, {dataset.n_sensors} sensors, {steps} steps of "
        f"{_step_text(dataset.step_s)} from {dataset.start:%a %d %b %Y}{cut}"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stcast-demo-") as tmp_name:
        tmp = Path(tmp_name)
        registry = Registry(tmp / "registry")
        first = registry.publish(settings.model_path or model_path(UNIVERSAL))
        graph = graph_beside(dataset_path) if batched else None
        with EmbeddedBroker() as broker:
            settings = settings.replace(
                bootstrap_servers=broker.bootstrap_servers,
                canary_s=trial_s(settings, dataset.step_s, os.environ),
                retrain_cooldown_s=cooldown_s(settings, dataset.step_s, os.environ),
            )
            _create_topics(settings)
            common = {
                **vars(settings),
                "metrics_port": 0,
                "network": dataset.name,
                "step_s": dataset.step_s,
                "model_dir": str(first.path),
                "model_registry": str(registry.root),
                "retrain_max_s": RETRAIN_MAX_S,
                "graph": str(graph or ""),
                "keyed": "network" if graph else "sensor",
            }
            with (
                WorkerProcess(common, tmp / "worker.log") as worker,
                WorkerProcess(common, tmp / "retrain.log", verb="retrain-worker") as retrainer,
            ):
                started_here = {
                    "broker": broker.bootstrap_servers,
                    "pids": [broker.pid, worker.pid, retrainer.pid],
                }
                neighbours = f"neighbours from {graph.name}" if graph else "no neighbours"
                say(
                    f"broker {broker.bootstrap_servers}; worker pid {worker.pid} serving "
                    f"{first.model_id} zero-shot ({neighbours}); retrain worker pid "
                    f"{retrainer.pid}; metrics {worker.metrics_url}"
                )
                plan = _Plan(
                    dataset, steps, fast_steps, steps_per_s, batched, first.card.warmup,
                    first.card.horizon,
                )  # fmt: skip
                try:
                    observed = asyncio.run(
                        _stream(settings, plan, (worker, retrainer), tmp / "retrain.log", say)
                    )
                except asyncio.CancelledError:
                    say("interrupted: stopping the workers and the broker")
                    return 130
                finally:
                    statuses = (worker.stop(), retrainer.stop())
                    say(f"worker and retrain worker stopped (exit status {statuses})")
        observed.retrains = retrain_outcomes(tmp / "retrain.log")
        observed.canaries = canary_verdicts(tmp / "worker.log")
        table = network_context(dataset, dataset_path, graph)[0] if graph else None
        seconds = time.monotonic() - started
        report = demo_report(dataset, steps, observed, registry, seconds, table)
    report["stopped"] = started_here
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if statuses == (0, 0) else 1


class _Say:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)


def _create_topics(settings: Settings) -> None:
    topics = dict.fromkeys(settings.stcast_topics, settings.partitions)
    ensure_topics_sync(settings.bootstrap_servers, topics)


@dataclass(frozen=True)
class _Plan:
    dataset: GridDataset
    steps: int
    fast_steps: int
    steps_per_s: float
    batched: bool
    window: int
    horizon: int


class _Exits(Protocol):
    def poll(self) -> int | None: ...  # the exit status, or None while it runs


class _Hold:
    """Keeps the paced replay waiting while the retrain worker handles the retrain events seen
    so far (until its log has an outcome line for each, ``HOLD_MAX_S`` at most): in real time a
    fine-tuning of a minute is over within a 5-minute step, while at the demo's pace it would
    let hours of data pass, and a challenger's trial start too late to end in the stream. Only
    for events detected from ``paced_from_s`` on (those of the first days, streamed fast to warm
    the monitors up, do not hold it), and not once the steps left are fewer than a trial takes
    (``trial_steps``): a challenger published then could not serve before the end, nor once
    ``HOLD_BUDGET_S`` have been held in all."""

    def __init__(
        self,
        observed: Observed,
        retrain_log: Path,
        say: _Say,
        *,
        end: int = 0,
        trial_steps: int = 0,
        paced_from_s: int = 0,
        retrainer: _Exits | None = None,
    ) -> None:
        self.observed = observed
        self.retrain_log = retrain_log
        self.say = say
        self.end, self.trial_steps, self.paced_from_s = end, trial_steps, paced_from_s
        self.retrainer = retrainer  # a hold ends, with an error, when it has exited
        self.answered = 0  # outcome lines in the retrain worker's log, when last read
        self.holding = False  # the live view stays quiet meanwhile: nothing flows
        self.held_s = 0.0  # all holds so far (``HOLD_BUDGET_S``)

    def _pending(self) -> int:
        """Events of the paced part not answered yet (the retrain worker answers in order)."""
        events = self.observed.events
        if len(events) > self.answered:  # read the log only when it may be behind
            self.answered = len(retrain_outcomes(self.retrain_log))
        paced = sum(epoch_s(event["detected_at"]) >= self.paced_from_s for event in events)
        return min(len(events) - self.answered, paced)

    async def __call__(self, step: int = 0) -> float:
        if self.end and self.end - step <= self.trial_steps:
            return 0.0
        if self._pending() <= 0 or self.held_s >= HOLD_BUDGET_S:
            return 0.0
        began = time.monotonic()
        self.say("  HOLD    the replay waits while the retrain worker fine-tunes and validates")
        self.holding = True
        try:
            longest = min(HOLD_MAX_S, HOLD_BUDGET_S - self.held_s)
            while self._pending() > 0 and time.monotonic() - began < longest:
                await asyncio.sleep(0.25)
                if self.retrainer is not None and (status := self.retrainer.poll()) is not None:
                    why = _last_line(self.retrain_log)
                    raise RuntimeError(f"the retrain worker exited with status {status}: {why}")
        finally:
            self.holding = False
        held = time.monotonic() - began
        self.held_s += held
        spent = self.held_s >= HOLD_BUDGET_S
        self.say(
            f"  HOLD    over after {held:.0f} s: the replay goes on"
            + (f" (holds from now on skipped: {self.held_s:.0f} s held in all)" if spent else "")
        )
        return held


def _last_line(log_file: Path) -> str:
    """A log's last non-empty line (why a process exited), or that there is none."""
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else f"{log_file} is empty"


async def _stream(
    settings: Settings,
    plan: _Plan,
    workers: tuple[WorkerProcess, WorkerProcess],
    retrain_log: Path,
    say: _Say,
) -> Observed:
    worker, retrainer = workers
    _cancel_on_signals(asyncio.current_task())
    observed = Observed()
    shadow_s = settings.canary_s if settings.trial_first else 0.0  # the trial's
    trial_steps = ceil(shadow_s / plan.dataset.step_s) + plan.horizon
    paced_from_s = int(plan.dataset.start.timestamp()) + plan.fast_steps * plan.dataset.step_s
    hold = _Hold(observed, retrain_log, say, end=plan.steps, trial_steps=trial_steps,
                 paced_from_s=paced_from_s, retrainer=retrainer)  # fmt: skip
    readers = [
        asyncio.create_task(_read_forecasts(settings, plan.dataset, observed)),
        asyncio.create_task(_read_loop_topics(settings, plan.dataset, observed, say)),
    ]
    view = asyncio.create_task(_live_view(plan, worker, observed, hold, say))
    try:
        dataset = plan.dataset
        say(f"replaying the first {plan.fast_steps} steps as fast as they go...")
        await replay(
            settings.bootstrap_servers,
            settings.ticks_topic,
            dataset,
            batched=plan.batched,
            steps=plan.fast_steps,
            progress=False,
        )  # no hold here: these steps warm the monitors up, as fast as they go
        if plan.steps > plan.fast_steps:
            say(
                f"then {plan.steps - plan.fast_steps} steps from "
                f"{step_time(dataset, plan.fast_steps)} at {plan.steps_per_s:g} steps/s..."
            )
            await replay(
                settings.bootstrap_servers,
                settings.ticks_topic,
                dataset,
                batched=plan.batched,
                start_step=plan.fast_steps,
                steps=plan.steps - plan.fast_steps,
                speed=plan.steps_per_s * dataset.step_s,
                progress=False,
                hold=hold,
            )
        expected = (plan.steps - plan.window + 1) * dataset.n_sensors
        last_count, last_change = -1, time.monotonic()
        while len(observed.forecasts) < expected and time.monotonic() - last_change < DRAIN_S:
            await asyncio.sleep(0.2)
            if len(observed.forecasts) != last_count:
                last_count, last_change = len(observed.forecasts), time.monotonic()
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with status {worker.poll()}")
    finally:
        for task in (*readers, view):
            task.cancel()
        await asyncio.wait({*readers, view}, timeout=5.0)
    return observed


def _cancel_on_signals(task: asyncio.Task[Any] | None) -> None:
    """Ctrl-C and SIGTERM cancel the demo's stream, so everything it started is stopped."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if task is not None:
            loop.add_signal_handler(sig, task.cancel)


async def _read_forecasts(settings: Settings, dataset: GridDataset, into: Observed) -> None:
    consumer = topic_reader(settings, settings.forecasts_topic)
    await consumer.start()
    start_s = int(dataset.start.timestamp())
    serving = ""
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    forecast = json.loads(record.value)
                    step = (epoch_s(forecast["ts"]) - start_s) // dataset.step_s
                    into.forecasts[(forecast["sensor"], step)] = (
                        forecast["values"],
                        forecast["model"],
                    )
                    into.newest_step = max(into.newest_step, step)
                    quantiles = forecast.get("quantiles")
                    if quantiles and len(forecast["values"]) >= REPORTED_HORIZONS[-1]:
                        h = REPORTED_HORIZONS[-1] - 1
                        into.bounds[(forecast["sensor"], step)] = (
                            quantiles["0.1"][h],
                            quantiles["0.9"][h],
                        )
                    if forecast["model"] != serving:
                        serving = forecast["model"]
                        into.swaps.append((serving, step))
    finally:
        await consumer.stop()


async def _read_loop_topics(
    settings: Settings, dataset: GridDataset, into: Observed, say: _Say
) -> None:
    consumer = topic_reader(settings, settings.retrain_topic, settings.models_topic)
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    obj = json.loads(record.value)
                    if tp.topic == settings.retrain_topic:
                        into.events.append(obj)
                        say(_loop_event(obj))
                    else:
                        into.updates.append(obj)
                        say(_model_update(obj, settings))
    finally:
        await consumer.stop()


def _loop_event(event: dict[str, Any]) -> str:
    if event.get("reason") == "rollback":
        v = event["evidence"]
        if v.get("trial"):
            return (
                f"  TRIAL   {v['served']} did worse in the shadow than {v['previous']} on the "
                f"same targets (MAE {v['served_mae']:.2f} vs {v['previous_mae']:.2f}): rejected"
            )
        return (
            f"  CANARY  {v['served']} served worse than {v['previous']} on the same targets "
            f"(MAE {v['served_mae']:.2f} vs {v['previous_mae']:.2f}): rolled back"
        )
    return (
        f"  DRIFT   retrain event: {len(event['sensors'])} sensors drifting "
        f"at {event['detected_at']} under {event['model']}"
    )


def _model_update(update: dict[str, Any], settings: Settings) -> str:
    v = update.get("validation", {})
    if "rollback" in v:
        return f"  MODEL   {update['model']} announced again (a rollback); workers swap back"
    judged = (
        f"holdout MAE {v['challenger_mae']:.2f} vs the serving model's {v['champion_mae']:.2f}"
        if "challenger_mae" in v
        else "no holdout"
    )
    then = "workers try it in the shadow" if settings.trial_first else "workers swap"
    return f"  MODEL   {update['model']} published ({judged}); {then}"


async def _live_view(
    plan: _Plan, worker: WorkerProcess, observed: Observed, hold: _Hold, say: _Say
) -> None:
    truth = plan.dataset.values[:, :, 0]
    column = {sensor: i for i, sensor in enumerate(plan.dataset.sensors)}
    last_ticks, last_time = 0.0, time.monotonic()
    while True:
        await asyncio.sleep(2.0)
        samples = await asyncio.to_thread(scrape, worker.metrics_url)
        now = time.monotonic()
        ticks = samples.get("stcast_ticks_total", 0.0)
        rate = (ticks - last_ticks) / (now - last_time)
        last_ticks, last_time = ticks, now
        if observed.newest_step < 0 or hold.holding:
            continue  # nothing to show before the first forecast, nor while the replay waits
        horizon = hour_ahead_step(plan.dataset.step_s, plan.horizon)  # as the trial judges
        model_mae, naive_mae, season_mae = _rolling_mae(
            observed, truth, column, horizon, season_steps(plan.dataset.step_s)
        )
        newest = observed.newest_step
        serving = observed.swaps[-1][0] if observed.swaps else "-"
        covered = samples.get(f'stcast_interval_coverage{{horizon="{horizon}"}}')
        known = covered is not None and np.isfinite(covered)
        interval = f", 80 % interval holds {covered:.0%}" if known else ""
        say(
            f"  {step_time(plan.dataset, max(newest, 0))}  {rate:>8,.0f} ticks/s  "
            f"MAE {lead(horizon * plan.dataset.step_s)} {model_mae:6.1f} vs persistence "
            f"{naive_mae:6.1f}, seasonal naive {season_mae:6.1f}{interval}  drift events "
            f"{len(observed.events)}  published {len(published(observed))}  serving {serving}"
        )


def _rolling_mae(
    observed: Observed, truth: np.ndarray, column: dict[str, int], horizon: int, season: int
) -> tuple[float, float, float]:
    """MAE at ``horizon`` of the forecasts made in the last ``ROLLING_STEPS`` steps whose
    actuals are known, and of persistence and seasonal naive on the same targets (where the
    season's value is known)."""
    newest = observed.newest_step
    made = range(newest - horizon - ROLLING_STEPS + 1, newest - horizon + 1)
    model, naive, seasonal = [], [], []
    back = season * -(-horizon // season)  # whole seasons, never after the origin
    for (sensor, step), (values, _) in list(observed.forecasts.items()):
        if step in made and step + horizon < len(truth) and step + horizon - back >= 0:
            n = column[sensor]
            actual, earlier = truth[step + horizon, n], truth[step + horizon - back, n]
            if actual != 0 and np.isfinite(actual) and np.isfinite(earlier):
                model.append(abs(values[horizon - 1] - actual))
                naive.append(abs(truth[step, n] - actual))
                seasonal.append(abs(earlier - actual))
    if not model:
        return float("nan"), float("nan"), float("nan")
    return float(np.mean(model)), float(np.mean(naive)), float(np.mean(seasonal))
