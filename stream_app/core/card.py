"""The model card: what ``card.json`` beside ``model.onnx`` promises about the model.

Loading is strict. Every problem raises :class:`ModelContractError` with a message that names
the key at fault and says what to change, because a worker that serves the wrong model quietly
is worse than one that refuses to start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from .contexts import SCALE_FLOOR

CARD_FILE = "card.json"
MODEL_FILE = "model.onnx"
FEATURES = ("value", "time_of_day", "day_of_week")
BATCH_AXIS = "batch"
WINDOW, UNIVERSAL = "window", "universal"  # the two kinds of model the runtime can feed
ANY_STEP = 0  # a universal model's step_s: it serves any grid (``"any"`` in the JSON)
# A universal model's inputs, in this order (``stream_app.core.contexts`` builds them).
UNIVERSAL_INPUTS = ("context", "step_s", "calendar", "neighbours")
_UNIVERSAL_WIDTHS = {"step_s": 1, "calendar": 3}
# The floor of a universal card that names none: every model before the key was made with it.
LEGACY_SCALE_FLOOR = 0.01

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints, or ``"batch"`` for the dynamic batch axis) and numpy dtype name."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> TensorSpec:
        """Parse one ``{"name", "shape", "dtype"}`` entry; ``where`` names it in errors."""
        obj = mapping(raw, where)
        shape = typed(obj, "shape", list, where)
        if not all(_is_dim(d) for d in shape):
            raise ModelContractError(
                f"{where}.shape={shape!r} holds entries that are neither ints nor "
                f"{BATCH_AXIS!r}: {FIX}"
            )
        return cls(typed(obj, "name", str, where), tuple(shape), typed(obj, "dtype", str, where))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Normalization:
    """Z-score statistics: model units = (reading - mean) / std."""

    mean: float
    std: float
    method: str = "zscore"  # or "context": each window by its own statistics (universal)
    # "context" only: the share of the level in a context's scale (``core.contexts.SCALE_FLOOR``)
    # the model learned with; the runtime computes its neighbours' input with its own, so the
    # two must agree
    scale_floor: float = LEGACY_SCALE_FLOOR

    def to_dict(self) -> dict[str, Any]:
        if self.method == "context":
            return {"method": self.method, "scale_floor": self.scale_floor}
        return {"method": self.method, "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class ModelCard:
    """The parsed, checked contents of ``card.json``."""

    name: str
    version: str
    created_at: str
    onnx_sha256: str
    opset: int
    window: int
    horizon: int
    step_s: int
    features: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    value_input: str
    sensor_input: str | None
    output: str
    normalization: Normalization
    sensors: tuple[str, ...]
    unknown_sensor_index: int
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    kind: str = WINDOW
    quantiles: tuple[float, ...] = ()  # levels of the output's quantile axis (universal)
    min_context: int = 0  # readings before a sensor is forecast (0: the whole window)
    neighbours: dict[str, Any] = field(default_factory=dict)  # the neighbour rule (universal)

    @property
    def model_id(self) -> str:
        """``name@version``, stamped on every forecast."""
        return f"{self.name}@{self.version}"

    @property
    def warmup(self) -> int:
        """Readings a sensor needs before it is forecast."""
        return self.min_context or self.window

    @cached_property
    def _sensor_index(self) -> dict[str, int]:
        return {sensor: i for i, sensor in enumerate(self.sensors)}

    def sensor_indices(self, sensors: Sequence[str]) -> npt.NDArray[np.int64]:
        """Embedding row of each sensor; ``unknown_sensor_index`` for a sensor not in the card."""
        get, unknown = self._sensor_index.get, self.unknown_sensor_index
        return np.fromiter((get(s, unknown) for s in sensors), np.int64, count=len(sensors))

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        """Read and check ``card.json`` (``path`` is the file, or the model directory)."""
        path = path / CARD_FILE if path.is_dir() else path
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelContractError(
                f"no model card at {path}: point STCAST_MODEL_DIR at a directory holding "
                f"{MODEL_FILE} and {CARD_FILE}, or write the card with export.cards.write_card"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelContractError(f"{path} is not valid JSON ({exc}): {FIX}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> ModelCard:
        """Build a card from parsed JSON, checking every key's presence, type and meaning."""
        obj = mapping(raw, "card.json")
        card = cls(**_scalars(obj), **_structures(obj))
        _check(card)
        return card

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the card, with the keys of the card contract."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(
            features=list(self.features),
            inputs=[spec.to_dict() for spec in self.inputs],
            outputs=[spec.to_dict() for spec in self.outputs],
            normalization=self.normalization.to_dict(),
            sensors=list(self.sensors),
            quantiles=list(self.quantiles),
            step_s="any" if self.step_s == ANY_STEP else self.step_s,
        )
        return out

    def save(self, path: Path) -> None:
        """Write the card as JSON (``path`` is the file, or the model directory)."""
        path = path / CARD_FILE if path.is_dir() else path
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


_SCALAR_KEYS: dict[str, type] = {
    "name": str,
    "version": str,
    "created_at": str,
    "onnx_sha256": str,
    "opset": int,
    "window": int,
    "horizon": int,
    "value_input": str,
    "output": str,
    "unknown_sensor_index": int,
}


def _scalars(obj: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: typed(obj, k, kind, "card.json") for k, kind in _SCALAR_KEYS.items()}
    sensor_input = required(obj, "sensor_input", "card.json")
    if sensor_input is not None and not isinstance(sensor_input, str):
        raise type_error("card.json", "sensor_input", "a string or null", sensor_input)
    out["sensor_input"] = sensor_input
    kind = obj.get("kind", WINDOW)
    if kind not in (WINDOW, UNIVERSAL):
        raise type_error("card.json", "kind", f"{WINDOW!r} or {UNIVERSAL!r}", kind)
    out["kind"] = kind
    out["step_s"] = ANY_STEP if kind == UNIVERSAL and obj.get("step_s") == "any" else None
    if out["step_s"] is None:
        out["step_s"] = typed(obj, "step_s", int, "card.json")
    out["min_context"] = typed(obj, "min_context", int, "card.json") if "min_context" in obj else 0
    return out


def _structures(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "features": tuple(_str_list(obj, "features")),
        "inputs": _specs(obj, "inputs"),
        "outputs": _specs(obj, "outputs"),
        "normalization": _normalization(typed(obj, "normalization", dict, "card.json")),
        "sensors": tuple(_str_list(obj, "sensors")),
        "training": typed(obj, "training", dict, "card.json"),
        "metrics": typed(obj, "metrics", dict, "card.json"),
        "libraries": typed(obj, "libraries", dict, "card.json"),
        "quantiles": tuple(_levels(obj)),
        "neighbours": typed(obj, "neighbours", dict, "card.json") if "neighbours" in obj else {},
    }


def _levels(obj: Mapping[str, Any]) -> list[float]:
    items = typed(obj, "quantiles", list, "card.json") if "quantiles" in obj else []
    if not all(isinstance(q, int | float) and 0 < q < 1 for q in items) or items != sorted(items):
        raise type_error("card.json", "quantiles", "ascending levels between 0 and 1", items)
    return [float(q) for q in items]


def _specs(obj: Mapping[str, Any], key: str) -> tuple[TensorSpec, ...]:
    items = typed(obj, key, list, "card.json")
    return tuple(TensorSpec.from_dict(item, f"{key}[{i}]") for i, item in enumerate(items))


def _normalization(obj: dict[str, Any]) -> Normalization:
    where = "normalization"
    method = typed(obj, "method", str, where)
    if method == "context":
        floor = obj.get("scale_floor", LEGACY_SCALE_FLOOR)
        if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0 <= floor < 1:
            raise type_error(where, "scale_floor", "a number from 0 up to 1", floor)
        return Normalization(0.0, 1.0, "context", float(floor))
    if method != "zscore":
        raise ModelContractError(
            f"normalization.method={method!r} is not supported: the runtime de-normalises "
            "'zscore' and 'context' only; re-export the model"
        )
    mean, std = typed(obj, "mean", float, where), typed(obj, "std", float, where)
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise ModelContractError(
            f"normalization has mean={mean}, std={std}: both must be finite and std > 0; {FIX}"
        )
    return Normalization(float(mean), float(std))


def _str_list(obj: Mapping[str, Any], key: str) -> list[str]:
    items = typed(obj, key, list, "card.json")
    if not all(isinstance(item, str) for item in items):
        raise type_error("card.json", key, "a list of strings", items)
    return items


def _check(card: ModelCard) -> None:
    """Checks of meaning, once every key has the right type."""
    _check_positive(card)
    _check_sensors(card)
    _check_hash_and_time(card)
    if card.kind == UNIVERSAL:
        check_universal(card)
        return
    _check_features(card.features)
    _check_io(card)


def _check_positive(card: ModelCard) -> None:
    for key in ("opset", "window", "horizon", "step_s"):
        if key == "step_s" and card.kind == UNIVERSAL and card.step_s == ANY_STEP:
            continue
        if getattr(card, key) < 1:
            raise ModelContractError(f"card.json key {key!r} must be at least 1: {FIX}")


def _check_features(features: tuple[str, ...]) -> None:
    unknown = [f for f in features if f not in FEATURES]
    if unknown or not features or len(set(features)) != len(features):
        raise ModelContractError(
            f"card.json key 'features'={list(features)!r} must list distinct features from "
            f"{list(FEATURES)} (unknown: {unknown}); the runtime can build no others: "
            "retrain with supported features or extend stream_app.core.onnx_forecaster"
        )


def _check_sensors(card: ModelCard) -> None:
    if len(set(card.sensors)) != len(card.sensors):
        raise ModelContractError(f"card.json key 'sensors' lists a sensor twice: {FIX}")
    if card.unknown_sensor_index < 0:
        raise ModelContractError(
            f"card.json key 'unknown_sensor_index'={card.unknown_sensor_index} must be an "
            f"embedding row (>= 0), usually len(sensors)={len(card.sensors)}: {FIX}"
        )


def _check_hash_and_time(card: ModelCard) -> None:
    digest = card.onnx_sha256
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ModelContractError(
            f"card.json key 'onnx_sha256'={digest!r} is not 64 lowercase hex digits: {FIX}"
        )
    try:
        stamp = datetime.fromisoformat(card.created_at)
    except ValueError:
        stamp = None
    if stamp is None or stamp.tzinfo is None:
        raise ModelContractError(
            f"card.json key 'created_at'={card.created_at!r} is not an RFC 3339 time with an "
            f"offset (e.g. 2024-05-01T12:00:00Z): {FIX}"
        )


def _check_io(card: ModelCard) -> None:
    nf = len(card.features)
    _expect_spec(card.inputs, "value_input", card.value_input, (BATCH_AXIS, card.window, nf))
    _expect_spec(card.outputs, "output", card.output, (BATCH_AXIS, card.horizon), "float32")
    if card.sensor_input is not None:
        _expect_spec(card.inputs, "sensor_input", card.sensor_input, (BATCH_AXIS,), "int64")
    named = {card.value_input, card.sensor_input}
    extra = [spec.name for spec in card.inputs if spec.name not in named]
    if extra:
        raise ModelContractError(
            f"card.json key 'inputs' lists {extra} that the runtime cannot feed: name them in "
            "'value_input' or 'sensor_input', or re-export the model without them"
        )


def check_universal(card: ModelCard) -> None:
    """A universal model's contract: its four inputs, a quantile output with the median."""
    if card.features != UNIVERSAL_INPUTS or card.value_input != UNIVERSAL_INPUTS[0]:
        raise ModelContractError(
            f"card.json of a universal model must list features {list(UNIVERSAL_INPUTS)} and "
            f"value_input {UNIVERSAL_INPUTS[0]!r}: {FIX}"
        )
    if 0.5 not in card.quantiles:
        raise ModelContractError(f"card.json key 'quantiles' must hold the median 0.5: {FIX}")
    if card.normalization.scale_floor != SCALE_FLOOR:
        raise ModelContractError(
            f"card.json: the model learned with a context scale floor of "
            f"{card.normalization.scale_floor:g} (normalization.scale_floor), this stcast "
            f"computes contexts with {SCALE_FLOOR:g}, so its inputs would not be the ones it "
            "learned: fine-tune it again from the bundled model (stcast train --init universal), "
            "or pre-train with this stcast (stcast pretrain)"
        )
    if not 1 <= card.min_context <= card.window:
        raise ModelContractError(
            f"card.json key 'min_context'={card.min_context} must be between 1 and the "
            f"window {card.window}: {FIX}"
        )
    for name in UNIVERSAL_INPUTS:
        _expect_spec(
            card.inputs, name, name, (BATCH_AXIS, _UNIVERSAL_WIDTHS.get(name, card.window))
        )
    known = set(UNIVERSAL_INPUTS)
    if card.sensor_input is not None:  # fine-tuned for a network: an embedding row per sensor
        _expect_spec(card.inputs, "sensor_input", card.sensor_input, (BATCH_AXIS,), "int64")
        known.add(card.sensor_input)
    extra = [spec.name for spec in card.inputs if spec.name not in known]
    if extra:
        raise ModelContractError(f"card.json key 'inputs' lists {extra} that no runtime feeds")
    output = (BATCH_AXIS, len(card.quantiles), card.horizon)
    _expect_spec(card.outputs, "output", card.output, output)


def _expect_spec(
    specs: tuple[TensorSpec, ...],
    key: str,
    name: str,
    shape: tuple[Dim, ...],
    dtype: str = "float32",
) -> None:
    found = [spec for spec in specs if spec.name == name]
    where = "outputs" if key == "output" else "inputs"
    implied = "the model's kind, window, horizon and features"
    if not found:
        raise ModelContractError(
            f"card.json key {key!r}={name!r} is not among the card's {where} "
            f"{[s.name for s in specs]}: {FIX}"
        )
    spec = found[0]
    if spec.shape != shape or spec.dtype != dtype:
        raise ModelContractError(
            f"card.json key {key!r}: {where} entry {name!r} is {spec.dtype}{list(spec.shape)} "
            f"but {implied} imply {dtype}{list(shape)}: {FIX}"
        )


def _is_dim(dim: Any) -> bool:
    return dim == BATCH_AXIS or (isinstance(dim, int) and not isinstance(dim, bool) and dim > 0)


# --- reading the card's JSON strictly: every key present, of its type, or a clear error ---

_T = TypeVar("_T")
FIX = "fix the card or re-export it with export.cards.write_card"


class ModelContractError(ValueError):
    """A model card that is unreadable, or that disagrees with its model or the configuration."""


def mapping(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ModelContractError(f"{where} must be a JSON object, got {type(raw).__name__}: {FIX}")
    return raw


def required(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise ModelContractError(f"{where} lacks the key {key!r}: {FIX}")
    return obj[key]


def typed(obj: Mapping[str, Any], key: str, kind: type[_T], where: str) -> _T:
    value = required(obj, key, where)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise type_error(where, key, f"a JSON {_JSON_NAMES.get(kind, kind.__name__)}", value)
    return value  # type: ignore[no-any-return]


_JSON_NAMES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    list: "array",
    dict: "object",
}


def type_error(where: str, key: str, expected: str, value: Any) -> ModelContractError:
    return ModelContractError(
        f"{where} key {key!r} must be {expected}, got {type(value).__name__} {value!r:.60}: {FIX}"
    )
