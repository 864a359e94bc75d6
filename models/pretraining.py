"""The pre-training loop: random mixed batches for a wall-clock budget, quantile loss.

The loss is the pinball loss of the three quantiles in each window's own units (its context's
scale), so every series weighs the same whatever its units. The learning rate warms up, then
follows a cosine to a tenth of its peak over the budget (time, not epochs: the corpus is drawn
from, never exhausted); the weights served are an exponential moving average of the trained
ones. Nothing is selected on data: no held-out part of any dataset is read.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from export.universal_export import export_universal
from stream_app.core.card import ModelCard
from stream_app.offline.corpus import PRETRAINING_SETS, load_pretraining_sets, manifest

from .checkpoint import CHECKPOINT_FILE
from .pretrain_data import NEIGHBOURS, Batch, Sampler, sources_of, with_coarser_steps
from .universal import UniversalConfig, UniversalForecaster, pinball, save_universal

WARMUP_S = 20.0


@dataclass(frozen=True)
class PretrainConfig:
    """How the optimisation runs."""

    budget_s: float = 600.0
    batch_size: int = 256
    lr: float = 2e-3
    final_lr_share: float = 0.1
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Pretrained:
    """The averaged weights and how the run went."""

    model: UniversalForecaster
    steps: int
    windows: int
    seconds: float
    final_loss: float  # mean training loss of the last 100 steps, normalised units


def pretrain(
    model: UniversalForecaster,
    sampler: Sampler,
    config: PretrainConfig,
    *,
    progress: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> Pretrained:
    """Train ``model`` in place for ``config.budget_s`` seconds; return its weight average."""
    torch.manual_seed(config.seed)
    optimiser = torch.optim.AdamW(model.parameters(), config.lr, weight_decay=config.weight_decay)
    average = copy.deepcopy(model).eval()
    started = clock()
    losses: list[float] = []
    steps = windows = 0
    bar = tqdm(total=int(config.budget_s), unit="s", disable=not progress, desc="pre-training")
    while (elapsed := clock() - started) < config.budget_s or steps == 0:
        _set_lr(optimiser, config, elapsed)
        batch = sampler.batch(config.batch_size)
        losses.append(_step(model, optimiser, batch, config))
        _update_average(average, model, config.ema_decay, steps)
        steps, windows = steps + 1, windows + len(batch)
        if steps % 50 == 0:
            bar.n = min(int(clock() - started), int(config.budget_s))
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}", windows=windows)
    bar.close()
    seconds = clock() - started
    return Pretrained(average, steps, windows, seconds, float(np.mean(losses[-100:])))


def _step(
    model: UniversalForecaster,
    optimiser: torch.optim.Optimizer,
    batch: Batch,
    config: PretrainConfig,
) -> float:
    model.train()
    inputs = [
        torch.from_numpy(a) for a in (batch.context, batch.step_s, batch.calendar, batch.neighbours)
    ]
    target = torch.from_numpy(batch.target)
    q, mean, scale = model.forward_normalised(*inputs)
    seen = ~torch.isnan(target)
    z = torch.where(seen, (target - mean) / scale, torch.zeros_like(target)).clamp(-20.0, 20.0)
    loss = pinball(q, z, seen, model.config.quantiles)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
    optimiser.step()
    return float(loss.detach())


def _set_lr(optimiser: torch.optim.Optimizer, config: PretrainConfig, elapsed: float) -> None:
    if elapsed < WARMUP_S:
        share = max(elapsed / WARMUP_S, 0.05)
    else:
        progress = min((elapsed - WARMUP_S) / max(config.budget_s - WARMUP_S, 1.0), 1.0)
        floor = config.final_lr_share
        share = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    for group in optimiser.param_groups:
        group["lr"] = config.lr * share


@torch.no_grad()
def _update_average(
    average: UniversalForecaster, model: UniversalForecaster, decay: float, step: int
) -> None:
    # the average starts short, so that a short run's average is not its initial weights
    d = min(decay, (1 + step) / (10 + step))
    for mine, theirs in zip(average.parameters(), model.parameters(), strict=True):
        mine.mul_(d).add_(theirs.detach(), alpha=1 - d)


DEFAULT_PRETRAINING = PretrainConfig()
DEFAULT_ARCHITECTURE = UniversalConfig()
NEIGHBOUR_RULE = {
    "k": NEIGHBOURS,
    "rule": "graph-weighted mean of the k heaviest neighbours' contexts, each normalised by its "
    "own context's mean and scale (stream_app.core.contexts.neighbour_context); the given graph, "
    "else top-k correlations of the sensors' history; NaN (masked) when there is none",
}


@dataclass(frozen=True)
class PretrainResult:
    """What ``run_pretraining`` wrote and how the run went."""

    card: ModelCard
    out: Path
    run: Pretrained
    sets: tuple[str, ...]


def run_pretraining(
    out: Path,
    *,
    exclude: Sequence[str] = (),
    config: PretrainConfig = DEFAULT_PRETRAINING,
    model_config: UniversalConfig = DEFAULT_ARCHITECTURE,
    threads: int = 1,
    data_dir: Path | None = None,
    progress: bool = True,
    neighbours_k: int = NEIGHBOURS,
) -> PretrainResult:
    """Pre-train on every set of the corpus but ``exclude``; write model, card, checkpoint."""
    names = _included(exclude)
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    sets = load_pretraining_sets(names, data_dir)
    sources = with_coarser_steps(sources_of(sets, neighbours_k))
    model = UniversalForecaster(model_config)
    sampler = Sampler(sources, model_config.context, model_config.horizon, seed=config.seed)
    run = pretrain(model, sampler, config, progress=progress)
    training = {
        "kind": "pretraining",
        "config": config.to_dict(),
        "excluded": sorted(set(PRETRAINING_SETS) - set(names)),
        "steps": run.steps,
        "windows": run.windows,
        "seconds": round(run.seconds, 1),
        "final_loss": run.final_loss,
        "threads": threads,
        "corpus": manifest(sets),
        "sources": [
            {"name": s.name, "step_s": s.step_s, "steps": int(s.values.shape[0])} for s in sources
        ],
    }
    card = export_universal(run.model, out, neighbours=NEIGHBOUR_RULE, training=training)
    save_universal(run.model, out / CHECKPOINT_FILE, training)
    return PretrainResult(card, out, run, tuple(names))


def _included(exclude: Sequence[str]) -> list[str]:
    wanted = {name.upper() for name in exclude}
    unknown = wanted - set(PRETRAINING_SETS)
    if unknown:
        raise ValueError(
            f"--exclude {sorted(unknown)}: not pre-training sets; expected some of "
            f"{list(PRETRAINING_SETS)}"
        )
    return [name for name in PRETRAINING_SETS if name not in wanted]
