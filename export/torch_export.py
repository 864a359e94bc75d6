"""Export a trained torch forecaster to ``model.onnx`` + ``card.json``, checked for parity.

The module must take ``x`` (batch, window, features) float32 and ``sensor`` (batch,) int64 and
return ``y`` (batch, horizon) in normalised units. Before a card is written, the ONNX file is
run in onnxruntime on a fixed, seeded batch (at batch sizes 1 and 300, which also proves the
dynamic batch axis) and must agree with torch within ``tolerance``; otherwise
:class:`ParityError` is raised and neither file is left behind.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from torch import nn

from export.cards import write_card
from stream_app.core.card import BATCH_AXIS, CARD_FILE, MODEL_FILE, ModelCard

OPSET = 17
TOLERANCE = 1e-4  # normalised units
PARITY_SIZES = (1, 300)


class ParityError(RuntimeError):
    """onnxruntime's outputs differ from torch's: the export is not the trained model."""


@dataclass(frozen=True)
class ExportSpec:
    """What the card says beside the graph: grid, features, sensors, normalisation, history."""

    name: str
    version: str
    window: int
    horizon: int
    step_s: int
    features: tuple[str, ...]
    sensors: tuple[str, ...]
    mean: float
    std: float
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)


def export_model(
    module: nn.Module,
    out_dir: Path,
    spec: ExportSpec,
    *,
    opset: int = OPSET,
    tolerance: float = TOLERANCE,
    seed: int = 0,
) -> ModelCard:
    """Write ``out_dir/model.onnx`` and its card after a torch-vs-onnxruntime parity check."""
    module.eval()
    write_checked(
        out_dir,
        lambda path: write_onnx(module, path, spec, opset),
        lambda path: check_parity(module, path, spec, tolerance=tolerance, seed=seed),
    )
    return write_card(
        out_dir / MODEL_FILE,
        name=spec.name,
        version=spec.version,
        window=spec.window,
        horizon=spec.horizon,
        step_s=spec.step_s,
        features=spec.features,
        sensors=spec.sensors,
        mean=spec.mean,
        std=spec.std,
        training=spec.training,
        metrics=spec.metrics,
        libraries={"torch": torch.__version__},
    )


def write_checked(
    out_dir: Path, write: Callable[[Path], None], check: Callable[[Path], object]
) -> None:
    """``out_dir/model.onnx`` from ``write``, kept only if ``check`` passes on it (it raises
    ``ParityError`` otherwise); no card is left from an older model either way."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # An older pair in out_dir would otherwise outlive a failed export of a newer model.
    for stale in (out_dir / CARD_FILE, out_dir / MODEL_FILE):
        stale.unlink(missing_ok=True)
    partial = out_dir / f"{MODEL_FILE}.partial"
    try:
        write(partial)
        check(partial)
        partial.replace(out_dir / MODEL_FILE)
    finally:
        partial.unlink(missing_ok=True)


def write_onnx(module: nn.Module, path: Path, spec: ExportSpec, opset: int = OPSET) -> None:
    """The TorchScript-based exporter: reliable for LSTMs and needs no onnxscript."""
    x, sensor = (torch.from_numpy(a) for a in parity_batch(spec, 2, seed=0))
    axes = {"x": {0: BATCH_AXIS}, "sensor": {0: BATCH_AXIS}, "y": {0: BATCH_AXIS}}
    with warnings.catch_warnings():
        # Deprecation of this exporter; a caution about LSTM batch sizes and tracer notes on
        # nn.LSTM's own shape checks, both answered by the parity check at batch 1 and 300.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        torch.onnx.export(
            module,
            (x, sensor),
            str(path),
            dynamo=False,
            input_names=["x", "sensor"],
            output_names=["y"],
            opset_version=opset,
            dynamic_axes=axes,
        )


def parity_batch(
    spec: ExportSpec, size: int, seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """A seeded batch shaped like the runtime's: plausible values for every feature column.

    The sensors include the unknown-sensor row ``len(spec.sensors)``.
    """
    rng = np.random.default_rng(seed)
    per_day = max(1, 86_400 // spec.step_s)
    x = np.empty((size, spec.window, len(spec.features)), dtype=np.float32)
    for col, name in enumerate(spec.features):
        if name == "time_of_day":
            x[:, :, col] = rng.integers(0, per_day, (size, spec.window)) / per_day
        elif name == "day_of_week":
            x[:, :, col] = rng.integers(0, 7, (size, spec.window))
        else:
            x[:, :, col] = rng.normal(0.0, 1.0, (size, spec.window))
    sensor = rng.integers(0, len(spec.sensors) + 1, size, dtype=np.int64)
    return x, sensor


def parity_session(onnx_path: Path) -> ort.InferenceSession:
    """A quiet CPU session on a freshly written model, for the parity checks."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def check_parity(
    module: nn.Module,
    onnx_path: Path,
    spec: ExportSpec,
    *,
    tolerance: float = TOLERANCE,
    seed: int = 0,
    sizes: Sequence[int] = PARITY_SIZES,
) -> float:
    """The largest |torch - onnxruntime| on seeded batches; :class:`ParityError` if too large."""
    session = parity_session(onnx_path)
    worst = 0.0
    for size in sizes:
        x, sensor = parity_batch(spec, size, seed)
        (got,) = session.run(["y"], {"x": x, "sensor": sensor})
        with torch.no_grad():
            want = module(torch.from_numpy(x), torch.from_numpy(sensor)).numpy()
        if got.shape != want.shape:
            raise ParityError(f"onnxruntime gave shape {got.shape}, torch {want.shape}")
        diff = float(np.max(np.abs(got - want)))
        if not np.isfinite(diff) or diff > tolerance:
            raise ParityError(
                f"onnxruntime and torch differ by {diff:.3g} (tolerance {tolerance:g}) at "
                f"batch {size}: the exported graph is not the trained model; not exported"
            )
        worst = max(worst, diff)
    return worst
