"""``stcast pretrain`` end to end on the real shared data, for seconds; the corpus sampler.

The shipped model is not re-trained here: a tiny budget proves the command pre-trains,
exports through ``export/`` (parity checked), writes the corpus manifest into the card, and
that ``stcast evaluate`` and ``stcast train --init`` take what it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.pretrain_data import Source, coarser, sources_of
from stream_app.cli import main
from stream_app.core.card import ModelCard
from stream_app.offline.corpus import load_pretraining_set, pretraining_steps
from stream_app.offline.datasets import shared_data_dir

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="../shared/data is not beside the repo")
KEEP = ("PEMS04", "BIKE_DC", "ELECTRICITY_321")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if SHARED is None:
        pytest.skip("../shared/data is not beside the repository")
    from stream_app.offline.corpus import PRETRAINING_SETS

    out = tmp_path_factory.mktemp("pretrained")
    exclude = [name for name in PRETRAINING_SETS if name not in KEEP]
    code = main(  # the flag given twice excludes both lists
        ["pretrain", "--out", str(out), "--budget-s", "4", "--threads", "1",
         "--exclude", *exclude[:2], "--exclude", *exclude[2:]]
    )  # fmt: skip
    assert code == 0
    return out


@needs_shared
def test_pretrain_writes_a_universal_model_with_its_corpus_manifest(tiny: Path) -> None:
    card = ModelCard.load(tiny)
    assert card.kind == "universal" and card.model_id == "universal@1"
    assert (tiny / "checkpoint.pt").is_file()
    training = card.training
    assert [entry["name"] for entry in training["corpus"]] == list(KEEP)
    assert "PEMS08" in training["excluded"] and training["steps"] > 0
    for entry in training["corpus"]:  # the last 20 % of every time range is left out
        assert entry["train_steps"] == pretraining_steps(entry["steps"])
    assert {s["step_s"] for s in training["sources"]} >= {300, 3600, 86400}


@needs_shared
def test_evaluate_scores_the_pretrained_model_zero_shot_with_intervals(
    tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = str(SHARED / "PEMS08") if SHARED else ""
    assert main(["evaluate", "--model", str(tiny), "--dataset", dataset, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["horizons"] == [f"H{k}" for k in range(1, 13)]
    assert set(report["relative_mae"]) >= {"persistence", "seasonal_naive"}
    assert 0.0 <= report["coverage"]["overall"] <= 1.0
    assert len(report["coverage"]["per_step"]) == 12


@needs_shared
def test_an_unknown_set_to_exclude_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["pretrain", "--out", str(tmp_path), "--budget-s", "1", "--exclude", "PEMS09"])
    assert code == 2
    assert "PEMS09" in capsys.readouterr().err


@needs_shared
def test_sources_hold_only_the_first_80_percent_of_each_set() -> None:
    pset = load_pretraining_set("BIKE_DC")
    (source,) = sources_of([pset])
    assert source.values.shape[0] == pretraining_steps(pset.dataset.n_steps) == 14035
    np.testing.assert_array_equal(
        source.values, pset.dataset.values[:14035, :, 0].astype(np.float32)
    )
    assert source.neighbour_index.shape == (3, 8)  # learned from that part: 2 others, padded


def test_a_coarser_source_averages_whole_blocks_and_ignores_gaps() -> None:
    values = np.arange(2400, dtype=np.float32).reshape(-1, 1)
    values[1] = np.nan
    source = Source(
        "s", values, 0, 300, True, np.zeros((1, 0), np.int64), np.zeros((1, 0), np.float32)
    )
    made = coarser(source, 900)
    assert made is not None and made.step_s == 900 and made.values.shape == (800, 1)
    assert made.values[0, 0] == pytest.approx(1.0)  # mean of 0 and 2: the gap is left out
    assert made.values[1, 0] == pytest.approx(4.0)
    assert coarser(source, 86_400) is None  # 8 days: too short for a daily version


@needs_shared
def test_train_init_adapts_the_pretrained_model_and_never_reads_the_test_part(
    tiny: Path, tmp_path: Path
) -> None:
    import dataclasses

    import torch

    from models.finetune_universal import fine_tune_universal
    from stream_app.offline.datasets import load_dataset
    from stream_app.offline.protocols import split

    full = load_dataset(SHARED / "PEMS08" if SHARED else "")
    small = dataclasses.replace(full, values=full.values[:, :12].copy(), sensors=full.sensors[:12])
    garbled = small.values.copy()
    garbled[split(small, "basicts").test] = 9999.0  # the test part: never fitted, never chosen on
    runs = []
    for values, out in ((small.values, tmp_path / "a"), (garbled, tmp_path / "b")):
        data = dataclasses.replace(small, values=values)
        runs.append(fine_tune_universal(data, "basicts", out, tiny, max_epochs=2, progress=False))
    card = ModelCard.load(tmp_path / "a")
    assert card.kind == "universal" and card.model_id == "pems08-universal@1"
    assert card.training["init"] == "universal@1" and card.training["protocol"] == "basicts"
    assert runs[0].epochs == 2 and np.isfinite(runs[0].val_metrics["mae"])
    assert runs[0].stopped == "max_epochs"  # neither the budget nor the patience
    assert card.training["last_epoch_share"] == runs[0].last_epoch_share == 1.0  # none cut
    hurried = fine_tune_universal(small, "basicts", tmp_path / "c", tiny, max_minutes=1e-4,
                                  progress=False)  # fmt: skip
    assert (hurried.epochs, hurried.stopped) == (0, "time budget")  # the export reserve is all
    from models.finetune_universal import LR, RETRAIN_LR, fine_tune_recent

    assert card.training["lr"] == LR
    recent = dataclasses.replace(small, values=small.values[:700, :, :1].copy(),
                                 channels=small.channels[:1])  # fmt: skip
    fine_tune_recent(tiny, recent, 664, tmp_path / "d", "net-universal", "2", max_seconds=5)
    assert ModelCard.load(tmp_path / "d").training["lr"] == RETRAIN_LR < LR  # a retrain's
    states = [torch.load(out / "checkpoint.pt", weights_only=False)["state"] for out in
              (tmp_path / "a", tmp_path / "b")]  # fmt: skip
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert runs[0].val_metrics == runs[1].val_metrics


@needs_shared
def test_an_epoch_still_running_at_its_deadline_is_cut_there(tiny: Path) -> None:
    """A retrain's budget is a budget: on a slow machine its first epoch alone outlasted it."""
    import dataclasses
    import math

    import torch

    from models.finetune_universal import BATCH, _epoch, _Inputs, _pairs
    from models.universal import load_universal
    from stream_app.offline.datasets import load_dataset
    from stream_app.offline.protocols import split

    full = load_dataset(SHARED / "PEMS08" if SHARED else "")
    small = dataclasses.replace(full, values=full.values[:, :12].copy(), sensors=full.sensors[:12])
    parts = split(small, "basicts")
    model, _ = load_universal(tiny / "checkpoint.pt")
    series = small.values[:, :, 0]
    inputs = _Inputs(small, series, model.config.context, None, True)
    train = _pairs(series, parts, parts.train, model)
    optimiser = torch.optim.AdamW(model.parameters(), 1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    cut = _epoch(model, optimiser, inputs, train, 1.0, rng, until=-math.inf)
    assert len(train) > 4 * BATCH and cut == BATCH / len(train)  # one batch, then the deadline
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _epoch(model, optimiser, inputs, train, 1.0, rng) == 1.0  # no deadline: all of it
