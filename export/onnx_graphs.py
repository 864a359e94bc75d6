"""ONNX graphs built directly with ``onnx.helper``.

``build_seed_lstm`` writes a model with the seed architecture's exact shape and compute cost
(sensor embedding, stacked LSTM, linear head) but seeded random weights: the tiny real model
that tests and the inference benchmark need without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.cards import write_card
from stream_app.core.card import BATCH_AXIS, MODEL_FILE

OPSET = 17
IR_VERSION = 8  # the oldest IR that opset 17 allows, so older onnxruntime builds load it


def build_seed_lstm(
    out_dir: Path,
    *,
    sensors: Sequence[str],
    window: int = 12,
    horizon: int = 12,
    step_s: int = 300,
    features: Sequence[str] = ("value", "time_of_day", "day_of_week"),
    hidden: int = 50,
    layers: int = 2,
    embedding_dim: int = 8,
    mean: float = 0.0,
    std: float = 1.0,
    seed: int = 0,
    name: str = "seed-lstm",
    version: str = "1",
) -> Path:
    """Write ``model.onnx`` and ``card.json`` for a random-weight seed LSTM; return ``out_dir``.

    Inputs ``x`` (batch, window, len(features)) float32 and ``sensor`` (batch,) int64; output
    ``y`` (batch, horizon) float32. The embedding table has one extra row for unknown sensors.
    """
    dims = _Dims(len(sensors), window, len(features), hidden, layers, embedding_dim, horizon)
    model = helper.make_model(
        _seed_graph(np.random.default_rng(seed), dims),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="stcast.export",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / MODEL_FILE))
    write_card(
        out_dir / MODEL_FILE,
        name=name,
        version=version,
        window=window,
        horizon=horizon,
        step_s=step_s,
        features=features,
        sensors=sensors,
        mean=mean,
        std=std,
        training={"kind": "random weights", "seed": seed, "hidden": hidden, "layers": layers},
    )
    return out_dir


@dataclass(frozen=True)
class _Dims:
    sensors: int
    window: int
    features: int
    hidden: int
    layers: int
    embedding_dim: int
    horizon: int


def _seed_graph(rng: np.random.Generator, dims: _Dims) -> onnx.GraphProto:
    """Embedding concatenated to every step, the LSTM stack, then the linear head."""
    inits = [
        _init("embedding", rng.normal(0.0, 1.0, (dims.sensors + 1, dims.embedding_dim))),
        _init("expand_shape", np.array([1, dims.window, 1], dtype=np.int64)),
        _init("axis1", np.array([1], dtype=np.int64)),
        _init("axis0", np.array([0], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "sensor"], ["emb"], axis=0),
        helper.make_node("Unsqueeze", ["emb", "axis1"], ["emb_step"]),
        helper.make_node("Expand", ["emb_step", "expand_shape"], ["emb_seq"]),
        helper.make_node("Concat", ["x", "emb_seq"], ["xe"], axis=2),
        # onnxruntime's CPU LSTM wants (seq, batch, input): layout=1 is not implemented there.
        helper.make_node("Transpose", ["xe"], ["seq0"], perm=[1, 0, 2]),
    ]
    size = dims.features + dims.embedding_dim
    for layer in range(1, dims.layers + 1):
        nodes += _lstm_layer(rng, layer, size, dims.hidden, inits, last=layer == dims.layers)
        size = dims.hidden
    nodes += _head(rng, "h", dims.hidden, dims.horizon, inits)
    return helper.make_graph(nodes, "seed_lstm", _inputs(dims), [_output(dims)], inits)


def _inputs(dims: _Dims) -> list[onnx.ValueInfoProto]:
    x_shape: list[str | int] = [BATCH_AXIS, dims.window, dims.features]
    return [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
        helper.make_tensor_value_info("sensor", TensorProto.INT64, [BATCH_AXIS]),
    ]


def _output(dims: _Dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH_AXIS, dims.horizon])


def _lstm_layer(
    rng: np.random.Generator,
    layer: int,
    input_size: int,
    hidden: int,
    inits: list[TensorProto],
    *,
    last: bool,
) -> list[onnx.NodeProto]:
    """Read ``seq{layer-1}``; write ``seq{layer}``, or the final hidden state ``h`` if last."""
    bound = 1.0 / np.sqrt(hidden)  # torch.nn.LSTM's initialisation range
    w, r, b = (f"lstm{layer}_{k}" for k in "WRB")
    inits += [
        _init(w, rng.uniform(-bound, bound, (1, 4 * hidden, input_size))),
        _init(r, rng.uniform(-bound, bound, (1, 4 * hidden, hidden))),
        _init(b, rng.uniform(-bound, bound, (1, 8 * hidden))),
    ]
    out = f"lstm{layer}_h" if last else f"lstm{layer}_y"
    outputs = ["", out] if last else [out]
    lstm = helper.make_node(
        "LSTM", [f"seq{layer - 1}", w, r, b], outputs, hidden_size=hidden, direction="forward"
    )
    squeeze = helper.make_node(
        "Squeeze", [out, "axis0" if last else "axis1"], ["h" if last else f"seq{layer}"]
    )
    return [lstm, squeeze]


def _head(
    rng: np.random.Generator,
    state: str,
    hidden: int,
    horizon: int,
    inits: list[TensorProto],
) -> list[onnx.NodeProto]:
    """Linear map from the final hidden state to ``horizon`` outputs named ``y``."""
    bound = 1.0 / np.sqrt(hidden)
    inits += [
        _init("head_W", rng.uniform(-bound, bound, (hidden, horizon))),
        _init("head_b", rng.uniform(-bound, bound, (horizon,))),
    ]
    return [
        helper.make_node("MatMul", [state, "head_W"], ["head_mm"]),
        helper.make_node("Add", ["head_mm", "head_b"], ["y"]),
    ]


def _init(name: str, values: npt.NDArray[np.generic]) -> TensorProto:
    if values.dtype.kind == "f":
        values = values.astype(np.float32)
    return numpy_helper.from_array(values, name)
