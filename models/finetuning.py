"""``fine_tune``: the serving model, warm-started on recent readings, exported as a challenger.

The recent readings come as a ``GridDataset`` of the serving model's sensors, in its card's
order (the retrain worker's history, or the online evaluation's stream so far). Only windows
whose targets all lie before ``holdout_from`` are trained on: the steps from there on are the
holdout that :mod:`stream_app.loop.challenger` scores both models on, so the challenger never sees a
reading the comparison asks it to forecast. The last ``TUNE_SHARE`` of the training steps is
kept aside to pick the best epoch, as in ``stcast train``.

What stays fixed: the network's shape, its normalisation (the embedding and the card's drift
scales keep their meaning) and the sensor list. The learning rate is a fraction of the
preset's, the weight average is shorter and the wall-clock time is bounded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from export.torch_export import ExportSpec, export_model
from stream_app.core.card import CARD_FILE, ModelCard
from stream_app.offline.datasets import GridDataset
from stream_app.offline.protocols import Split

from .checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from .fitting import fit
from .presets import Preset
from .samples import make_samples
from .training import seed_everything

TUNE_SHARE = 0.2  # of the steps before the holdout, kept aside to pick the best epoch
LR_SCALE = 0.25  # of the preset's learning rate: adjust the model, do not retrain it
EMA_DECAY = 0.98  # a few dozen optimiser steps, not the thousand of a full training
PATIENCE = 3
MAX_EPOCHS = 30


class FineTuneError(ValueError):
    """Fine-tuning cannot start: too little data, or a serving model without a checkpoint."""


@dataclass(frozen=True)
class FineTuned:
    """The challenger's directory, card and the figures of its fine-tuning."""

    out_dir: Path
    card: ModelCard
    epochs: int
    best_epoch: int
    seconds: float
    samples: int


def fine_tune(
    serving_dir: Path,
    recent: GridDataset,
    holdout_from: int,
    out_dir: Path,
    version: str,
    *,
    max_seconds: float = 120.0,
    max_epochs: int = MAX_EPOCHS,
    seed: int = 0,
    threads: int = 1,
    progress: bool = False,
) -> FineTuned:
    """Fine-tune the model in ``serving_dir`` on ``recent[:holdout_from]``; export to ``out_dir``.

    ``FineTuneError`` when ``serving_dir`` has no checkpoint, ``recent`` does not hold the
    model's sensors, or there are too few complete windows to train and select on.
    """
    start = time.monotonic()
    serving = _load(serving_dir)
    card = ModelCard.load(serving_dir / CARD_FILE)
    if recent.sensors != serving.sensors or recent.step_s != serving.step_s:
        raise FineTuneError(
            f"the recent data must hold the {len(serving.sensors)} sensors of {card.model_id} "
            f"in its order, on its {serving.step_s} s grid"
        )
    preset = replace(_fine_tuning(serving.preset), max_epochs=max_epochs)
    parts = _parts(serving, recent.n_steps, holdout_from)
    train = make_samples(recent, parts, parts.train, serving.normalization, preset.features)
    val = make_samples(recent, parts, parts.val, serving.normalization, preset.features)
    if len(train) == 0 or len(val) == 0:
        raise FineTuneError(
            f"{recent.n_steps} recent steps leave {len(train)} training and {len(val)} "
            f"selection windows before the holdout: wait for more history"
        )
    seed_everything(seed, threads)
    model = serving.model
    fitted = fit(
        model,
        preset,
        train,
        val,
        serving.normalization,
        deadline=start + max_seconds,
        seed=seed,
        progress=progress,
    )
    model.load_state_dict(fitted.state)
    summary: dict[str, Any] = {
        **serving.training,
        "fine_tuned_from": card.model_id,
        "fine_tuning": {
            "recent_start": recent.start.isoformat(),
            "recent_steps": recent.n_steps,
            "holdout_from": holdout_from,
            "samples": {"train": len(train), "val": len(val)},
            "epochs": len(fitted.history),
            "best_epoch": fitted.best_epoch,
            "stopped": fitted.stopped,
            "seconds": round(time.monotonic() - start, 1),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        out_dir / CHECKPOINT_FILE,
        Checkpoint(
            model,
            serving.normalization,
            serving.sensors,
            serving.step_s,
            serving.preset,
            summary,
        ),
    )
    spec = ExportSpec(
        name=card.name,
        version=version,
        window=card.window,
        horizon=card.horizon,
        step_s=card.step_s,
        features=card.features,
        sensors=card.sensors,
        mean=serving.normalization.mean,
        std=serving.normalization.std,
        training=summary,
        metrics=card.metrics,  # the drift scales stay those of the data it was trained on
    )
    new_card = export_model(model, out_dir, spec, seed=seed)
    return FineTuned(
        out_dir,
        new_card,
        len(fitted.history),
        fitted.best_epoch,
        time.monotonic() - start,
        len(train),
    )


def _load(serving_dir: Path) -> Checkpoint:
    path = serving_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FineTuneError(
            f"{serving_dir} has no {CHECKPOINT_FILE}: only models made by stcast train (or an "
            "earlier fine-tuning) can be fine-tuned"
        )
    return load_checkpoint(path)


def _fine_tuning(trained: Any) -> Preset:
    """The serving model's preset, turned to adjusting rather than learning from scratch."""
    settings = {**trained, "features": tuple(trained["features"])}
    preset = Preset(**settings)
    return replace(
        preset,
        lr=preset.lr * LR_SCALE,
        ema_decay=EMA_DECAY if preset.ema_decay else 0.0,
        patience=PATIENCE,
        lr_patience=0,
        max_epochs=MAX_EPOCHS,
    )


def _parts(serving: Checkpoint, n_steps: int, holdout_from: int) -> Split:
    config = serving.model.config
    protocol = str(serving.training.get("protocol", "basicts"))
    if not 0 < holdout_from <= n_steps:
        raise FineTuneError(f"holdout_from {holdout_from} is outside the {n_steps} recent steps")
    tune_from = round(holdout_from * (1 - TUNE_SHARE))
    return Split(
        protocol,
        config.window,
        config.horizon,
        train=range(0, tune_from),
        val=range(tune_from, holdout_from),
        test=range(holdout_from, n_steps),
        reported=tuple(range(1, config.horizon + 1)),
        cumulative=False,
        masked=protocol == "basicts",
        target_channel=0,
    )
