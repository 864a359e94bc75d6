"""The torch checkpoint: weights plus everything needed to rebuild, re-export or resume."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from stream_app.core.card import Normalization

from .lstm import GlobalLstm, LstmConfig

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class Checkpoint:
    """A trained network with its normalisation, sensors, grid step and training summary."""

    model: GlobalLstm
    normalization: Normalization
    sensors: tuple[str, ...]
    step_s: int
    preset: Mapping[str, Any]
    training: Mapping[str, Any]


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Plain containers and tensors only, so ``torch.load(weights_only=True)`` reads it."""
    config = asdict(checkpoint.model.config)
    torch.save(
        {
            "config": {**config, "features": list(config["features"])},
            "state_dict": checkpoint.model.state_dict(),
            "normalization": checkpoint.normalization.to_dict(),
            "sensors": list(checkpoint.sensors),
            "step_s": checkpoint.step_s,
            "preset": dict(checkpoint.preset),
            "training": dict(checkpoint.training),
        },
        path,
    )


def load_checkpoint(path: Path) -> Checkpoint:
    """Rebuild the network (in eval mode) and its metadata from ``save_checkpoint``'s file."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    config = LstmConfig(**{**raw["config"], "features": tuple(raw["config"]["features"])})
    model = GlobalLstm(config)
    model.load_state_dict(raw["state_dict"])
    model.eval()
    norm = raw["normalization"]
    return Checkpoint(
        model=model,
        normalization=Normalization(float(norm["mean"]), float(norm["std"])),
        sensors=tuple(raw["sensors"]),
        step_s=int(raw["step_s"]),
        preset=raw["preset"],
        training=raw["training"],
    )
