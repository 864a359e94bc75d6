"""``stcast evaluate --online``: faults injected as described, and the report's shape and sense."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stream_app.loop.online_eval import POLICIES, evaluate_online, inject
from stream_app.offline.datasets import GridDataset, bundled_dataset_path, load_dataset
from stream_app.settings import Settings


@pytest.fixture(scope="module")
def pems08() -> GridDataset:
    return load_dataset(bundled_dataset_path())


def test_a_shift_adds_three_standard_deviations_to_a_seeded_tenth_from_the_onset(
    pems08: GridDataset,
) -> None:
    shifted, fault = inject(pems08, "shift", seed=3, warmup_steps=300)
    again, same = inject(pems08, "shift", seed=3, warmup_steps=300)
    assert fault == same and np.array_equal(shifted.values, again.values, equal_nan=True)
    assert len(fault.columns) == 17 and 300 <= fault.onset < pems08.n_steps - 288
    cols = list(fault.columns)
    before = pems08.values[:, cols, 0]
    delta = shifted.values[:, cols, 0] - before
    np.testing.assert_allclose(delta[: fault.onset], 0)
    want = np.broadcast_to(3 * before[: fault.onset].std(axis=0), delta[fault.onset :].shape)
    np.testing.assert_allclose(delta[fault.onset :], want)
    others = [c for c in range(pems08.n_sensors) if c not in cols]
    assert np.array_equal(shifted.values[:, others], pems08.values[:, others])


def test_stuck_repeats_the_onset_and_variance_doubles_the_noise(pems08: GridDataset) -> None:
    stuck, fault = inject(pems08, "stuck", seed=1, warmup_steps=300)
    cols = list(fault.columns)
    assert (stuck.values[fault.onset :, cols, 0] == pems08.values[fault.onset, cols, 0]).all()
    noisy, fault = inject(pems08, "variance", seed=1, warmup_steps=300)
    added = (
        noisy.values[fault.onset :, list(fault.columns), 0]
        - pems08.values[fault.onset :, list(fault.columns), 0]
    )
    assert added.std() > 1.0 and abs(added.mean()) < 0.2 * added.std()  # zero-mean noise
    assert inject(pems08, "holiday", seed=1, warmup_steps=300)[0] is pems08


def test_online_report_on_a_short_stream(pems08: GridDataset, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    del torch
    from models.presets import get_preset
    from models.training import train

    small = replace(pems08, values=pems08.values[:700, :40], sensors=pems08.sensors[:40])
    brief = get_preset("seed").but(max_epochs=1, batch_size=512)
    first = replace(small, values=small.values[:400])
    model = train(first, "basicts", tmp_path / "m", brief, threads=1, progress=False).out_dir
    settings = Settings(drift_warmup=48, retrain_max_s=3.0, retrain_min_sensors=2)
    report = evaluate_online(model, small, "shift", seed=0, settings=settings)
    assert set(report) >= {"scenario", "policies", "detection"} and report["scenario"] == "shift"
    assert set(report["policies"]) == set(POLICIES)
    frozen, periodic = report["policies"]["frozen"], report["policies"]["periodic"]
    assert frozen["retrains"] == 0 and frozen["retrain_attempts"] == []
    assert [a["step"] for a in periodic["retrain_attempts"]] == [288, 576]  # once a day
    feedback = report["policies"]["feedback"]  # never retrains, but mixes after detections
    assert feedback["retrain_attempts"] == [] and feedback["rollbacks"] == []
    assert feedback["mae_after_drift"] != frozen["mae_after_drift"]
    # the same forecasts of the frozen model without the fault: the shift's cost taken away
    assert 0 < report["mae_after_drift_without_fault"] < 0.8 * frozen["mae_after_drift"]
    for policy in report["policies"].values():
        assert len(policy["mae"]) == 12 and all(v > 0 for v in policy["mae"])
    detection = report["detection"]
    assert report["faulted_sensors"] == 4
    assert 0 < detection["detected_fraction"] <= 1 and detection["median_delay_steps"] <= 12


def test_each_served_version_is_compared_with_the_one_it_replaced_on_the_same_forecasts(
    pems08: GridDataset, tmp_path: Path
) -> None:
    from stream_app.bundled import model_path
    from stream_app.loop.online_eval import served_versus_kept, stream_policy

    small = replace(pems08, values=pems08.values[:420, :12], sensors=pems08.sensors[:12])
    settings = Settings(step_s=small.step_s, canary_s=0.0)
    model = model_path("universal")
    run = stream_policy("frozen", model, small, settings, tmp_path, lambda line: None)
    # pretend a twin of the model was swapped in at step 350: it must do exactly as well
    run.served = [(0, "universal@1"), (350, "twin@2")]
    run.directory = {"universal@1": model, "twin@2": model}
    [version] = served_versus_kept(run, small, settings)
    assert (version["model"], version["replaced"]) == ("twin@2", "universal@1")
    assert (version["from_step"], version["to_step"]) == (350, 420)
    assert version["served_mae"] is not None and version["served_mae"] > 0
    assert version["served_mae"] == version["kept_mae"] and version["ratio"] == 1.0
    # frozen: served without the feedback's mix, as the version alone forecasts
    assert version["alone_mae"] == version["served_mae"] and version["alone_ratio"] == 1.0


def test_a_version_is_also_compared_alone_without_the_feedbacks_mix(
    pems08: GridDataset, tmp_path: Path
) -> None:
    from stream_app.bundled import model_path
    from stream_app.loop.online_eval import served_versus_kept, stream_policy

    small = replace(pems08, values=pems08.values[:420, :20], sensors=pems08.sensors[:20])
    shifted, fault = inject(small, "shift", seed=2, warmup_steps=120)
    settings = Settings(step_s=small.step_s, canary_s=0.0, drift_warmup=48)
    model = model_path("universal")
    run = stream_policy("feedback", model, shifted, settings, tmp_path, lambda line: None)
    assert run.detections  # the shift fired monitors: their sensors' forecasts carry the mix
    run.served = [(0, "universal@1"), (fault.onset + 6, "twin@2")]
    run.directory = {"universal@1": model, "twin@2": model}
    [version] = served_versus_kept(run, shifted, settings)
    assert version["alone_mae"] == version["kept_mae"] and version["alone_ratio"] == 1.0
    assert version["served_mae"] != version["alone_mae"]  # as served: with the mix
