"""``stcast train --init universal``: the pre-trained model adapted to one network.

The protocol's parts are used as ``stcast train`` uses them: the weights are fitted on the
training part's windows (each with its long context and its neighbours, as the runtime builds
them), the epoch kept is the one with the lowest validation MAE, and the test part is never
read. The loss is the quantile loss in the network's own units (divided by its spread), also
for protocols that report RMSE beside MAE: with the median's squared error added (until
2026-12-07) no epoch on SZ-taxi ever beat the pre-trained weights on the validation MAE, and
without it the kept epoch is better on the test part's RMSE too (``docs/universal.md``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from tqdm import tqdm

from export.universal_export import export_universal
from stream_app.core.card import CARD_FILE, MODEL_FILE, ModelCard
from stream_app.core.contexts import calendar, rolling_stats
from stream_app.offline.datasets import GridDataset
from stream_app.offline.model_inputs import Neighbours, contexts, padded
from stream_app.offline.protocols import Split, split

from .checkpoint import CHECKPOINT_FILE
from .fitting import within_budget
from .pretrain_data import MIN_CONTEXT, fast_neighbour_contexts
from .pretraining import NEIGHBOUR_RULE
from .training import EXPORT_RESERVE_S, TrainResult, seed_everything
from .universal import (
    UniversalConfig,
    UniversalForecaster,
    for_sensors,
    interval_scale_for,
    load_universal,
    pinball,
    save_universal,
    with_interval_scale,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Chosen on the validation parts (2026-12-04): at 3e-4 without sensor rows PEMS08's validation
# MAE went from 18.61 (the pre-trained weights) to 16.27 in two epochs; at 1e-4 with a sensor
# embedding (new rows at 1e-3) to 16.82. Los-loop's and SZ-taxi's never improved on the
# pre-trained weights at 3e-4 (best epoch 0: the pre-trained model is kept).
LR = 3e-4
# A retrain fine-tunes on a few days of one network's newest readings: a sixth of the offline
# learning rate. In the rolling backtest of benchmarks/retrain_validation.py (PEMS08, every 120
# steps, 30 s each) every challenger at 5e-5 would then have served better than the model it
# replaced (0.67-0.98 x, 8 of 8), at 3e-4 six of eight (one 1.02 x, one no better), and the
# newest held-back hours accepted 5 good ones and no bad one at 5e-5, 2 and 1 at 3e-4.
RETRAIN_LR = 5e-5
SENSOR_LR = 1e-3
BATCH = 256
PATIENCE = 4  # epochs without a better validation MAE
MAX_EPOCHS = 60
EVAL_BATCH = 2048


@dataclass(frozen=True)
class _Fitted:
    """What ``_fit`` ends with: the kept weights and how they were chosen."""

    state: dict[str, Tensor]
    history: list[float]  # the validation MAE by epoch, [0] the weights it started from
    stopped: str  # why it stopped
    share: float  # of the last epoch's pairs fitted (below 1: the time budget cut it)
    quantiles: npt.NDArray[np.float32]  # the kept weights' on the validation part


@dataclass(frozen=True)
class _Pairs:
    """(window end, sensor) pairs of one part, with their targets in the readings' units."""

    ends: IntArray
    sensors: IntArray
    target: npt.NDArray[np.float32]  # (P, H), NaN where not scored

    def __len__(self) -> int:
        return len(self.ends)


class _Inputs:
    """The runtime's inputs for any pairs of one dataset (contexts, neighbours, calendar)."""

    def __init__(
        self, dataset: GridDataset, series: FloatArray, window: int, neighbours: Neighbours | None,
        calendar_known: bool, with_sensor: bool = False,
    ) -> None:  # fmt: skip
        self.dataset, self.window, self.calendar_known = dataset, window, calendar_known
        self.with_sensor = with_sensor  # a network's model: each pair's sensor row
        self.pad = padded(series, window)
        self.neighbours = neighbours
        self.mean, self.scale = rolling_stats(series, window)
        self.times = dataset.timestamps()

    def tensors(self, ends: IntArray, sensors: IntArray) -> list[Tensor]:
        context = contexts(self.pad, ends, sensors, self.window)
        n = len(ends)
        if self.neighbours is None:
            nb = np.full((n, self.window), np.nan, dtype=np.float32)
        else:
            index, weight = self.neighbours
            nb = fast_neighbour_contexts(
                self.pad, self.mean, self.scale, ends, self.window, index[sensors], weight[sensors]
            )
        step = np.full((n, 1), self.dataset.step_s, dtype=np.float32)
        cal = calendar(self.times[ends], self.calendar_known)
        tensors = [torch.from_numpy(a) for a in (context, step, cal, nb)]
        if self.with_sensor:  # the dataset's column is the sensor's embedding row
            tensors.append(torch.from_numpy(np.ascontiguousarray(sensors, dtype=np.int64)))
        return tensors


def fine_tune_universal(
    dataset: GridDataset,
    protocol: str,
    out_dir: Path,
    init: Path,
    *,
    seed: int = 0,
    max_minutes: float = 10.0,
    threads: int = 2,
    progress: bool = True,
    neighbours: Neighbours | None = None,
    calendar_known: bool = True,
    version: str = "1",
    max_epochs: int = MAX_EPOCHS,
    sensor_rows: bool = False,
) -> TrainResult:
    """Adapt the universal model in ``init`` to ``dataset`` under ``protocol``; export it."""
    start = time.monotonic()
    return adapt(
        dataset,
        split(dataset, protocol),
        out_dir,
        init,
        name=f"{dataset.name}-universal",
        version=version,
        deadline=start + max_minutes * 60 - EXPORT_RESERVE_S,
        seed=seed,
        threads=threads,
        progress=progress,
        neighbours=neighbours,
        calendar_known=calendar_known,
        max_epochs=max_epochs,
        sensor_rows=sensor_rows,
    )


def fine_tune_recent(
    serving_dir: Path,
    recent: GridDataset,
    holdout_from: int,
    out_dir: Path,
    name: str,
    version: str,
    *,
    max_seconds: float = 120.0,
    threads: int = 1,
    seed: int = 0,
    held_out: range | None = None,
    lr: float = RETRAIN_LR,
) -> TrainResult:
    """The retrain worker's fine-tuning of a universal model on a network's recent readings:
    fitted on the steps before the last fifth before ``holdout_from``, chosen on that fifth;
    the holdout (from ``holdout_from``) is left for the challenger's comparison. ``held_out``:
    steps inside the fitted part that are never a target either (a second holdout, e.g. the
    same hours a day earlier: ``benchmarks/retrain_validation.py``)."""
    horizon = UniversalConfig().horizon
    selection = max((holdout_from) // 5, horizon + 1)
    parts = Split(
        "recent",
        MIN_CONTEXT,
        horizon,
        train=range(0, holdout_from - selection),
        val=range(holdout_from - selection, holdout_from),
        test=range(holdout_from, recent.n_steps),
        reported=tuple(range(1, horizon + 1)),
        cumulative=False,
        masked=False,
        target_channel=0,
    )
    return adapt(
        recent,
        parts,
        out_dir,
        serving_dir,
        name=name,
        version=version,
        deadline=time.monotonic() + max_seconds,
        seed=seed,
        threads=threads,
        progress=False,
        held_out=held_out,
        lr=lr,
    )


def adapt(
    dataset: GridDataset,
    parts: Split,
    out_dir: Path,
    init: Path,
    *,
    name: str,
    version: str,
    deadline: float,
    seed: int = 0,
    threads: int = 1,
    progress: bool = True,
    neighbours: Neighbours | None = None,
    calendar_known: bool = True,
    max_epochs: int = MAX_EPOCHS,
    sensor_rows: bool = False,
    held_out: range | None = None,
    lr: float = LR,
) -> TrainResult:
    """Fine-tune ``init``'s universal model on ``parts.train`` at learning rate ``lr``, keep
    the epoch best on ``parts.val``, export it as ``name@version``; ``parts.test`` is never
    read, nor is a step of ``held_out`` ever a training target. With
    ``sensor_rows`` the model gains an embedding row per sensor of the network (its card then
    lists them; a sensor it does not know gets a row of its own)."""
    start = time.monotonic()
    seed_everything(seed, threads)
    model, base = load_universal(init / CHECKPOINT_FILE)
    base_card = ModelCard.load(init)
    if base_card.sensors and tuple(base_card.sensors) != dataset.sensors:
        raise ValueError(
            f"{base_card.model_id} was fine-tuned for {len(base_card.sensors)} other sensors: "
            "fine-tune the universal model for this network instead"
        )
    if sensor_rows or model.config.sensors:
        model = for_sensors(model, dataset.n_sensors)
    series = dataset.values[:, :, parts.target_channel]
    own = model.config.sensors > 0
    inputs = _Inputs(dataset, series, model.config.context, neighbours, calendar_known, own)
    train, val = _pairs(series, parts, parts.train, model), _pairs(series, parts, parts.val, model)
    if held_out is not None:
        train = _targets_outside(train, held_out, model.config.horizon)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"{dataset.n_steps} steps leave {len(train)} training and {len(val)} selection "
            "windows: wait for more history"
        )
    spread = float(np.nanstd(series[parts.train]) or 1.0)
    fitted = _fit(model, inputs, train, val, spread, deadline, seed, progress, max_epochs, lr)
    history = fitted.history
    model.load_state_dict(fitted.state)
    model = _calibrated(model, fitted.quantiles, val)
    val_mae = min(history)  # the kept weights' (the interval's width leaves the median as is)
    summary = {
        "kind": "fine-tuning",
        "init": base_card.model_id,
        "init_sha256": base_card.onnx_sha256,
        "dataset": dataset.name,
        "protocol": parts.protocol,
        "parts": {"train": _span(parts.train), "val": _span(parts.val)},
        "pairs": {"train": len(train), "val": len(val)},
        "val_mae_by_epoch": [round(v, 4) for v in history],  # [0]: the pre-trained weights
        "best_epoch": int(np.argmin(history)),  # 0: fine-tuning found nothing better
        "last_epoch_share": round(fitted.share, 3),  # below 1: the time budget cut the last epoch
        "seconds": round(time.monotonic() - start, 1),
        "seed": seed,
        "lr": lr,
        "threads": threads,
        "pretraining": base.get("corpus", []),
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    save_universal(model, out_dir / CHECKPOINT_FILE, {**base, "fine_tuning": summary})
    export_universal(
        model,
        out_dir,
        name=name,
        version=version,
        neighbours=NEIGHBOUR_RULE,
        sensors=dataset.sensors if own else (),
        training=summary,
        metrics={"val": {"mae": round(val_mae, 4)}},
    )
    return TrainResult(
        out_dir=out_dir,
        checkpoint=out_dir / CHECKPOINT_FILE,
        model=out_dir / MODEL_FILE,
        card=out_dir / CARD_FILE,
        preset="universal",
        epochs=len(history) - 1,
        best_epoch=summary["best_epoch"],
        seconds=time.monotonic() - start,
        stopped=fitted.stopped,
        val_metrics={"mae": val_mae},
        last_epoch_share=fitted.share,
    )


def _pairs(series: FloatArray, parts: Split, part: range, model: UniversalForecaster) -> _Pairs:
    """Every (end, sensor) of ``part`` whose newest reading is there and whose targets count."""
    ends = parts.sample_ends(part)
    horizon = model.config.horizon
    n = series.shape[1]
    end_rows = np.repeat(ends, n)
    sensors = np.tile(np.arange(n, dtype=np.int64), len(ends))
    steps = end_rows[:, None] + np.arange(1, horizon + 1)
    target = series[np.minimum(steps, len(series) - 1), sensors[:, None]].astype(np.float32)
    target[steps >= len(series)] = np.nan
    target[:, parts.horizon :] = np.nan  # steps the protocol does not score
    if parts.masked:
        target[target == 0] = np.nan
    seen = ~np.isnan(series[end_rows, sensors])
    history = _observed_before(series, end_rows, sensors)
    keep = seen & (history >= MIN_CONTEXT) & ~np.isnan(target).all(axis=1)
    return _Pairs(end_rows[keep], sensors[keep], target[keep])


def _targets_outside(pairs: _Pairs, steps: range, horizon: int) -> _Pairs:
    """The pairs none of whose ``horizon`` targets falls in ``steps``."""
    keep = (pairs.ends + horizon < steps.start) | (pairs.ends + 1 >= steps.stop)
    return _Pairs(pairs.ends[keep], pairs.sensors[keep], pairs.target[keep])


def _observed_before(series: FloatArray, ends: IntArray, sensors: IntArray) -> IntArray:
    """How many readings each sensor has up to each end (its warm-up)."""
    counts = np.cumsum(~np.isnan(series), axis=0)
    out: IntArray = counts[ends, sensors]
    return out


def _fit(
    model: UniversalForecaster,
    inputs: _Inputs,
    train: _Pairs,
    val: _Pairs,
    spread: float,
    deadline: float,
    seed: int,
    progress: bool,
    max_epochs: int,
    lr: float,
) -> _Fitted:
    """Epochs until ``deadline`` (another would pass it) or ``PATIENCE`` epochs without
    progress. An epoch that would still run at the deadline, less the time its validation
    takes, is cut there (the first, on a slow machine: a retrain's budget is a budget), and
    the windows it fitted are judged as a whole epoch's are."""
    rng = np.random.default_rng(seed)
    own = [p for name, p in model.named_parameters() if name.startswith("sensor_embedding")]
    rest = [p for name, p in model.named_parameters() if not name.startswith("sensor_embedding")]
    groups = [{"params": rest, "lr": lr}, {"params": own, "lr": SENSOR_LR}]
    optimiser = torch.optim.AdamW(groups, lr, weight_decay=1e-4)
    began = time.monotonic()
    mae, best_q = _validated(model, inputs, val)
    best_state, history = copy.deepcopy(model.state_dict()), [mae]
    val_s = time.monotonic() - began
    since_best, epoch_s, stopped, share = 0, 0.0, "max_epochs", 1.0
    bar = tqdm(total=max_epochs, unit="epoch", disable=not progress, desc="fine-tuning")
    for _ in range(max_epochs):
        if time.monotonic() + epoch_s + val_s > deadline:
            stopped = "time budget"
            break
        if since_best >= PATIENCE:
            stopped = "early stop"
            break
        began = time.monotonic()
        share = _epoch(model, optimiser, inputs, train, spread, rng, until=deadline - val_s)
        mae, quantiles = _validated(model, inputs, val)
        history.append(mae)
        epoch_s = time.monotonic() - began
        if history[-1] < min(history[:-1]):
            best_state, best_q, since_best = copy.deepcopy(model.state_dict()), quantiles, 0
        else:
            since_best += 1
        bar.update(1)
        bar.set_postfix(val_mae=f"{history[-1]:.4f}", best=f"{min(history):.4f}")
        within_budget(bar, len(history) - 1, epoch_s, deadline, max_epochs)
        if share < 1.0:
            stopped = "time budget"
            break
    bar.close()
    return _Fitted(best_state, history, stopped, share, best_q)


def _epoch(
    model: UniversalForecaster,
    optimiser: torch.optim.Optimizer,
    inputs: _Inputs,
    train: _Pairs,
    spread: float,
    rng: np.random.Generator,
    until: float = math.inf,
) -> float:
    """One pass over the shuffled training pairs, cut when ``time.monotonic()`` reaches
    ``until`` (after one batch at least); the share of the pairs fitted."""
    model.train()
    order = rng.permutation(len(train))
    for i in range(0, len(order), BATCH):
        if i and time.monotonic() >= until:
            return i / len(order)
        pick = order[i : i + BATCH]
        q = model(*inputs.tensors(train.ends[pick], train.sensors[pick]))
        target = torch.from_numpy(train.target[pick])
        seen = ~torch.isnan(target)
        y = torch.where(seen, target, torch.zeros_like(target))
        loss = pinball(q / spread, y / spread, seen, model.config.quantiles)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
    return 1.0


def _calibrated(
    model: UniversalForecaster, quantiles: npt.NDArray[np.float32], val: _Pairs
) -> UniversalForecaster:
    """The model with its interval widened or narrowed to cover 80 % of the validation part,
    whose ``quantiles`` it gave."""
    q = quantiles.astype(np.float64)
    target = val.target.astype(np.float64)
    scale = interval_scale_for(q[:, 1], q[:, 0], q[:, 2], target)
    return with_interval_scale(model, scale * model.config.interval_scale)


@torch.no_grad()
def _validated(
    model: UniversalForecaster, inputs: _Inputs, val: _Pairs
) -> tuple[float, npt.NDArray[np.float32]]:
    """The median's MAE over the protocol's scored steps of the validation part (its targets
    are NaN elsewhere), and the (pairs, quantiles, horizon) forecasts it comes from."""
    model.eval()
    chunks = [
        model(
            *inputs.tensors(val.ends[i : i + EVAL_BATCH], val.sensors[i : i + EVAL_BATCH])
        ).numpy()
        for i in range(0, len(val), EVAL_BATCH)
    ]
    quantiles = np.concatenate(chunks)
    err = np.abs(quantiles[:, 1, :] - val.target)
    seen = ~np.isnan(err)
    return float(err[seen].sum(dtype=np.float64)) / max(int(seen.sum()), 1), quantiles


def _span(part: range) -> list[int]:
    return [part.start, part.stop]
