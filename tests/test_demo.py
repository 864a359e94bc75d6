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

import numpy as np
import pytest

from stream_app.offline.datasets import bundled_dataset_path, load_dataset

pytestmark = pytest.mark.integration


def test_demo_reports_every_forecast_and_leaves_no_process_or_port(
    seed_model_dir: Path, tmp_path: Path
) -> None:
    """On PEMS08's flows as a bare array (no times): the start and step given by flags."""
    flows = tmp_path / "pems08.npy"  # the sensors the seed model knows: pems08/0...
    np.save(flows, load_dataset(bundled_dataset_path()).values[:, :, 0])
    result = subprocess.run(
        [sys.executable, "-m", "stream_app", "demo", "--model-dir", str(seed_model_dir),
         "--dataset", str(flows), "--start", "2016-07-01T00:00:00Z", "--dataset-step-s", "300",
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


def test_the_demo_ends_in_minutes_on_any_dataset() -> None:
    """PEMS08's slice streams whole, three days fast; a long history is cut and at most
    PACED_STEPS steps are paced, so no dataset makes the demo take hours."""
    from stream_app.tools.demo import DEFAULT_TICKS, PACED_STEPS, plan_steps

    assert plan_steps(1282, 170, 300, None) == (1282, 864)  # PEMS08: Monday and Tuesday paced
    assert plan_steps(48_673, 2, 900, None) == (48_673, 48_673 - PACED_STEPS)  # WIND, whole
    steps, fast = plan_steps(17_544, 264, 3_600, None)  # NYC: 264 series, two years hourly
    assert steps == DEFAULT_TICKS // 264 and steps - fast == PACED_STEPS
    assert plan_steps(17_544, 264, 3_600, 5_000) == (5_000, 5_000 - PACED_STEPS)
    assert plan_steps(100_000, 5_000, 300, None) == (2 * PACED_STEPS, 604)  # 70 % of 864
    assert plan_steps(300, 170, 300, None) == (300, 210)  # short: 70 % fast
    assert plan_steps(1282, 170, 300, 0) == (1282, 864)  # --steps 0: as if none were given


def test_the_demo_trial_fits_its_paced_part_unless_the_user_sets_one() -> None:
    """Two hours at 5 minutes (a challenger published on the Tuesday morning can serve before
    the end), the default 6 hours on an hourly grid, and STCAST_CANARY_S as the user set it."""
    from stream_app.settings import Settings
    from stream_app.tools.demo import trial_s

    settings = Settings()
    assert settings.canary_s == 21_600
    assert trial_s(settings, 300, {}) == 7_200
    assert trial_s(settings, 3_600, {}) == 21_600
    assert trial_s(settings.replace(canary_s=1_800), 300, {}) == 1_800
    user = Settings.from_env({"STCAST_CANARY_S": "36000"})
    assert trial_s(user, 300, {"STCAST_CANARY_S": "36000"}) == 36_000


def test_leads_and_steps_read_as_a_person_says_them() -> None:
    from stream_app.tools.demo import _step_text
    from stream_app.tools.demo_report import lead

    assert [lead(s) for s in (300, 3_600, 5_400, 7_200, 43_200, 86_400, 172_800)] == [
        "+5 min", "+60 min", "+90 min", "+2 h", "+12 h", "+24 h", "+2 days",
    ]  # fmt: skip
    assert [_step_text(s) for s in (300, 900, 3_600, 86_400, 604_800, 90)] == [
        "5 min", "15 min", "1 h", "1 day", "7 days", "90 s",
    ]  # fmt: skip


def test_the_graph_beside_a_dataset_is_found_as_each_set_ships_it(tmp_path: Path) -> None:
    """``--batched`` reads the graph shipped beside the data: PEMS' ``<folder>.csv``, NYC's
    ``adjacency.csv``, METR-LA's and PEMS-BAY's ``adj_mx.pkl``; none where there is none."""
    from stream_app.offline.graphs import graph_beside as graph_file

    folder = tmp_path / "metr-la"
    folder.mkdir()
    (folder / "metr-la.h5").write_bytes(b"")
    assert graph_file(folder / "metr-la.h5") is None
    (folder / "adj_mx.pkl").write_bytes(b"")
    assert graph_file(folder / "metr-la.h5") == folder / "adj_mx.pkl"
    (folder / "metr-la.csv").write_text("from,to,cost\n")
    assert graph_file(folder / "metr-la.h5") == folder / "metr-la.csv"  # the folder's own first
    assert graph_file(folder / "metr-la.csv") == folder / "adj_mx.pkl"  # never the data itself


def test_the_replay_waits_while_the_retrain_worker_answers_the_events_seen(
    tmp_path: Path,
) -> None:
    """At the demo's pace a minute of fine-tuning would let hours of data pass; in real time it
    is within a step. So the paced replay holds until the retrain worker's log answers every
    retrain event read so far; not for an event of the fast part alone, nor near the end."""
    import asyncio

    from stream_app.tools.demo import _Hold, _Say
    from stream_app.tools.demo_report import Observed

    observed, log = Observed(), tmp_path / "retrain.log"
    log.write_text("")
    hold = _Hold(observed, log, _Say(quiet=True), end=100, trial_steps=10, paced_from_s=1000)

    async def scenario() -> tuple[float, float, float, float]:
        observed.events.append({"detected_at": "1970-01-01T00:16:39Z"})  # 999: the fast part's
        none_pending = await hold(0)
        observed.events.append({"detected_at": "1970-01-01T00:16:40Z"})  # 1000: paced

        async def answer() -> None:
            await asyncio.sleep(0.6)
            log.write_text("".join(
                f"12:00 INFO stream_app.loop.retraining: retrain event e{n}: rejected\n"
                for n in (1, 2)
            ))  # fmt: skip

        answering = asyncio.create_task(answer())
        too_late = await hold(90)  # 10 steps left: a challenger's trial would not end
        held = await hold(89)
        await answering
        return none_pending, too_late, held, await hold(89)

    none_pending, too_late, held, after = asyncio.run(scenario())
    assert none_pending == 0.0 and too_late == 0.0 and after == 0.0
    assert 0.6 <= held < 2.0


def test_holds_stop_once_their_budget_is_spent_and_the_cooldown_is_in_steps(
    tmp_path: Path,
) -> None:
    """An hourly dataset's monitors may fire every few paced steps: past ``HOLD_BUDGET_S`` of
    holds the replay no longer waits, and the demo's cool-down is at least 72 grid steps (6
    hours at 5 minutes as a worker's default, 3 days at an hour) unless the variable says."""
    import asyncio

    from stream_app.settings import Settings
    from stream_app.tools import demo
    from stream_app.tools.demo import _Hold, _Say, cooldown_s
    from stream_app.tools.demo_report import Observed

    observed, log = Observed(), tmp_path / "retrain.log"
    log.write_text("")
    observed.events.append({"detected_at": "1970-01-01T00:16:40Z"})
    hold = _Hold(observed, log, _Say(quiet=True), end=100, paced_from_s=1000)
    hold.held_s = demo.HOLD_BUDGET_S - 0.5
    assert 0.4 < asyncio.run(hold(10)) < 2.0  # the last of the budget is still held
    assert hold.held_s >= demo.HOLD_BUDGET_S
    assert asyncio.run(hold(11)) == 0.0  # spent: the event is still unanswered, no hold
    settings = Settings()
    assert cooldown_s(settings, 300, {}) == settings.retrain_cooldown_s == 21_600
    assert cooldown_s(settings, 3600, {}) == 72 * 3600
    assert cooldown_s(settings, 3600, {"STCAST_RETRAIN_COOLDOWN_S": "60"}) == 21_600


def test_a_hold_ends_with_the_reason_when_the_retrain_worker_has_exited(tmp_path: Path) -> None:
    """A retrain worker that died answers nothing: the demo stops with its last log line
    rather than waiting out every paced step (it crept on for minutes)."""
    import asyncio

    from stream_app.tools.demo import _Hold, _Say
    from stream_app.tools.demo_report import Observed

    log = tmp_path / "retrain.log"
    log.write_text("12:00 INFO started\nstcast retrain-worker: CommitFailedError: rebalanced\n")
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    observed = Observed()
    observed.events.append({"detected_at": "1970-01-01T00:16:40Z"})
    hold = _Hold(observed, log, _Say(quiet=True), end=100, paced_from_s=1000, retrainer=exited)
    with pytest.raises(RuntimeError, match=r"exited with status 3: .*CommitFailedError"):
        asyncio.run(hold(10))


def test_the_report_names_a_version_still_in_its_trial(tmp_path: Path) -> None:
    from stream_app.loop.registry import Registry
    from stream_app.offline.datasets import bundled_dataset_path, load_dataset
    from stream_app.tools.demo_report import Observed, demo_report, format_report

    dataset = load_dataset(bundled_dataset_path())
    observed = Observed()
    for step in range(100, 104):
        for sensor in dataset.sensors[:3]:
            observed.forecasts[(sensor, step)] = ([0.0] * 12, "m@1")
    observed.updates = [{"model": "m@2", "validation": {}}]
    observed.retrains = ["e1: published m@2 (holdout ...)", "e2: published m@3 (holdout ...)"]
    report = demo_report(dataset, 300, observed, Registry(tmp_path), 1.0)
    assert report["served"] == [{"model": "m@1", "from": "Fri 01 Jul 08:20"}]
    assert report["on_trial_at_end"] == ["m@2"]
    assert report["published_after_the_end"] == ["m@3"]  # its announcement came too late
    assert "  m@2: still in its trial when the stream ended" in format_report(report)
    assert "  m@3: published as the stream ended, never tried" in format_report(report)
    observed.canaries = ["trial of m@2 against m@1 over 900 targets: MAE 2.0 vs 1.0 at step 12"]
    assert demo_report(dataset, 300, observed, Registry(tmp_path), 1.0)["on_trial_at_end"] == []
