"""Offline evaluation: a model and the baselines, scored on a protocol's test part.

``stcast evaluate`` calls :func:`evaluate` and prints :func:`format_table` or
``Report.to_json()``. The model runs through :class:`OnnxForecaster`, the code the live worker
uses, and :func:`mae_from_forecasts` scores live forecasts with the same masking and horizons,
so live and offline figures are computed identically. Which pairs are scored, and how each
baseline forecasts, is in :mod:`stream_app.offline.eval_baselines`; the metrics are in
:mod:`stream_app.offline.eval_metrics`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from ..core.card import UNIVERSAL, ModelCard
from ..core.contexts import local_seconds
from ..core.forecasters import FloatArray, Forecaster, IntArray, WindowBatch
from ..core.onnx_forecaster import OnnxForecaster
from ..core.scoring import IntervalCalibration, Scores
from .datasets import GridDataset
from .eval_baselines import Samples, baseline_forecasts, evaluation_samples, target_series
from .eval_metrics import HIGHER_IS_BETTER, score
from .model_inputs import Neighbours, contexts, neighbour_contexts, padded
from .protocols import Split, split

METHODS = ("model", "persistence", "seasonal_naive", "historical_average", "window_mean")
CHUNK = 4096  # windows per forecast call: large enough to amortise a session.run
_TITLES = {
    "mae": "MAE",
    "rmse": "RMSE",
    "mape": "MAPE (%)",
    "accuracy": "Accuracy",
    "r2": "R2",
    "var": "Explained variance (var)",
}


@dataclass(frozen=True)
class Report:
    """Per method, per metric, one value per reported horizon (NaN where nothing was scored)."""

    dataset: str
    protocol: str
    horizons: tuple[str, ...]
    metrics: dict[str, dict[str, list[float]]]
    pairs: int  # (window end, sensor) pairs scored
    skipped: int  # pairs left out because their window has a missing value
    coverage: dict[str, Any] | None = None  # the model's interval: levels, share per horizon

    def relative_mae(self) -> dict[str, float]:
        """The model's MAE over the reported horizons divided by each baseline's."""
        if "model" not in self.metrics:
            return {}
        mine = _mean(self.metrics["model"]["mae"])
        return {
            method: mine / _mean(by["mae"])
            for method, by in self.metrics.items()
            if method != "model" and _mean(by["mae"]) > 0
        }

    def to_json(self) -> dict[str, Any]:
        """``{"dataset", "protocol", "horizons", "metrics", ...}``; NaN becomes ``None``."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "horizons": list(self.horizons),
            "metrics": {
                method: {name: [_json_float(v) for v in values] for name, values in by.items()}
                for method, by in self.metrics.items()
            },
            "pairs": self.pairs,
        }
        if "model" in self.metrics:
            out["relative_mae"] = {k: _json_float(v) for k, v in self.relative_mae().items()}
        if self.coverage is not None:
            out["coverage"] = self.coverage
        return out


def evaluate(
    model_dir: Path | None,
    dataset: GridDataset,
    protocol: str,
    *,
    provider: str = "cpu",
    threads: int = 1,
    chunk: int = CHUNK,
    neighbours: Neighbours | None = None,
    calendar_known: bool = True,
    interval_rate: float = 0.05,
    zone: tzinfo | None = None,
    progress: bool = False,
) -> Report:
    """Score the model in ``model_dir`` (if any) and the baselines on ``dataset``'s test part.

    ``ValueError`` when the model's card disagrees with the protocol's window, horizon or
    step, or knows none of the dataset's sensors. Every method is scored on the same pairs,
    except that ``seasonal_naive`` leaves out a target whose season-earlier reading is missing.
    A model with a longer context than the protocol's window (the universal model) reads it
    from the series, as a live worker holds it, with ``neighbours`` (each sensor's, from the
    network's graph) when given; its 0.1-0.9 interval's coverage is reported, as the model
    gives it and as a worker serves it (``served``: calibrated online at ``interval_rate``).
    ``zone``: the network's clock, as a worker's ``STCAST_TIMEZONE`` (for data stamped in UTC,
    such as recorded ticks; a file's naive times are its local clock already). ``progress``:
    a bar on stderr while the model forecasts (a large test part takes minutes).
    """
    parts = split(dataset, protocol)
    forecaster = None
    if model_dir is not None:
        forecaster = open_model(model_dir, dataset, parts, provider, threads)
    samples = evaluation_samples(dataset, parts)
    if len(samples) == 0:
        raise ValueError(_nothing_to_score(dataset, parts, samples))
    # The baselines are scored and let go before the model forecasts: a test part of millions
    # of windows never holds their forecasts and the model's quantiles at once.
    scored = {
        m: score(f, samples.targets, parts)
        for m, f in baseline_forecasts(dataset, parts, samples).items()
    }
    coverage = None
    if forecaster is not None:
        inputs = ModelInputs(target_series(dataset, parts), neighbours, calendar_known, zone)
        if forecaster.card.quantiles:
            quantiles = model_quantiles(forecaster, dataset, samples, inputs, chunk, progress)
            quantiles = quantiles[:, :, : parts.horizon]
            median = quantiles[:, forecaster.card.quantiles.index(0.5)]
            scored["model"] = score(median, samples.targets, parts)
            coverage = interval_coverage(quantiles, forecaster.card.quantiles, samples, parts)
            coverage["served"] = served_coverage(
                quantiles, forecaster.card.quantiles, samples, parts, interval_rate
            )
        else:
            forecasts = model_forecasts(forecaster, dataset, samples, chunk, inputs, progress)
            scored["model"] = score(forecasts, samples.targets, parts)
    metrics = {m: scored[m] for m in METHODS if m in scored}
    labels = tuple(parts.horizon_labels(dataset.step_s))
    return Report(dataset.name, protocol, labels, metrics, len(samples), samples.skipped, coverage)


def _nothing_to_score(dataset: GridDataset, parts: Split, samples: Samples) -> str:
    """Why a test part holds no window to score, and what would give it one."""
    test, window, horizon = parts.test, parts.window, parts.horizon
    where = (
        f"{dataset.name}'s test part under the {parts.protocol} protocol (its last "
        f"{len(test)} of {dataset.n_steps} steps)"
    )
    if samples.skipped:
        return (
            f"{where} holds {samples.skipped} windows, each with a missing reading among its "
            f"{window}: nothing to score"
        )
    share = len(test) / dataset.n_steps
    needed = math.ceil((window + horizon) / share)
    return (
        f"{where} is too short for a window of {window} readings and its {horizon} targets: "
        f"give at least {needed} steps"
    )


def open_model(
    model_dir: Path, dataset: GridDataset, parts: Split, provider: str = "cpu", threads: int = 1
) -> OnnxForecaster:
    """The model's forecaster, once its card is known to fit the protocol and the dataset."""
    check_card(ModelCard.load(model_dir), dataset, parts)
    return OnnxForecaster(model_dir, provider=provider, threads=threads, step_s=dataset.step_s)


def check_card(card: ModelCard, dataset: GridDataset, parts: Split) -> None:
    """``ValueError`` saying what to change when ``card`` cannot be scored under ``parts``."""
    if card.kind == UNIVERSAL:  # any step, its own context: only the horizon must reach
        if card.horizon < parts.horizon:
            raise ValueError(
                f"the {parts.protocol} protocol on {dataset.name} scores {parts.horizon} steps "
                f"ahead; {card.model_id} forecasts {card.horizon}"
            )
        return
    if (card.window, card.horizon) != (parts.window, parts.horizon):
        raise ValueError(
            f"the {parts.protocol} protocol on {dataset.name} uses window {parts.window}, "
            f"horizon {parts.horizon}; the model has window {card.window}, horizon "
            f"{card.horizon}: train it with --protocol {parts.protocol}"
        )
    if card.step_s != dataset.step_s:
        raise ValueError(
            f"{dataset.name} has a {dataset.step_s} s step; the model was trained on a "
            f"{card.step_s} s grid: evaluate it on data with its own step, or retrain it"
        )
    if card.sensor_input is not None and not set(card.sensors) & set(dataset.sensors):
        raise ValueError(
            f"the model knows none of {dataset.name}'s sensors (its first is "
            f"{card.sensors[0]!r}): evaluate it on the dataset it was trained on"
        )


def model_forecasts(
    forecaster: Forecaster,
    dataset: GridDataset,
    samples: Samples,
    chunk: int = CHUNK,
    inputs: ModelInputs | None = None,
    progress: bool = False,
) -> FloatArray:
    """(pairs, horizon) forecasts of every sample, ``chunk`` windows per ``forecast`` call
    (with a bar on stderr where ``progress``).

    A universal model reads its long context from the dataset's first channel (or ``inputs``)
    and gives its median.
    """
    card = getattr(forecaster, "card", None)
    if isinstance(forecaster, OnnxForecaster) and card is not None and card.kind == UNIVERSAL:
        given = inputs or ModelInputs(dataset.values[:, :, 0])
        quantiles = model_quantiles(forecaster, dataset, samples, given, chunk, progress)
        median: FloatArray = quantiles[:, card.quantiles.index(0.5), : samples.targets.shape[1]]
        return median
    last_ts = local_seconds(dataset.timestamps()[samples.ends], inputs.zone if inputs else None)
    names = [dataset.sensors[i] for i in samples.sensors.tolist()]
    chunks = [
        forecaster.forecast(
            WindowBatch(
                samples.inputs[i : i + chunk], last_ts[i : i + chunk], tuple(names[i : i + chunk])
            )
        )
        for i in _chunk_starts(len(samples), chunk, progress)
    ]
    return np.concatenate(chunks) if chunks else np.empty((0, forecaster.horizon))


@dataclass(frozen=True)
class ModelInputs:
    """What a long-context model reads beside the samples: the series, the graph, the calendar."""

    series: FloatArray  # (T, N) the forecast channel
    neighbours: Neighbours | None = None
    calendar_known: bool = True
    zone: tzinfo | None = None  # the network's clock (``core.contexts.local_seconds``)


def model_quantiles(
    forecaster: OnnxForecaster,
    dataset: GridDataset,
    samples: Samples,
    inputs: ModelInputs,
    chunk: int = CHUNK,
    progress: bool = False,
) -> FloatArray:
    """(pairs, quantiles, horizon) of a quantile model, its context read from the series
    (with a bar on stderr where ``progress``)."""
    window = forecaster.window
    pad = padded(inputs.series, window)
    last_ts = local_seconds(dataset.timestamps()[samples.ends], inputs.zone)
    out = np.empty((len(samples), len(forecaster.quantiles), forecaster.horizon))
    for i in _chunk_starts(len(samples), chunk, progress):
        ends, sensors = samples.ends[i : i + chunk], samples.sensors[i : i + chunk]
        nb = None
        if inputs.neighbours is not None:
            nb = neighbour_contexts(pad, ends, sensors, window, *inputs.neighbours)
        batch = WindowBatch(
            contexts(pad, ends, sensors, window).astype(np.float64),
            last_ts[i : i + chunk],
            tuple(dataset.sensors[s] for s in sensors.tolist()),
            nb,
            inputs.calendar_known,
        )
        out[i : i + chunk] = forecaster.forecast_quantiles(batch)
    return out


def _chunk_starts(pairs: int, chunk: int, progress: bool) -> Iterable[int]:
    """The first pair of each chunk; where ``progress``, with a bar on stderr that counts the
    windows forecast (a test part of millions takes minutes on one thread)."""
    starts = range(0, pairs, chunk)
    return _counted(starts, pairs, chunk) if progress else starts


def _counted(starts: range, pairs: int, chunk: int) -> Iterator[int]:
    with tqdm(total=pairs, unit=" windows", desc="forecasting", file=sys.stderr) as bar:
        for start in starts:
            yield start
            bar.update(min(chunk, pairs - start))


def interval_coverage(
    quantiles: FloatArray, levels: Sequence[float], samples: Samples, parts: Split
) -> dict[str, Any]:
    """Share of the scored targets inside the outermost quantiles, overall and per step."""
    shares = _shares_inside(quantiles[:, 0], quantiles[:, -1], samples, parts)
    return {"levels": [levels[0], levels[-1]], **shares}


def _scored(samples: Samples, parts: Split) -> npt.NDArray[np.bool_]:
    """Which targets count: known, and not zero where the protocol masks zeros."""
    targets = samples.targets
    return np.isfinite(targets) & ((targets != 0) if parts.masked else True)


def _shares_inside(
    low: FloatArray, high: FloatArray, samples: Samples, parts: Split
) -> dict[str, Any]:
    """Share of the scored targets between ``low`` and ``high``, overall and per step."""
    targets, scored = samples.targets, _scored(samples, parts)
    inside = (targets >= low) & (targets <= high) & scored
    per_step = inside.sum(axis=0) / np.maximum(scored.sum(axis=0), 1)
    return {
        "overall": float(inside.sum() / max(int(scored.sum()), 1)),
        "per_step": [float(v) for v in per_step],
    }


def served_coverage(
    quantiles: FloatArray,
    levels: Sequence[float],
    samples: Samples,
    parts: Split,
    rate: float,
) -> dict[str, Any]:
    """The coverage of the interval a worker serves: calibrated online (``IntervalCalibration``)
    from the test part's first window on, every step's forecasts widened or narrowed by what
    the actuals that arrived before them taught, as a live pipeline does (it scores the
    readings of a step before it forecasts from them)."""
    horizon = quantiles.shape[2]
    median = quantiles[:, levels.index(0.5)] if 0.5 in levels else quantiles.mean(axis=1)
    low, high = quantiles[:, 0].copy(), quantiles[:, -1].copy()
    targets, scored = samples.targets, _scored(samples, parts)
    calibration = IntervalCalibration.for_levels(horizon, levels, rate)
    sensors = len(np.unique(samples.sensors))
    made_at, ends = _by_window_end(samples.ends)
    for now in range(ends.start, ends.stop + horizon):
        # Score what arrives now (the k-th target of every window that ended k steps ago) with
        # the interval it was served with; then forecast from it.
        pairs, steps = [], []
        for ahead in range(horizon):
            ended = made_at(now - 1 - ahead)
            pairs.append(ended[scored[ended, ahead]])
            steps.append(np.full(len(pairs[-1]), ahead))
        p = np.concatenate(pairs)
        if len(p):
            h = np.concatenate(steps)
            inside = ((targets[p, h] >= low[p, h]) & (targets[p, h] <= high[p, h])).astype(float)
            calibration.update(
                Scores(samples.sensors[p], h + 1, np.zeros(len(p)), np.arange(len(p)),
                       inside=inside),
                sensors,
            )  # fmt: skip
        made = made_at(now)
        if len(made):
            low[made], high[made] = calibration.apply(
                median[made], median[made], low[made], high[made]
            )
    return {
        "rate": rate,
        **_shares_inside(low, high, samples, parts),
        "scale": [float(v) for v in calibration.scale],
    }


def _by_window_end(ends: IntArray) -> tuple[Callable[[int], IntArray], range]:
    """The pairs whose window ends at a given step, in pair order (slices of one sort), and
    the steps from the first window end to the last (empty without pairs)."""
    order = np.argsort(ends, kind="stable")
    span = range(int(ends.min()), int(ends.max()) + 1) if len(ends) else range(0)
    bounds = np.searchsorted(ends[order], np.arange(span.start, span.stop + 1))

    def made_at(step: int) -> IntArray:
        i = step - span.start
        if i < 0 or i + 1 >= len(bounds):
            return order[:0]
        found: IntArray = order[bounds[i] : bounds[i + 1]]
        return found

    return made_at, span


def mae_from_forecasts(
    dataset: GridDataset, parts: Split, forecasts: Iterable[tuple[str, int, Sequence[float]]]
) -> list[float]:
    """MAE per reported horizon of ``(sensor, last_ts, values)`` forecasts, as ``evaluate`` has it.

    ``last_ts`` is the epoch seconds of the window's newest value. Forecasts made at a step that
    is not a test-part sample end are ignored, so a replay of the whole series can be passed.
    """
    rows = list(forecasts)
    index = {sensor: i for i, sensor in enumerate(dataset.sensors)}
    unknown = {s for s, _, _ in rows} - index.keys()
    if unknown:
        raise ValueError(f"{dataset.name} has no sensors {sorted(unknown)[:5]}")
    ends = _steps(dataset, np.array([ts for _, ts, _ in rows], dtype=np.int64))
    sensors = np.array([index[s] for s, _, _ in rows], dtype=np.int64)
    pred = np.array([v for _, _, v in rows], dtype=np.float64).reshape(len(rows), -1)
    if pred.shape[1] != parts.horizon:
        raise ValueError(
            f"forecasts hold {pred.shape[1]} values; {parts.protocol} needs {parts.horizon}"
        )
    keep = np.isin(ends, parts.sample_ends(parts.test))
    steps = ends[keep, None] + np.arange(1, parts.horizon + 1)
    targets = target_series(dataset, parts)[steps, sensors[keep, None]]
    return score(pred[keep], targets, parts)["mae"]


def _steps(dataset: GridDataset, times: IntArray) -> IntArray:
    """The grid step of each epoch-seconds time; ``ValueError`` for a time off the grid."""
    offsets = times - int(dataset.start.timestamp())
    if np.any(offsets % dataset.step_s):
        raise ValueError(f"a forecast's last_ts is not on {dataset.name}'s {dataset.step_s} s grid")
    return offsets // dataset.step_s


def format_table(report: Report) -> str:
    """A text table per metric: a row per horizon, a column per method; ``*`` marks the best."""
    head = (
        f"{report.dataset}, {report.protocol} protocol: {report.pairs} test samples "
        f"(window x sensor), {report.skipped} skipped for gaps in the window"
    )
    names = next(iter(report.metrics.values()), {}).keys()
    blocks = [head, *(_block(report, name) for name in names)]
    if report.coverage is not None:
        low, high = report.coverage["levels"]
        line = (
            f"The model's {low}-{high} interval holds {report.coverage['overall']:.1%} of the "
            "scored targets"
        )
        served = report.coverage.get("served")
        if served is not None:
            rate, share = served["rate"], served["overall"]
            line += f"; as served (calibrated online at rate {rate}), {share:.1%}"
        blocks.append(line + ".")
    return "\n\n".join(blocks) + "\n"


def _block(report: Report, name: str) -> str:
    methods = list(report.metrics)
    widths = [max(len(m), 9) + 2 for m in methods]
    lines = [
        _TITLES.get(name, name),
        "horizon" + "".join(m.rjust(w) for m, w in zip(methods, widths, strict=True)),
    ]
    for row, label in enumerate(report.horizons):
        values = [report.metrics[m][name][row] for m in methods]
        best = _best(values, name in HIGHER_IS_BETTER)
        cells = [_cell(v, name, v == best).rjust(w) for v, w in zip(values, widths, strict=True)]
        lines.append((label.ljust(7) + "".join(cells)).rstrip())
    return "\n".join(lines)


def _best(values: list[float], higher: bool) -> float:
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return math.nan
    return max(known) if higher else min(known)


def _cell(value: float, name: str, best: bool) -> str:
    if math.isnan(value):
        return "-  "
    digits = 4 if name in HIGHER_IS_BETTER else 2
    return f"{value:.{digits}f}" + (" *" if best else "  ")


def _mean(values: Sequence[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return sum(known) / len(known) if known else math.nan


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value
