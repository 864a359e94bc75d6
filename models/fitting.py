"""The optimisation loop: epochs on the training samples, early stopping on validation MAE.

Validation MAE is in the readings' units and masked like the protocol's metrics; the weights
of the best epoch are kept. The loop stops at ``max_epochs``, after ``patience`` epochs without
improvement, or when the next epoch would overrun the wall-clock deadline.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from tqdm import tqdm

from stream_app.core.card import Normalization

from .losses import as_tensor, masked_loss, masked_mae
from .lstm import GlobalLstm
from .presets import Preset
from .samples import Samples

PREDICT_BATCH = 8192


@dataclass(frozen=True)
class EpochLog:
    """One epoch's figures: losses in normalised units, MAE in the readings' units."""

    epoch: int
    train_loss: float
    val_loss: float
    val_mae: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class Fitted:
    """The best epoch's weights and how the loop went."""

    state: dict[str, Tensor]
    best_epoch: int
    history: tuple[EpochLog, ...]
    stopped: str  # why the loop ended


@dataclass(frozen=True)
class _Tensors:
    x: Tensor
    sensor: Tensor
    y: Tensor
    mask: Tensor

    @classmethod
    def of(cls, samples: Samples) -> _Tensors:
        parts = (samples.x, samples.sensor, samples.y, samples.mask)
        return cls(*(as_tensor(a) for a in parts))


def fit(
    model: GlobalLstm,
    preset: Preset,
    train: Samples,
    val: Samples,
    norm: Normalization,
    *,
    deadline: float,
    seed: int = 0,
    progress: bool = True,
) -> Fitted:
    """Train ``model`` in place and return the best weights by validation MAE.

    The first epoch always runs; later ones only if the last epoch's duration still fits
    before ``deadline`` (a ``time.monotonic`` value).
    """
    with _unfilled_memory():
        return _fit(model, preset, train, val, norm, deadline, seed, progress)


@contextmanager
def _unfilled_memory() -> Iterator[None]:
    """Leave new tensors' memory unfilled while training.

    Deterministic mode (``seed_everything``) fills every new tensor with NaN, a debugging aid
    that catches reads of uninitialised memory; the LSTM's kernels allocate large workspaces on
    every call, so the filling took 18 % of an epoch's CPU time. Every op here writes its whole
    output, so the results are bit for bit the same.
    """
    flags: Any = torch.utils.deterministic  # a settings object, though typed as a module
    before = flags.fill_uninitialized_memory
    flags.fill_uninitialized_memory = False
    try:
        yield
    finally:
        flags.fill_uninitialized_memory = before


def _fit(
    model: GlobalLstm,
    preset: Preset,
    train: Samples,
    val: Samples,
    norm: Normalization,
    deadline: float,
    seed: int,
    progress: bool,
) -> Fitted:
    run = _Run.start(model, preset, train, val, norm, seed)
    schedule = _plateau(run.optimizer, preset)
    best, state, stopped = None, _snapshot(model), "max_epochs"
    history: list[EpochLog] = []
    bar = tqdm(range(1, preset.max_epochs + 1), unit="epoch", disable=not progress)
    for epoch in bar:
        if history and time.monotonic() + history[-1].seconds > deadline:
            stopped = "time budget"
            break
        log = run.epoch(epoch)
        history.append(log)
        if best is None or log.val_mae < best.val_mae:
            best, state = log, _snapshot(run.average.model)
        if schedule is not None:
            schedule.step(log.val_mae)
        bar.set_postfix(_postfix(log, best))
        within_budget(bar, epoch, log.seconds, deadline, preset.max_epochs)
        if epoch - best.epoch >= preset.patience:
            stopped = "early stop"
            break
    bar.close()
    return Fitted(state, 0 if best is None else best.epoch, tuple(history), stopped)


def within_budget(bar: tqdm[Any], done: int, epoch_s: float, deadline: float, most: int) -> None:
    """Set an epoch bar's total to the epochs the time budget still leaves room for (at most
    ``most``), so that it shows the time the budget leaves, not that of ``most`` epochs."""
    if epoch_s > 0:
        bar.total = min(most, done + int(max(0.0, deadline - time.monotonic()) // epoch_s))
        bar.refresh()


@dataclass(frozen=True)
class _Run:
    """One fit's moving parts: the weights trained and averaged, the optimiser, the data."""

    preset: Preset
    average: WeightAverage
    optimizer: torch.optim.Optimizer
    data: _Tensors
    val: Samples
    norm: Normalization
    generator: torch.Generator

    @classmethod
    def start(
        cls,
        model: GlobalLstm,
        preset: Preset,
        train: Samples,
        val: Samples,
        norm: Normalization,
        seed: int,
    ) -> _Run:
        optimizer = torch.optim.Adam(
            model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay
        )
        generator = torch.Generator().manual_seed(seed)
        average = WeightAverage(model, preset.ema_decay)
        return cls(preset, average, optimizer, _Tensors.of(train), val, norm, generator)

    def epoch(self, number: int) -> EpochLog:
        """Train one epoch, then validate the averaged weights."""
        start = time.monotonic()
        loss = train_epoch(self.average, self.optimizer, self.preset, self.data, self.generator)
        val_loss, val_mae = evaluate(self.average.model, self.preset, self.val, self.norm)
        lr = float(self.optimizer.param_groups[0]["lr"])
        return EpochLog(number, loss, val_loss, val_mae, lr, time.monotonic() - start)


def _postfix(log: EpochLog, best: EpochLog) -> dict[str, str]:
    return {
        "loss": f"{log.train_loss:.4f}",
        "val_loss": f"{log.val_loss:.4f}",
        "val_mae": f"{log.val_mae:.3f}",
        "best": f"{best.val_mae:.3f}@{best.epoch}",
    }


def train_epoch(
    average: WeightAverage,
    optimizer: torch.optim.Optimizer,
    preset: Preset,
    data: _Tensors,
    generator: torch.Generator,
) -> float:
    """One pass over shuffled mini-batches of ``average.source``; the mean training loss."""
    model = average.source
    model.train()
    order = torch.randperm(len(data.sensor), generator=generator)
    unknown = model.config.unknown_sensor
    total, batches = 0.0, 0
    for idx in torch.split(order, preset.batch_size):
        # Some samples train the fallback row, so unseen sensors get a generic embedding.
        fallback = torch.rand(len(idx), generator=generator) < preset.fallback_p
        sensor = torch.where(fallback, unknown, data.sensor[idx])
        pred = model(data.x[idx], sensor)
        loss = masked_loss(preset.loss, pred, data.y[idx], data.mask[idx], preset.huber_delta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if preset.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), preset.clip_norm)
        optimizer.step()
        average.update()
        total, batches = total + loss.item(), batches + 1
    return total / max(batches, 1)


class WeightAverage:
    """An exponential moving average of a model's weights; with ``decay`` 0, the model itself.

    Averaging smooths the last epochs' noise out of the weights that are evaluated and kept.
    """

    def __init__(self, source: GlobalLstm, decay: float) -> None:
        self.source = source
        self.decay = decay
        self.model = copy.deepcopy(source) if decay > 0 else source
        self._steps = 0

    def update(self) -> None:
        """Move the average towards the source's current weights."""
        if self.model is self.source:
            return
        self._steps += 1
        # A short warm-up, so the random initial weights fade out of the average quickly.
        decay = min(self.decay, (1 + self._steps) / (10 + self._steps))
        with torch.no_grad():
            pairs = zip(self.model.parameters(), self.source.parameters(), strict=True)
            for avg, new in pairs:
                avg.lerp_(new, 1.0 - decay)


def evaluate(
    model: GlobalLstm, preset: Preset, samples: Samples, norm: Normalization
) -> tuple[float, float]:
    """The preset's loss (normalised) and the masked MAE (readings' units) on ``samples``."""
    pred = predict(model, samples)
    y, mask = as_tensor(samples.y), as_tensor(samples.mask)
    loss = masked_loss(preset.loss, as_tensor(pred), y, mask, preset.huber_delta)
    return float(loss), masked_mae(denormalise(pred, norm), samples.target, samples.mask)


def predict(model: GlobalLstm, samples: Samples) -> npt.NDArray[np.float32]:
    """Forecasts (S, horizon) in normalised units, in eval mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(samples), PREDICT_BATCH):
            x = as_tensor(samples.x[lo : lo + PREDICT_BATCH])
            out.append(model(x, as_tensor(samples.sensor[lo : lo + PREDICT_BATCH])).numpy())
    return np.concatenate(out) if out else np.empty((0, model.config.horizon), np.float32)


def denormalise(pred: npt.NDArray[np.float32], norm: Normalization) -> npt.NDArray[np.float64]:
    """Normalised forecasts in the readings' units, as the runtime computes them."""
    return pred.astype(np.float64) * norm.std + norm.mean


def _snapshot(model: GlobalLstm) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _plateau(
    optimizer: torch.optim.Optimizer, preset: Preset
) -> torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    if preset.lr_patience <= 0:
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.5, patience=preset.lr_patience
    )
