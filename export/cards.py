"""Write the model card that the runtime checks before it serves ``model.onnx``."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from stream_app.core.card import (
    BATCH_AXIS,
    CARD_FILE,
    UNIVERSAL,
    UNIVERSAL_INPUTS,
    Dim,
    ModelCard,
    Normalization,
    TensorSpec,
)
from stream_app.core.contexts import SCALE_FLOOR

_DTYPES: dict[int, str] = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}


def write_card(
    model_path: Path,
    *,
    name: str,
    version: str,
    window: int,
    horizon: int,
    step_s: int,
    features: Sequence[str],
    sensors: Sequence[str],
    mean: float,
    std: float,
    value_input: str = "x",
    sensor_input: str | None = "sensor",
    output: str = "y",
    unknown_sensor_index: int | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    libraries: Mapping[str, str] | None = None,
) -> ModelCard:
    """Describe ``model_path`` in a ``card.json`` beside it and return the card.

    Inputs, outputs and opset are read from the ONNX file itself so the card cannot disagree
    with it; ``unknown_sensor_index`` defaults to ``len(sensors)`` (the extra embedding row).
    """
    card = ModelCard.from_dict(
        {
            **_describe(model_path),
            "name": name,
            "version": version,
            "window": window,
            "horizon": horizon,
            "step_s": step_s,
            "features": list(features),
            "value_input": value_input,
            "sensor_input": sensor_input,
            "output": output,
            "normalization": Normalization(mean, std).to_dict(),
            "sensors": list(sensors),
            "unknown_sensor_index": len(sensors)
            if unknown_sensor_index is None
            else unknown_sensor_index,
            "training": dict(training or {}),
            "metrics": dict(metrics or {}),
            "libraries": {**library_versions(), **(libraries or {})},
        }
    )
    card.save(model_path.parent / CARD_FILE)
    return card


def write_universal_card(
    model_path: Path,
    *,
    name: str,
    version: str,
    context: int,
    horizon: int,
    quantiles: Sequence[float],
    min_context: int,
    neighbours: Mapping[str, Any],
    sensors: Sequence[str] = (),
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    libraries: Mapping[str, str] | None = None,
) -> ModelCard:
    """The card of a universal model: any step, self-normalised, quantiles; ``sensors`` (the
    rows of its sensor embedding) when it was fine-tuned for a network."""
    card = ModelCard.from_dict(
        {
            **_describe(model_path),
            "kind": UNIVERSAL,
            "name": name,
            "version": version,
            "window": context,
            "horizon": horizon,
            "step_s": "any",
            "features": list(UNIVERSAL_INPUTS),
            "value_input": UNIVERSAL_INPUTS[0],
            "sensor_input": "sensor" if sensors else None,
            "output": "quantiles",
            "normalization": {"method": "context", "scale_floor": SCALE_FLOOR},
            "sensors": list(sensors),
            "unknown_sensor_index": len(sensors),
            "quantiles": list(quantiles),
            "min_context": min_context,
            "neighbours": dict(neighbours),
            "training": dict(training or {}),
            "metrics": dict(metrics or {}),
            "libraries": {**library_versions(), **(libraries or {})},
        }
    )
    card.save(model_path.parent / CARD_FILE)
    return card


def _describe(model_path: Path) -> dict[str, Any]:
    """The card keys that come from the model file itself."""
    model = onnx.load(str(model_path))
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "onnx_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "opset": _opset(model),
        "inputs": [_spec(v).to_dict() for v in _graph_inputs(model)],
        "outputs": [_spec(v).to_dict() for v in model.graph.output],
    }


def library_versions() -> dict[str, str]:
    """Versions of the libraries that produced and will run the model."""
    return {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__}


def _opset(model: onnx.ModelProto) -> int:
    return max(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    # Older exporters list initializers among the inputs; those are not fed at run time.
    initializers = {init.name for init in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dtype = _DTYPES.get(tensor.elem_type, onnx.TensorProto.DataType.Name(tensor.elem_type))
    return TensorSpec(value.name, tuple(_dim(d) for d in tensor.shape.dim), dtype)


def _dim(dim: Any) -> Dim:
    return int(dim.dim_value) if dim.HasField("dim_value") else BATCH_AXIS
