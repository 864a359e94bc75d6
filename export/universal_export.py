"""Export the universal forecaster: ``model.onnx`` and a universal card, checked for parity.

The graph takes the runtime's four inputs (``stream_app.core.card.UNIVERSAL_INPUTS``) and gives
the quantiles in the readings' units. Before the card is written, onnxruntime and torch must
agree within ``tolerance`` (relative to each window's scale) on a seeded batch of contexts at
several grid steps, with gaps, short contexts and missing neighbours; otherwise
:class:`~export.torch_export.ParityError` is raised and no model is left behind.

When only the graph's code changes (how it computes, not what), a model directory's graph is
written again from its checkpoint, its card kept but for the digest::

    python -m export.universal_export stream_app/data/universal
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from export.cards import write_universal_card
from export.torch_export import OPSET, ParityError, parity_session, write_checked
from models.checkpoint import CHECKPOINT_FILE
from models.universal import OUTPUT, UniversalForecaster, load_universal
from stream_app.core.card import BATCH_AXIS, CARD_FILE, MODEL_FILE, UNIVERSAL_INPUTS, ModelCard
from stream_app.core.contexts import calendar, context_stats

TOLERANCE = 1e-3  # in units of each window's own scale
SENSOR = "sensor"  # the input of a model fine-tuned for a network: each window's sensor row
PARITY_SIZES = (1, 300)
PARITY_STEPS = (60, 300, 900, 3_600, 86_400)


def export_universal(
    module: UniversalForecaster,
    out_dir: Path,
    *,
    name: str = "universal",
    version: str = "1",
    min_context: int = 12,
    neighbours: Mapping[str, Any] | None = None,
    sensors: Sequence[str] = (),
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    tolerance: float = TOLERANCE,
) -> ModelCard:
    """Write ``out_dir/model.onnx`` and its universal card after the parity check."""
    module.eval()
    write_checked(
        out_dir,
        lambda path: _write_onnx(module, path),
        lambda path: check_universal_parity(module, path, tolerance=tolerance),
    )
    config = module.config
    if config.sensors != len(sensors):
        raise ValueError(
            f"the model has {config.sensors} sensor rows, {len(sensors)} sensors given"
        )
    return write_universal_card(
        out_dir / MODEL_FILE,
        name=name,
        version=version,
        context=config.context,
        horizon=config.horizon,
        quantiles=config.quantiles,
        min_context=min_context,
        neighbours=neighbours or {},
        sensors=sensors,
        training={"architecture": config.to_dict(), **(training or {})},
        metrics=metrics,
        libraries={"torch": torch.__version__},
    )


def input_names(module: UniversalForecaster) -> tuple[str, ...]:
    """The graph's inputs: the four of every universal model, and a network's ``sensor``."""
    return (*UNIVERSAL_INPUTS, SENSOR) if module.config.sensors else UNIVERSAL_INPUTS


def _write_onnx(module: UniversalForecaster, path: Path) -> None:
    feeds = parity_batch(module.config.context, 2, seed=0, sensors=module.config.sensors)
    names = input_names(module)
    args = tuple(torch.from_numpy(feeds[name]) for name in names)
    axes = {name: {0: BATCH_AXIS} for name in (*names, OUTPUT)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=list(names),
            output_names=[OUTPUT],
            opset_version=OPSET,
            dynamic_axes=axes,
        )


def parity_batch(
    context: int, size: int, seed: int, sensors: int = 0
) -> dict[str, npt.NDArray[Any]]:
    """Seeded inputs like the runtime's: levels and scales of many kinds, several grid steps,
    gaps, contexts still warming up, rows without neighbours, and (for a network's model) its
    sensors' rows, the unknown sensor's among them."""
    rng = np.random.default_rng(seed)
    level = rng.choice([0.5, 30.0, 400.0, 2e4], size)[:, None]
    wave = np.sin(
        np.arange(context)[None, :] * 2 * np.pi / rng.choice([24, 96, 288], size)[:, None]
    )
    values = level * (1 + 0.3 * wave + 0.1 * rng.standard_normal((size, context)))
    values[rng.random((size, context)) < 0.05] = np.nan
    short = rng.integers(12, context + 1, size)
    values[np.arange(context)[None, :] < (context - short)[:, None]] = np.nan
    values[:, -1] = level[:, 0]
    neighbours = rng.standard_normal((size, context))
    neighbours[rng.random(size) < 0.3] = np.nan
    last_ts = rng.integers(1_400_000_000, 1_800_000_000, size)
    feeds: dict[str, npt.NDArray[Any]] = {
        "context": values.astype(np.float32),
        "step_s": rng.choice(PARITY_STEPS, (size, 1)).astype(np.float32),
        "calendar": calendar(last_ts, rng.random(size) < 0.8),
        "neighbours": neighbours.astype(np.float32),
    }
    if sensors:
        feeds[SENSOR] = rng.integers(0, sensors + 1, size, dtype=np.int64)
    return feeds


def check_universal_parity(
    module: UniversalForecaster, onnx_path: Path, *, tolerance: float = TOLERANCE, seed: int = 0
) -> float:
    """The largest |torch - onnxruntime| in units of each window's scale; ParityError if large."""
    session = parity_session(onnx_path)
    worst = 0.0
    for size in PARITY_SIZES:
        feeds = parity_batch(module.config.context, size, seed, module.config.sensors)
        (got,) = session.run([OUTPUT], dict(feeds))
        with torch.no_grad():
            want = module(*(torch.from_numpy(feeds[n]) for n in input_names(module))).numpy()
        if got.shape != want.shape:
            raise ParityError(f"onnxruntime gave shape {got.shape}, torch {want.shape}")
        _, scale = context_stats(feeds["context"])
        diff = float(np.max(np.abs(got - want) / scale[:, None, None]))
        if not np.isfinite(diff) or diff > tolerance:
            raise ParityError(
                f"onnxruntime and torch differ by {diff:.3g} scales (tolerance {tolerance:g}) at "
                f"batch {size}: the exported graph is not the trained model; not exported"
            )
        worst = max(worst, diff)
    return worst


def export_again(model_dir: Path, *, tolerance: float = TOLERANCE) -> str:
    """Write ``model_dir/model.onnx`` again from ``model_dir/checkpoint.pt`` with this code's
    graph, after the parity check, and point the card at it (the rest of the card is kept:
    the weights are the same). Returns the new graph's sha256. Nothing in ``model_dir``
    changes if the check fails."""
    card = ModelCard.load(model_dir)
    module, _ = load_universal(model_dir / CHECKPOINT_FILE)
    with tempfile.TemporaryDirectory(dir=model_dir) as scratch:
        out = Path(scratch)
        write_checked(
            out,
            lambda path: _write_onnx(module, path),
            lambda path: check_universal_parity(module, path, tolerance=tolerance),
        )
        digest = hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest()
        replace(card, onnx_sha256=digest).save(out / CARD_FILE)
        ModelCard.load(out)  # the card as written still reads
        (out / MODEL_FILE).replace(model_dir / MODEL_FILE)
        (out / CARD_FILE).replace(model_dir / CARD_FILE)
    return digest


def main() -> None:
    parser = argparse.ArgumentParser(description="Export a universal model's graph again.")
    parser.add_argument("model_dir", type=Path, help="holds checkpoint.pt, model.onnx, card.json")
    args = parser.parse_args()
    digest = export_again(args.model_dir)
    print(f"{args.model_dir / MODEL_FILE}: sha256 {digest}")


if __name__ == "__main__":
    main()
