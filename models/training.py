"""``train``: from a dataset and a protocol to ``checkpoint.pt``, ``model.onnx`` and ``card.json``.

The protocol's parts are used as the field uses them: fit on train, early-stop and select on
val; test is never read here, so ``stcast evaluate`` scores a model on data it never chose on.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.torch_export import ExportSpec, export_model
from stream_app.core.card import CARD_FILE, MODEL_FILE, Normalization
from stream_app.offline.datasets import GridDataset
from stream_app.offline.protocols import Split, split

from .checkpoint import CHECKPOINT_FILE, Checkpoint, save_checkpoint
from .fitting import Fitted, denormalise, fit, predict
from .losses import report
from .lstm import GlobalLstm
from .presets import DEFAULT_PRESET, Preset, get_preset
from .samples import Samples, fit_normalization, make_samples

EXPORT_RESERVE_S = 15.0  # of the wall-clock budget, kept for the checkpoint and the export
MODEL_VERSION = "1"


@dataclass(frozen=True)
class TrainResult:
    """Where the files went and the figures of the run (metrics in the readings' units)."""

    out_dir: Path
    checkpoint: Path
    model: Path
    card: Path
    preset: str
    epochs: int
    best_epoch: int
    seconds: float
    stopped: str  # "early stop", "time budget" or "max_epochs"
    val_metrics: dict[str, float]
    # the share of the last epoch's windows fitted: below 1 where the time budget cut it
    last_epoch_share: float = 1.0


@dataclass(frozen=True)
class _Problem:
    """A dataset under a protocol, ready to fit: parts, normalisation and samples."""

    dataset: GridDataset
    parts: Split
    norm: Normalization
    train: Samples
    val: Samples


def train(
    dataset: GridDataset,
    protocol: str,
    out_dir: Path,
    preset: str | Preset = DEFAULT_PRESET,
    *,
    seed: int = 0,
    max_minutes: float = 10.0,
    threads: int = 1,
    progress: bool = True,
    version: str = MODEL_VERSION,
) -> TrainResult:
    """Train a global LSTM on ``dataset`` under ``protocol`` and export it to ``out_dir``.

    ``max_minutes`` bounds the whole call's wall-clock time; ``threads`` is torch's intra-op
    thread count. Runs are repeatable for a given seed, preset and thread count.
    """
    start = time.monotonic()
    chosen = (get_preset(preset) if isinstance(preset, str) else preset).for_protocol(protocol)
    seed_everything(seed, threads)
    problem = _prepare(dataset, protocol, chosen)
    deadline = start + max_minutes * 60 - EXPORT_RESERVE_S
    model, fitted = _fit(problem, chosen, deadline=deadline, seed=seed, progress=progress)
    val_metrics = validation_report(model, problem)
    summary = _summary(problem, chosen, fitted, seed, threads, start)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(
        model, problem.norm, dataset.sensors, dataset.step_s, chosen.to_dict(), summary
    )
    save_checkpoint(out_dir / CHECKPOINT_FILE, checkpoint)
    spec = _export_spec(problem, model, summary, val_metrics, version)
    export_model(model, out_dir, spec, seed=seed)
    return TrainResult(
        out_dir=out_dir,
        checkpoint=out_dir / CHECKPOINT_FILE,
        model=out_dir / MODEL_FILE,
        card=out_dir / CARD_FILE,
        preset=chosen.name,
        epochs=len(fitted.history),
        best_epoch=fitted.best_epoch,
        seconds=time.monotonic() - start,
        stopped=fitted.stopped,
        val_metrics=val_metrics,
    )


def seed_everything(seed: int, threads: int) -> None:
    """Seed python, numpy and torch, and make torch deterministic on ``threads`` threads."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def validation_report(model: GlobalLstm, problem: _Problem) -> dict[str, float]:
    """The protocol's metrics of ``model`` on the validation part, in the readings' units."""
    val = problem.val
    pred = denormalise(predict(model, val), problem.norm)
    return report(problem.parts, problem.dataset.step_s, pred, val.target, val.mask)


def _prepare(dataset: GridDataset, protocol: str, preset: Preset) -> _Problem:
    parts = split(dataset, protocol)
    norm = fit_normalization(dataset, parts)
    train_set = make_samples(dataset, parts, parts.train, norm, preset.features)
    val_set = make_samples(dataset, parts, parts.val, norm, preset.features)
    return _Problem(dataset, parts, norm, train_set, val_set)


def _fit(
    problem: _Problem, preset: Preset, *, deadline: float, seed: int, progress: bool
) -> tuple[GlobalLstm, Fitted]:
    """A fresh network of ``preset``, fitted, holding its best validation weights."""
    parts = problem.parts
    model = GlobalLstm(
        preset.lstm_config(parts.window, parts.horizon, len(problem.dataset.sensors))
    )
    fitted = fit(
        model,
        preset,
        problem.train,
        problem.val,
        problem.norm,
        deadline=deadline,
        seed=seed,
        progress=progress,
    )
    model.load_state_dict(fitted.state)
    return model, fitted


def _summary(
    problem: _Problem, preset: Preset, fitted: Fitted, seed: int, threads: int, start: float
) -> dict[str, Any]:
    parts = problem.parts
    best = fitted.history[fitted.best_epoch - 1] if fitted.best_epoch else None
    return {
        "dataset": problem.dataset.name,
        "protocol": parts.protocol,
        "parts": {name: [r.start, r.stop] for name, r in _parts(parts)},
        "samples": {"train": len(problem.train), "val": len(problem.val)},
        "preset": preset.name,
        "settings": preset.to_dict(),
        "epochs": len(fitted.history),
        "best_epoch": fitted.best_epoch,
        "best_val_mae": None if best is None else round(best.val_mae, 4),
        "val_mae_by_epoch": [round(log.val_mae, 4) for log in fitted.history],
        "stopped": fitted.stopped,
        "seconds": round(time.monotonic() - start, 1),
        "seed": seed,
        "threads": threads,
    }


def _parts(parts: Split) -> tuple[tuple[str, range], ...]:
    return (("train", parts.train), ("val", parts.val), ("test", parts.test))


def _export_spec(
    problem: _Problem,
    model: GlobalLstm,
    summary: dict[str, Any],
    val_metrics: dict[str, float],
    version: str,
) -> ExportSpec:
    dataset, parts = problem.dataset, problem.parts
    return ExportSpec(
        name=f"{dataset.name}-lstm",
        version=version,
        window=parts.window,
        horizon=parts.horizon,
        step_s=dataset.step_s,
        features=model.config.features,
        sensors=dataset.sensors,
        mean=problem.norm.mean,
        std=problem.norm.std,
        training=summary,
        metrics={"val": {k: round(v, 4) for k, v in val_metrics.items()}},
    )
