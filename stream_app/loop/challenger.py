"""Challenger against champion: both models forecast the same held-back recent windows.

The holdout is the newest steps of the recent data, from ``holdout_from`` on: every window
whose targets all lie there is forecast by both models, through :class:`OnnxForecaster` (the
worker's code), and scored like ``stcast evaluate`` (NaN targets skipped, zero targets too
under the masked protocol). The challenger was fine-tuned only on windows whose targets end
before ``holdout_from`` (see ``models.finetuning``): no reading it is scored on was seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.card import UNIVERSAL
from ..core.forecasters import FloatArray, Forecaster
from ..offline.datasets import GridDataset
from ..offline.eval_baselines import evaluation_samples
from ..offline.evaluation import model_forecasts
from ..offline.protocols import Split


@dataclass(frozen=True)
class Verdict:
    """Holdout MAE of both models (readings' units) and whether the challenger won."""

    champion: str
    challenger: str
    champion_mae: float
    challenger_mae: float
    pairs: int
    min_gain: float

    @property
    def wins(self) -> bool:
        return self.challenger_mae < self.champion_mae * (1.0 - self.min_gain)

    def to_json(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "champion_mae": round(self.champion_mae, 4),
            "challenger_mae": round(self.challenger_mae, 4),
            "holdout_pairs": self.pairs,
            "min_gain": self.min_gain,
            "wins": self.wins,
        }


def compare(
    champion: Forecaster,
    challenger: Forecaster,
    recent: GridDataset,
    holdout_from: int,
    *,
    masked: bool,
    min_gain: float = 0.0,
) -> Verdict:
    """Score both on the holdout; the challenger wins if its MAE is ``min_gain`` below."""
    parts = holdout_split(champion, recent.n_steps, holdout_from, masked)
    samples = evaluation_samples(recent, parts)
    if len(samples) == 0:
        raise ValueError(
            f"no complete window has all its {champion.horizon} targets in the holdout "
            f"(steps {holdout_from}..{recent.n_steps - 1})"
        )
    scores = [
        _mae(model_forecasts(m, recent, samples), samples.targets, masked)
        for m in (champion, challenger)
    ]
    return Verdict(
        champion.model_id, challenger.model_id, scores[0], scores[1], len(samples), min_gain
    )


def holdout_split(forecaster: Forecaster, n_steps: int, holdout_from: int, masked: bool) -> Split:
    """The split whose test part is the holdout, for ``evaluation_samples``: windows as the
    model needs them (a universal model: its warm-up; it reads its context from the data)."""
    horizon = forecaster.horizon
    card = getattr(forecaster, "card", None)
    return Split(
        "holdout",
        card.warmup if card is not None and card.kind == UNIVERSAL else forecaster.window,
        horizon,
        train=range(0, holdout_from),
        val=range(holdout_from, holdout_from),
        test=range(holdout_from, n_steps),
        reported=tuple(range(1, horizon + 1)),
        cumulative=False,
        masked=masked,
        target_channel=0,
    )


def _mae(pred: FloatArray, target: FloatArray, masked: bool) -> float:
    valid = np.isfinite(target) & ((target != 0) if masked else True)
    if not valid.any():
        return math.nan
    return float(np.abs(pred - target)[valid].mean())
